"""`tunnel bench`: our tunnel beside wireguard-go, between two namespaces, in one run.

For each kind: single-stream TCP client->server and server->client, 4 streams,
RTT idle and under load (a ping running during the single-stream test), and
CPU-seconds per GB of the tunnel processes (both ends; iperf3 and ping not
counted). Measurements hold an exclusive flock on /tmp/bench.lock, as every
benchmark here does.

Kinds: `tunnel` (tunnel up on both ends), `tunnel-nooffload`, `tunnel-wg`
(the drop-in: `tunnel-wg IFACE` configured from outside with `wg setconf`
and `ip`, as wg-quick does) and `wireguard-go` (the same way).

One figure from one run is not worth quoting: the machine's other work, its
CPU and its clock move them by tens of percent. So each kind is measured
RUNS times, the kinds taking turns (tunnel, wireguard-go, tunnel, ...: a
slow minute hurts both alike), and the table gives each figure's median with
its minimum and maximum, then the ratios of the medians. It opens with what
a reader needs to compare machines: the CPU model, and how long this
machine's ChaCha20-Poly1305 takes for one 1420-byte packet.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable

from tunnel.config import load_config

from .lab import CLIENT_INNER, SERVER_INNER, Lab, LabError

KINDS = ("tunnel", "tunnel-nooffload", "tunnel-wg", "wireguard-go")
_CLK = os.sysconf("SC_CLK_TCK")


METRICS = (("tcp", "a->b Mb/s"), ("tcp_r", "b->a Mb/s"), ("tcp_p4", "4x Mb/s"), ("rtt_ms", "RTT ms"),
           ("rtt_load_ms", "RTTload ms"), ("cpu_s_per_gb", "CPU s/GB"))
RATIOS = ("tcp", "tcp_r", "tcp_p4", "rtt_ms", "rtt_load_ms", "cpu_s_per_gb")


def run_bench(seconds: int = 10, kinds: list[str] | None = None, as_json: bool = False, echo=print,
              runs: int = 3) -> str | None:
    if runs < 1:
        return "--runs must be at least 1"
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
    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        echo(machine_line())
        try:
            results = bench_rounds(kinds, runs, lambda kind: _measure(kind, seconds, echo), echo)
        except (LabError, RuntimeError) as exc:
            return str(exc)
    echo("")
    echo(f"tunnel bench --seconds {seconds} --runs {runs}: median (min-max) of each figure")
    echo(machine_line())
    echo(report(results))
    if as_json:
        echo(json.dumps({"machine": machine(), "runs": results, "summary": summarize(results)}, indent=2))
    return None


def schedule(kinds: list[str], runs: int) -> list[tuple[int, str]]:
    """(run, kind) in the order measured: the kinds take turns, run by run."""
    return [(run, kind) for run in range(1, runs + 1) for kind in kinds]


def bench_rounds(kinds: list[str], runs: int, measure: Callable[[str], dict], echo=print) -> dict[str, list[dict]]:
    """Every kind RUNS times, interleaved; kind -> its figures, one dict per run."""
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for run, kind in schedule(kinds, runs):
        echo(f"== {kind}, run {run} of {runs}")
        try:
            results[kind].append(measure(kind))
        except (LabError, RuntimeError) as exc:
            raise RuntimeError(f"{kind}, run {run}: {exc}") from None
    return results


def summarize(results: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float, float] | None]]:
    """kind -> metric -> (median, min, max) over its runs (None when no run has the figure)."""
    out: dict[str, dict[str, tuple[float, float, float] | None]] = {}
    for kind, runs in results.items():
        out[kind] = {}
        for key, _ in METRICS:
            values = [r[key] for r in runs if r.get(key) is not None and r[key] == r[key]]  # NaN: no figure
            out[kind][key] = (statistics.median(values), min(values), max(values)) if values else None
    return out


def ratios(summary: dict, kind: str, ref: str = "wireguard-go") -> dict[str, float]:
    """The ratios of the medians, KIND over REF, for the figures both have."""
    out = {}
    for key in RATIOS:
        a, b = summary[kind].get(key), summary[ref].get(key)
        if a is not None and b is not None and b[0]:
            out[key] = a[0] / b[0]
    return out


def report(results: dict[str, list[dict]]) -> str:
    summary = summarize(results)
    width = 22
    lines = ["kind".ljust(18) + "".join(h.rjust(width) for _, h in METRICS)]
    for kind, runs in results.items():
        cells = []
        for key, _ in METRICS:
            s = summary[kind][key]
            if s is None:
                cells.append("-".rjust(width))
                continue
            digits = 2 if key.startswith("rtt") else 1 if key == "cpu_s_per_gb" else 0
            cells.append(f"{s[0]:.{digits}f} ({s[1]:.{digits}f}-{s[2]:.{digits}f})".rjust(width))
        lines.append(f"{kind} ({len(runs)})".ljust(18) + "".join(cells))
    pairs = [(kind, "wireguard-go") for kind in results if kind != "wireguard-go" and "wireguard-go" in results]
    if "tunnel-wg" in results and "tunnel" in results:
        pairs.append(("tunnel-wg", "tunnel"))
    for kind, ref in pairs:
        lines.append(f"{kind} / {ref}, ratio of medians: " + ", ".join(
            f"{k} {v:.2f}x" for k, v in ratios(summary, kind, ref).items()))
    return "\n".join(lines)


# --- the machine ---------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (or the platform's guess)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def aead_microseconds(size: int = 1420, rounds: int = 5, count: int = 2000) -> float:
    """One ChaCha20-Poly1305 encrypt of SIZE bytes, in µs: the best of ROUNDS batches of COUNT."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(bytes(32))
    data, nonce = bytes(size), bytes(12)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            aead.encrypt(nonce, data, None)
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


def machine() -> dict:
    import cryptography

    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "cryptography": cryptography.__version__, "aead_1420_us": round(aead_microseconds(), 2)}


def machine_line() -> str:
    m = machine()
    return (f"{m['cpu']} ({m['cpus']} CPUs), Linux {m['kernel']}, {m['python']}, cryptography {m['cryptography']}; "
            f"ChaCha20-Poly1305 encrypt of 1420 bytes: {m['aead_1420_us']:.2f} µs")


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
