"""`tunnel demo`: a real tunnel between two namespaces, made by our own code on both ends.

It shows each step as it goes: namespaces, keys and configs, both ends up,
the handshake, a ping over IPv4 and IPv6 inside the tunnel, and a short
TCP throughput figure (iperf3 when installed). Everything it creates lives
in its own two namespaces and a private temporary directory, removed at the
end whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from .lab import CLIENT_INNER, SERVER_INNER, SERVER_INNER6, Lab, LabError


def run_demo(seconds: int = 3, echo=print) -> str | None:
    if os.geteuid() != 0:
        return "the demo creates network namespaces: run it as root (sudo)"
    try:
        with Lab("tdemo") as lab:
            echo(f"[1/6] namespaces {lab.server} and {lab.client}, joined by a veth pair")
            spath, cpath = lab.write_configs()
            echo(f"[2/6] keys and configs written (mode 0600) under {lab.workdir}")
            slog, clog = os.path.join(lab.workdir, "server.log"), os.path.join(lab.workdir, "client.log")
            lab.tunnel_up(lab.server, spath, log_path=slog)
            if not lab.wait_link(lab.server, lab.ifname_s):
                return "the server side did not come up:\n" + _tail(slog)
            lab.tunnel_up(lab.client, cpath, log_path=clog)
            if not lab.wait_link(lab.client, lab.ifname_c):
                return "the client side did not come up:\n" + _tail(clog)
            echo(f"[3/6] both ends up: `tunnel up` in each namespace (TUN {lab.ifname_s} / {lab.ifname_c}, UDP 51820)")
            t0 = time.monotonic()
            if not _wait_ping(lab, SERVER_INNER, 10):
                return "no handshake within 10 s:\n" + _tail(clog) + _tail(slog)
            echo(f"[4/6] handshake completed in {1000 * (time.monotonic() - t0):.0f} ms")
            for target in (SERVER_INNER, SERVER_INNER6):
                r = lab.run(lab.client, ["ping", "-c", "3", "-i", "0.2", "-W", "2", target])
                summary = [ln for ln in r.stdout.splitlines() if "rtt" in ln or "packets transmitted" in ln]
                echo(f"[5/6] ping {target} through the tunnel: " + (" | ".join(summary) or r.stderr.strip()))
                if r.returncode != 0:
                    return f"ping {target} failed"
            echo(f"[6/6] {seconds} s of TCP from client to server through the tunnel...")
            mbps = _throughput(lab, seconds)
            echo(f"      {mbps:.0f} Mbit/s" if mbps else "      (iperf3 not installed: skipped)")
            echo("demo finished: removing namespaces, keys and configs")
    except LabError as exc:
        return str(exc)
    return None


def _wait_ping(lab: Lab, target: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if lab.run(lab.client, ["ping", "-c", "1", "-W", "1", target]).returncode == 0:
            return True
    return False


def _throughput(lab: Lab, seconds: int) -> float | None:
    if shutil.which("iperf3") is None:
        return None
    lab.popen(lab.server, ["iperf3", "-s", "-1", "-B", SERVER_INNER],
              stdout=open(os.devnull, "wb"), stderr=open(os.devnull, "wb"))
    for _ in range(50):
        r = lab.run(lab.client, ["iperf3", "-c", SERVER_INNER, "-B", CLIENT_INNER, "-t", str(seconds), "-J"],
                    timeout=seconds + 30)
        if r.returncode == 0:
            data = json.loads(r.stdout)
            return data["end"]["sum_received"]["bits_per_second"] / 1e6
        time.sleep(0.1)
    return None


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
