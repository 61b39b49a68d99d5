"""A server restart under a stock client's ping: time until the client's traffic resumes, ours beside wireguard-go.

    sudo .venv/bin/python bench/restart.py [--runs 5] [--kinds tunnel,tunnel-server,wireguard-go] [--cost]

    [cli] cli-srv 10.84.0.2 ----------- srv-cli 10.84.0.1 [srv]
          wireguard-go 10.85.0.2 (or the pool's)          the server :51820, tunnel 10.85.0.1 (10.8.0.1)

The client is always Debian's wireguard-go (its peer has an Endpoint; no
PersistentKeepalive). It pings the server's tunnel address every 0.1 s. Once
replies flow (and a second more), the server is killed with SIGKILL, cleaned
up as systemd would (`tunnel down`; for wireguard-go its stale UAPI socket),
and started again with the same configuration. Kinds of server:

    tunnel          `tunnel up CONFIG` (the client's peer has no Endpoint)
    tunnel-server   `tunnel server init` + `add-client`, then `tunnel server up`
    wireguard-go    wireguard-go + `wg set` (no such feature: the client's own
                    timers bring it back, KEEPALIVE_TIMEOUT + REKEY_TIMEOUT)

Printed per kind, as median (min-max) over the runs, interleaved: `resume s`,
from the restarted server being up (READY=1, its log line, wireguard-go's
link up) to the first ping reply (iputils' own arrival time, -D), and
`outage s`, from the SIGKILL to that reply (what a user sees, start-up
included). --cost also prints what resumption costs the server's loop: the
CPU time of an initiation and of consuming the response it brings back,
measured in this process over the core (the pacing in tunnel/resume.py is
set from it).

Measurements hold an exclusive flock on /tmp/bench.lock.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.helpers.netns import WG_SOCKET_DIR, Netns, WgPeer, genkey, topology, wireguard_go  # noqa: E402
from tests.helpers.pinglog import PingLog  # noqa: E402
from tests.helpers.server import ServerProc  # noqa: E402
from tests.helpers.tunnelproc import interface_config, run_tunnel, start_tunnel  # noqa: E402

PORT = 51820
SERVER_UNDER, CLIENT_UNDER = "10.84.0.1", "10.84.0.2"
SERVER_IN, CLIENT_IN = "10.85.0.1", "10.85.0.2"
KINDS = ("tunnel", "tunnel-server", "wireguard-go")
TIMEOUT = 60.0  # seconds to wait for the first reply after the restart


class Server:
    """One kind of server in [srv]: start(), kill(), restart() -> when it is up again (time.time())."""

    def __init__(self, kind: str, srv: Netns, cli: Netns, workdir: str):
        self.kind, self.srv, self.cli, self.workdir = kind, srv, cli, workdir
        self.sk, self.ck = genkey(), genkey()
        self.target = SERVER_IN
        self.proc = None

    def start(self) -> None:
        to_client = WgPeer(self.ck[1], [f"{CLIENT_IN}/32"])
        to_server = WgPeer(self.sk[1], [f"{SERVER_IN}/24"], f"{SERVER_UNDER}:{PORT}")
        client_key, client_peer, client_address = self.ck[0], to_server, f"{CLIENT_IN}/24"
        if self.kind == "tunnel":
            self.conf = interface_config(self.sk[0], PORT, [f"{SERVER_IN}/24"], [to_client])
            self.proc = start_tunnel(self.srv, self.workdir, self.conf)
            self.proc.wait_up()
        elif self.kind == "wireguard-go":
            self.ifname = self.srv.topo.unique_ifname("rb")
            self.proc = self._wireguard_go()
        else:
            from tunnel.config import parse_config

            self.proc = ServerProc(self.srv, self.workdir, self.srv.topo.unique_ifname("rb"))
            self.proc.init(SERVER_UNDER, port=PORT, pools=["10.8.0.0/24"], extra=("--split",))
            self.proc.up()
            client = parse_config(self.proc.add_client("bench"))
            server_peer = client.peers[0]
            client_key = _b64(client.interface.private_key)
            client_peer = WgPeer(_b64(server_peer.public_key), ["10.8.0.0/24"], f"{SERVER_UNDER}:{PORT}",
                                 preshared_key=_b64(server_peer.preshared_key) if server_peer.preshared_key else None)
            client_address = f"{client.interface.addresses[0].ip}/24"
            self.target = "10.8.0.1"
        wireguard_go(self.cli, self.cli.topo.unique_ifname("rc"), client_key, 0, [client_peer], address=client_address)

    def _wireguard_go(self):
        sock = os.path.join(WG_SOCKET_DIR, f"{self.ifname}.sock")
        if os.path.exists(sock):  # what the killed one left
            os.unlink(sock)
        return wireguard_go(self.srv, self.ifname, self.sk[0], PORT, [WgPeer(self.ck[1], [f"{CLIENT_IN}/32"])],
                            address=f"{SERVER_IN}/24", mtu=1420)

    def kill(self) -> None:
        if self.kind == "tunnel":
            self.proc.stop(signal.SIGKILL)
            run_tunnel(self.srv, self.proc.state_dir, "down", self.proc.ifname)
        elif self.kind == "wireguard-go":
            os.killpg(self.proc.proc.pid, signal.SIGKILL)
            self.proc.proc.wait(10)
        else:
            self.proc.stop(signal.SIGKILL)
            self.proc.down()

    def restart(self) -> float:
        if self.kind == "tunnel":
            self.proc = start_tunnel(self.srv, self.workdir, self.conf, ifname=self.proc.ifname)
            self.proc.wait_up()
        elif self.kind == "wireguard-go":
            self.proc = self._wireguard_go()
        else:
            self.proc.up()
        return time.time()

    def stop(self) -> None:
        self.proc.stop()


def _b64(raw: bytes) -> str:
    from tunnel.protocol.crypto import encode_key

    return encode_key(raw)


def measure(kind: str, settle: float) -> dict:
    workdir = tempfile.mkdtemp(prefix="restart-")
    try:
        with topology("rb") as topo:
            cli, srv = topo.netns("cli"), topo.netns("srv")
            cli.link_veth(srv, f"{CLIENT_UNDER}/24", f"{SERVER_UNDER}/24")
            server = Server(kind, srv, cli, workdir)
            server.start()
            pl = PingLog.start(cli, server.target, os.path.join(workdir, "ping.log"))
            Netns.wait_for(lambda: pl.replies(), 30, interval=0.1, what="a first ping reply")
            time.sleep(settle)
            killed = time.time()
            server.kill()
            up = server.restart()
            resume = pl.wait_reply_after(up, TIMEOUT)
            pl.stop()
            server.stop()
            return {"resume": resume, "outage": up + resume - killed, "startup": up - killed}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def cost(peers: int = 1000) -> dict:
    """CPU seconds (this process, the core alone) per initiation and per response consumed."""
    from tunnel.protocol import Device, SendDatagram
    from tunnel.protocol.crypto import DH_GENERATE

    server = Device(DH_GENERATE(os.urandom(32)), wall_epoch=time.time())
    clients = [Device(DH_GENERATE(os.urandom(32)), wall_epoch=time.time()) for _ in range(peers)]
    for i, c in enumerate(clients):
        server.add_peer(c.public_key, endpoint=("192.0.2.1", 1000 + i))
        c.add_peer(server.public_key)
    order = [server.peers[c.public_key] for c in clients]
    t = time.process_time()
    inits = [server.initiate(p, 100.0) for p in order]
    t_init = (time.process_time() - t) / peers
    responses = []
    for c, actions in zip(clients, inits):
        (init,) = [a for a in actions if type(a) is SendDatagram]
        out = c.receive_datagram(init.data, ("192.0.2.2", PORT), 100.0)
        responses.append([a for a in out if type(a) is SendDatagram][0].data)
    t = time.process_time()
    for i, data in enumerate(responses):
        server.receive_datagram(data, ("192.0.2.1", 1000 + i), 100.1)
    t_resp = (time.process_time() - t) / peers
    assert all(p.current is not None for p in order)
    return {"initiation": t_init, "response": t_resp}


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of replies before the kill")
    ap.add_argument("--cost", action="store_true", help="also measure the CPU of an initiation and a response")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/restart.py creates network namespaces: run it as root")
        return 1
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            print(f"unknown kind {k!r}; choose from {', '.join(KINDS)}")
            return 1
    for tool in ("wireguard-go", "wg", "ping"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (scripts/setup.sh installs it)")
            return 1
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for run in range(args.runs):
            print(f"== run {run + 1}/{args.runs}", flush=True)
            for kind in kinds:
                r = measure(kind, args.settle)
                results[kind].append(r)
                print(f"   {kind}: first reply {r['resume']:.2f} s after the restarted server was up "
                      f"({r['outage']:.2f} s after the kill)", flush=True)
        measured = cost() if args.cost else None
    print()
    width = max(len(f"{k} ({len(v)})") for k, v in results.items())
    print(f"{'kind'.ljust(width)}  {'resume s':>20}  {'outage s':>20}  {'start-up s':>20}")
    for kind, runs in results.items():
        print(f"{f'{kind} ({len(runs)})'.ljust(width)}  {_cell([r['resume'] for r in runs]):>20}  "
              f"{_cell([r['outage'] for r in runs]):>20}  {_cell([r['startup'] for r in runs]):>20}")
    if measured:
        from tunnel.resume import RESUME_BURST, RESUME_RATE

        per_peer = measured["initiation"] + measured["response"]
        print(f"\nresumption's cost on the server's loop: initiation {measured['initiation'] * 1e6:.0f} µs, "
              f"response {measured['response'] * 1e6:.0f} µs; at {RESUME_RATE:.0f}/s (bursts of {RESUME_BURST}) "
              f"{100 * per_peer * RESUME_RATE:.0f}% of a core, 10,000 peers in {10_000 / RESUME_RATE:.0f} s, "
              f"a burst holds the loop {RESUME_BURST * measured['initiation'] * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
