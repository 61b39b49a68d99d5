"""Figures for the access policy at scale; prints, asserts nothing.

    flock /tmp/bench.lock .venv/bin/python bench/policy_scale.py [--clients 1000] [--rules 500]
                                                                  [--seconds 3] [--runs 8]

(The script also takes /tmp/bench.lock itself, so running it bare is safe.)

- compile: parse + validate, the file's tests, classes and sets for N clients
  in ~10 groups and a policy of M rules; element counts;
- kernel: in a namespace, the first apply, a re-apply of a changed policy
  and of the same one, and moving one client to login-only (goal: apply
  under 2 s); elements the kernel holds;
- throughput: iperf3 (one TCP stream, then 128-byte UDP datagrams at full
  speed) from a client namespace through a router namespace whose veth
  toward the client is the policy's "tunnel interface", to a site host;
  the router runs the gateway's NAT table in both arms; without and with
  the policy, interleaved ABBA, median of --runs each (goal: within 5%). The client
  is one of the N, its groups have many rules, and the rule that accepts
  iperf3 comes last in the file;
- deny flood: the same client floods a denied port; what the kernel logged
  to NFLOG (rate-limited) and counted, and the CPU the reader spent.
Needs root; namespaces are "plb<pid>-..." and are always deleted.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.policy import (ClientRef, GatewayContext, apply_policy, check_policy, compile_policy,  # noqa: E402
                           default_log_group, deny_counters, load_policy, remove, set_client_target)
from server.policy.compile import LOGIN_ONLY  # noqa: E402
from server.gateway import ruleset as gateway_ruleset, table_name as gateway_table_name  # noqa: E402
from server.policy.nflog import NflogSocket  # noqa: E402
from tests.netns import topology  # noqa: E402
from tests.policy.randompolicy import SCALE_CLIENT, SCALE_SERVER, scale_scenario  # noqa: E402
from tunnel import nft  # noqa: E402
from tunnel.undo import Journal  # noqa: E402

IFNAME = "tun0"
POOL = "10.8.0.0/20"
CLIENT_ADDR = SCALE_CLIENT  # the measuring client: clients[8]
SERVER = SCALE_SERVER
GATEWAY = GatewayContext.make(["10.8.0.1/20"], ["10.8.0.1"], ["tcp/8443"])


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_compile(text: str, clients: list[ClientRef]):
    policy, t_load = timed(lambda: load_policy(text, "bench.hujson"))
    problems, t_check = timed(lambda: check_policy(policy, clients, GATEWAY))
    compiled, t_compile = timed(lambda: compile_policy(policy, clients, ifname=IFNAME, gateway=GATEWAY))
    print(f"policy: {len(policy.rules)} rules, {len(clients)} clients in 10 groups -> {len(compiled.classes)} classes; "
          f"problems: {len(problems)}")
    print(f"  parse+validate {t_load * 1000:.0f} ms, check (names + tests) {t_check * 1000:.0f} ms, "
          f"compile {t_compile * 1000:.0f} ms, ruleset {len(compiled.ruleset) / 1e6:.2f} MB")
    print("  elements: " + ", ".join(f"{k} {v}" for k, v in compiled.elements.items())
          + f"; {len(compiled.sets)} lookup sets")
    return policy, compiled


def kernel_elements(ns) -> int:
    out = json.loads(ns.run(["nft", "-j", "list", "table", "inet", "tunnel_acl_tun0"], timeout=60).stdout)
    return sum(len(o[k].get("elem", [])) for o in out["nftables"] for k in ("set", "map") if k in o)


def iperf(client_ns, args: list[str], seconds: int) -> dict:
    # Pinned to CPU 1 (the server to CPU 0): the forwarding runs in the sender's softirq, on its CPU.
    res = client_ns.run(["taskset", "-c", "1", "iperf3", "-c", SERVER, "-J", "-t", str(seconds), "-O", "1", *args],
                        timeout=seconds + 30, check=False)
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rules", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=8)
    args = ap.parse_args()
    text, clients = scale_scenario(args.clients, args.rules)
    policy, compiled = bench_compile(text, clients)
    lock = open("/tmp/bench.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    with topology("plb") as topo:
        cl, r, srv = topo.netns("cl"), topo.netns("r"), topo.netns("srv")
        cl.link_veth(r, f"{CLIENT_ADDR}/20", "10.8.0.1/20", name="cl-r", other_name=IFNAME)
        r.link_veth(srv, "10.1.0.1/24", f"{SERVER}/24")
        cl.route("default", "via", "10.8.0.1")
        srv.route("default", "via", "10.1.0.1")
        r.enable_forwarding()
        journal = Journal.open(os.path.join(f"/tmp/plb{os.getpid()}.json"))
        try:
            with r.entered():
                _, t_first = timed(lambda: apply_policy(journal, policy, clients, ifname=IFNAME, gateway=GATEWAY))
                changed = load_policy(text.replace('"5432"', '"5433"'), "bench.hujson")
                _, t_changed = timed(lambda: apply_policy(journal, changed, clients, ifname=IFNAME, gateway=GATEWAY))
                _, t_same = timed(lambda: apply_policy(journal, policy, clients, ifname=IFNAME, gateway=GATEWAY))
                _, t_move = timed(lambda: set_client_target(IFNAME, "10.8.0.20", LOGIN_ONLY))
            print(f"kernel: first apply {t_first:.2f} s, re-apply changed {t_changed:.2f} s, "
                  f"re-apply same {t_same:.2f} s (each includes check + compile), "
                  f"one client to login-only {t_move * 1000:.0f} ms; elements in the kernel {kernel_elements(r)}")
            # Both arms forward through the gateway's own NAT table (server/gateway.py), as a server
            # does: conntrack is on either way, and the difference is the policy's alone.
            gw_table = gateway_table_name(IFNAME)
            with r.entered():
                journal.record("nft_table", family="inet", name=gw_table)
                nft.replace_table("inet", gw_table, gateway_ruleset(IFNAME, [POOL], True, False))
            srv.popen(["taskset", "-c", "0", "iperf3", "-s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            figures: dict[tuple[str, str], list[float]] = {}
            # ABBA order (without, with, with, without, ...): a drift in the machine's load
            # during the runs weighs on both arms alike.
            for run in range(args.runs):
                for mode in (("without", "with") if run % 2 == 0 else ("with", "without")):
                    with r.entered():
                        if mode == "with":
                            apply_policy(journal, policy, clients, ifname=IFNAME, gateway=GATEWAY)
                        else:
                            remove(IFNAME)
                    tcp = iperf(cl, [], args.seconds)
                    figures.setdefault(("tcp", mode), []).append(tcp["end"]["sum_received"]["bits_per_second"] / 1e6)
                    udp = iperf(cl, ["-u", "-b", "0", "-l", "128"], args.seconds)
                    s = udp["end"]["sum"]
                    figures.setdefault(("udp", mode), []).append(
                        (s["packets"] - s["lost_packets"]) / s["seconds"] / 1e3)
            for kind, unit in (("tcp", "Mbit/s"), ("udp", "kpps received (128 B datagrams)")):
                w, wo = statistics.median(figures[(kind, "with")]), statistics.median(figures[(kind, "without")])
                runs = lambda m: " ".join(f"{x:.0f}" for x in figures[(kind, m)])  # noqa: E731
                print(f"throughput {kind}: without {wo:.0f} ({runs('without')}), with {w:.0f} ({runs('with')}) "
                      f"{unit}, median with/without {w / wo:.3f}")
            deny_flood(cl, r, clients, journal, policy)
        finally:
            with r.entered():
                journal.undo_all()
            os.unlink(journal.path) if os.path.exists(journal.path) else None


def deny_flood(cl, r, clients, journal, policy, seconds: float = 3.0) -> None:
    with r.entered():
        apply_policy(journal, policy, clients, ifname=IFNAME, gateway=GATEWAY)
        before = deny_counters(IFNAME, clients[8:9])
        reader = NflogSocket(default_log_group(IFNAME))
    got = [0]
    cpu = [0.0]
    stop = threading.Event()

    def read() -> None:
        start = resource.getrusage(resource.RUSAGE_THREAD)
        while not stop.is_set():
            got[0] += len(reader.read(0.2))
        end = resource.getrusage(resource.RUSAGE_THREAD)
        cpu[0] = end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime

    t = threading.Thread(target=read)
    t.start()
    with cl.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(200):
            s.sendto(b"x" * 32, (SERVER, 9999))
        sent += 200
    time.sleep(0.5)
    stop.set()
    t.join()
    reader.close()
    with r.entered():
        after = deny_counters(IFNAME, clients[8:9])
    print(f"deny flood: {sent} denied datagrams in {seconds:.0f} s ({sent / seconds / 1e3:.0f} kpps); "
          f"counted for the client {after.by_client[clients[8].name] - before.by_client[clients[8].name]}, "
          f"NFLOG messages {got[0]} (limit: 5 at once then 10/min per source, 10/s in all), "
          f"reader CPU {cpu[0] * 1000:.1f} ms")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("policy_scale: needs root (namespaces, nft)")
    try:
        nft.run(["--version"])
    except (OSError, nft.NftError) as exc:
        sys.exit(f"policy_scale: nft is missing ({exc}); apt-get install nftables")
    main()
