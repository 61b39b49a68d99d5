"""`tunnel bench`: our tunnel beside wireguard-go, between two namespaces, in one run.

For each kind: single-stream TCP client->server and server->client, 4 streams,
RTT idle and under load (a ping running during the single-stream test), and
CPU-seconds per GB of the tunnel processes (both ends; iperf3 and ping not
counted). Ratios to wireguard-go are printed at the end. Measurements hold
an exclusive flock on /tmp/bench.lock, as every benchmark here does.

Kinds: `tunnel` (tunnel up on both ends), `tunnel-nooffload`, `tunnel-wg`
(the drop-in: `tunnel-wg IFACE` configured from outside with `wg setconf`
and `ip`, as wg-quick does) and `wireguard-go` (the same way). With
`runs` > 1 the kinds take turns, run after run, and the table shows each
figure's median (with its range): machines drift, and interleaving spreads
the drift over every kind alike.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from tunnel.config import load_config

from .lab import CLIENT_INNER, SERVER_INNER, Lab, LabError

KINDS = ("tunnel", "tunnel-nooffload", "tunnel-wg", "wireguard-go")
_METRICS = ("tcp", "tcp_r", "tcp_p4", "rtt_ms", "rtt_load_ms", "cpu_s_per_gb")
_CLK = os.sysconf("SC_CLK_TCK")


def run_bench(seconds: int = 10, kinds: list[str] | None = None, as_json: bool = False, echo=print,
              runs: int = 1) -> str | None:
    if os.geteuid() != 0:
        return "the benchmark creates network namespaces: run it as root (sudo)"
    if shutil.which("iperf3") is None:
        return "iperf3 is not installed (apt-get install iperf3)"
    kinds = kinds or ["tunnel", "wireguard-go"]
    for k in kinds:
        if k not in KINDS:
            return f"unknown kind {k!r}; choose from {', '.join(KINDS)}"
    if "wireguard-go" in kinds and shutil.which("wireguard-go") is None:
        echo("wireguard-go is not installed: measuring our tunnel only")
        kinds = [k for k in kinds if k != "wireguard-go"]
    if runs < 1:
        return "runs must be at least 1"
    every: dict[str, list[dict]] = {k: [] for k in kinds}
    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for n in range(runs):
            for kind in kinds:
                echo(f"== {kind}" + (f" (run {n + 1} of {runs})" if runs > 1 else ""))
                try:
                    every[kind].append(_measure(kind, seconds, echo))
                except (LabError, RuntimeError) as exc:
                    return f"{kind}: {exc}"
    results = {kind: _median(rs) for kind, rs in every.items()}
    echo("")
    echo(_table(results, every if runs > 1 else None))
    if "wireguard-go" in results:
        ref = results["wireguard-go"]
        for kind, r in results.items():
            if kind == "wireguard-go":
                continue
            echo(f"{kind} / wireguard-go: " + ", ".join(
                f"{k} {r[k] / ref[k]:.2f}x" for k in ("tcp", "tcp_r", "tcp_p4", "rtt_load_ms", "cpu_s_per_gb")
                if ref.get(k)))
    if "tunnel-wg" in results and "tunnel" in results:
        r, ref = results["tunnel-wg"], results["tunnel"]
        echo("tunnel-wg / tunnel: " + ", ".join(
            f"{k} {r[k] / ref[k]:.2f}x" for k in ("tcp", "tcp_r", "tcp_p4", "rtt_load_ms", "cpu_s_per_gb")
            if ref.get(k) and r.get(k) is not None))
    if as_json:
        echo(json.dumps({"median": results, "runs": every}, indent=2))
    return None


def _median(runs: list[dict]) -> dict:
    out = {}
    for k in _METRICS:
        values = [r[k] for r in runs if r.get(k) is not None]
        out[k] = statistics.median(values) if values else None
    return out


def _measure(kind: str, seconds: int, echo) -> dict:
    with Lab("tbench") as lab:
        spath, cpath = lab.write_configs()
        if kind == "tunnel-wg":
            # The drop-in, configured from outside as wg-quick does (unique names: shared socket directory).
            for ns, path, side in ((lab.server, spath, "s"), (lab.client, cpath, "c")):
                _from_outside(lab, ns, path, f"tw{os.getpid() % 100000}{side}",
                              [sys.executable, "-m", "tunnel.dropin_cli", "-f"])
        elif kind.startswith("tunnel"):
            extra = ["--no-offload"] if kind == "tunnel-nooffload" else []
            lab.tunnel_up(lab.server, spath, extra)
            lab.wait_link(lab.server, lab.ifname_s)
            lab.tunnel_up(lab.client, cpath, extra)
            lab.wait_link(lab.client, lab.ifname_c)
        else:
            # wireguard-go's control sockets share /var/run/wireguard across namespaces: unique names.
            for ns, path, side in ((lab.server, spath, "s"), (lab.client, cpath, "c")):
                _from_outside(lab, ns, path, f"tb{os.getpid() % 100000}{side}", ["wireguard-go", "-f"])
        end = time.monotonic() + 15
        while lab.run(lab.client, ["ping", "-c", "1", "-W", "1", SERVER_INNER]).returncode != 0:
            if time.monotonic() > end:
                raise RuntimeError("the tunnel did not come up")
        r: dict = {}
        r["rtt_ms"] = _ping(lab, 20, 0.1)
        lab.popen(lab.server, ["iperf3", "-s", "-B", SERVER_INNER], stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        cpu0 = _tunnel_cpu(lab)
        pinger = lab.popen(lab.client, ["ping", "-i", "0.2", "-c", str(int(seconds / 0.2) - 2), SERVER_INNER],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        r["tcp"], gb = _iperf(lab, seconds, [])
        cpu1 = _tunnel_cpu(lab)
        out, _ = pinger.communicate(timeout=30)
        r["rtt_load_ms"] = _rtt_avg(out)
        r["cpu_s_per_gb"] = (cpu1 - cpu0) / gb if gb else None
        echo(f"   single stream {r['tcp']:.0f} Mbit/s, RTT idle {r['rtt_ms']:.2f} ms, loaded {r['rtt_load_ms']:.2f} ms,"
             f" {r['cpu_s_per_gb']:.1f} CPU-s/GB")
        r["tcp_r"], _ = _iperf(lab, seconds, ["-R"])
        echo(f"   reverse {r['tcp_r']:.0f} Mbit/s")
        r["tcp_p4"], _ = _iperf(lab, seconds, ["-P", "4"])
        echo(f"   4 streams {r['tcp_p4']:.0f} Mbit/s")
        return r


def _from_outside(lab: Lab, ns: str, path: str, ifname: str, program: list[str]) -> None:
    """PROGRAM IFNAME (a userspace WireGuard with wireguard-go's command line), configured by wg and ip."""
    cfg = load_config(path)
    setconf = os.path.join(os.path.dirname(path), "setconf.conf")
    with open(os.open(setconf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(cfg.to_setconf_text())
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
    lab.popen(ns, [*program, ifname], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    end = time.monotonic() + 10
    while lab.run(ns, ["wg", "show", ifname]).returncode != 0:
        if time.monotonic() > end:
            raise RuntimeError(f"{program[0]} did not start")
        time.sleep(0.05)
    for cmd in (["wg", "setconf", ifname, setconf], ["ip", "link", "set", ifname, "mtu", "1420", "up"]):
        _check(lab.run(ns, cmd))
    for a in cfg.interface.addresses:
        _check(lab.run(ns, ["ip", "addr", "add", str(a), "dev", ifname] + (["nodad"] if a.version == 6 else [])))


def _check(r: subprocess.CompletedProcess) -> None:
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(r.args[3:])}: {r.stderr.strip()}")


def _iperf(lab: Lab, seconds: int, extra: list[str]) -> tuple[float, float]:
    for _ in range(3):
        r = lab.run(lab.client, ["iperf3", "-c", SERVER_INNER, "-B", CLIENT_INNER, "-t", str(seconds), "-J", *extra],
                    timeout=seconds + 60)
        if r.returncode == 0:
            end = json.loads(r.stdout)["end"]
            return end["sum_received"]["bits_per_second"] / 1e6, end["sum_received"]["bytes"] / 1e9
        time.sleep(0.5)
    raise RuntimeError(f"iperf3 failed: {r.stdout[-300:]} {r.stderr[-300:]}")


def _ping(lab: Lab, count: int, interval: float) -> float:
    r = lab.run(lab.client, ["ping", "-c", str(count), "-i", str(interval), SERVER_INNER], timeout=count * interval + 20)
    return _rtt_avg(r.stdout)


def _rtt_avg(text: str) -> float:
    m = re.search(r"= [\d.]+/([\d.]+)/", text or "")
    return float(m.group(1)) if m else float("nan")


def _tunnel_cpu(lab: Lab) -> float:
    """CPU-seconds so far of every process in the lab's namespaces except iperf3 and ping."""
    total = 0.0
    for ns in lab.namespaces:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            if comm in ("iperf3", "ping", "ip"):
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / _CLK
    return total


def _table(results: dict, every: dict | None = None) -> str:
    """One line per kind; with EVERY (the runs of each kind), medians with their range beneath."""
    cols = [("tcp", "a->b Mb/s"), ("tcp_r", "b->a Mb/s"), ("tcp_p4", "4x Mb/s"), ("rtt_ms", "RTT ms"),
            ("rtt_load_ms", "RTTload ms"), ("cpu_s_per_gb", "CPU s/GB")]

    def fmt(k: str, v) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}" if k.startswith("rtt") else f"{v:.1f}"

    lines = ["kind".ljust(18) + "".join(h.rjust(14) for _, h in cols)]
    for kind, r in results.items():
        label = f"{kind} ({len(every[kind])})" if every else kind
        lines.append(label.ljust(18) + "".join(fmt(k, r.get(k)).rjust(14) for k, _ in cols))
        if every:
            spans = []
            for k, _ in cols:
                vs = [x[k] for x in every[kind] if x.get(k) is not None]
                spans.append(f"{fmt(k, min(vs))}-{fmt(k, max(vs))}" if vs else "-")
            lines.append("  range".ljust(18) + "".join(sp.rjust(14) for sp in spans))
    return "\n".join(lines)
