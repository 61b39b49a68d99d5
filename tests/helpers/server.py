"""`tunnel server` as a process inside a test namespace: init, up, add-client, stop, down.

    srv = ServerProc(ns, workdir, topo.unique_ifname("sv"))
    srv.init("10.99.0.1", pools=["10.8.0.0/24"])
    srv.up()
    text = srv.add_client("alice")      # the client's wg-quick file
    assert srv.stop() == 0

`http_login(ns, body)` logs a client in from NS as an official app's user would: a plain HTTP
POST to the login endpoint on the server's tunnel address.

Rules kept here: the server's files live under WORKDIR/srv and its journal
under WORKDIR/srv-state (TUNNEL_STATE_DIR), never in /etc/wireguard or
/run/tunnel; the interface name is unique on the machine (its control
socket is in the shared /var/run/wireguard); the daemon is started through
Netns.popen, so the namespace teardown kills it whatever happens; its log
is appended across restarts and readiness is counted in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Sequence

from tests.helpers.netns import WG_SOCKET_DIR, Netns
from tests.helpers.tunnelproc import run_tunnel, tunnel_env

UP_LINE = ": up, listening"


class ServerProc:
    def __init__(self, ns: Netns, workdir: str, ifname: str):
        self.ns = ns
        self.ifname = ifname
        self.dir = os.path.join(workdir, "srv")
        self.state = os.path.join(workdir, "srv-state")
        self.log_path = os.path.join(workdir, "server.log")
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`tunnel server ARGS --dir ... -i IFNAME` to completion."""
        res = self.ns.run([sys.executable, "-m", "tunnel", "server", *args, "--dir", self.dir, "-i", self.ifname],
                          check=False, env=tunnel_env(self.state), timeout=60)
        if check:
            assert res.returncode == 0, f"tunnel server {' '.join(args)}:\n{res.stdout}{res.stderr}"
        return res

    def init(self, endpoint: str, port: int = 51820, pools: Sequence[str] = (), dns: Sequence[str] = (),
             extra: Sequence[str] = ()) -> None:
        args = ["init", "--endpoint", endpoint, "--port", str(port)]
        for pool in pools:
            args += ["--pool", pool]
        for server in dns:
            args += ["--dns", server]
        self.cli(*args, *extra)

    def up(self, timeout: float = 30.0) -> None:
        """`tunnel server up` in the background, until its control socket exists and it logged "up"."""
        env = tunnel_env(self.state)
        env.pop("NOTIFY_SOCKET", None)
        before = self.log().count(UP_LINE)
        with open(self.log_path, "ab") as logf:
            self.proc = self.ns.popen([sys.executable, "-m", "tunnel", "server", "up", "--dir", self.dir,
                                       "-i", self.ifname], stdout=logf, stderr=subprocess.STDOUT, env=env)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}:\n{self.log()}")
            return os.path.exists(os.path.join(WG_SOCKET_DIR, f"{self.ifname}.sock")) and \
                self.log().count(UP_LINE) > before

        Netns.wait_for(ready, timeout, what=f"server {self.ifname} up")

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send SIG to the running server and return its exit status."""
        assert self.proc is not None, "the server was never started"
        os.killpg(self.proc.pid, sig)
        return self.proc.wait(timeout)

    def down(self) -> subprocess.CompletedProcess[str]:
        """`tunnel down IFNAME` with the server's journal: what a crashed server left."""
        return run_tunnel(self.ns, self.state, "down", self.ifname)

    def add_client(self, name: str, *extra: str) -> str:
        """add-client NAME to the running server; returns the client's config text as printed."""
        res = self.cli("add-client", name, "--no-qr", *extra)
        assert "the running server has it" in res.stderr, res.stderr
        return res.stdout

    def wg_dump(self) -> dict[str, list[str]]:
        """Debian's `wg show IFNAME dump` against our socket: public key -> its fields."""
        out = self.ns.run(["wg", "show", self.ifname, "dump"]).stdout.strip().splitlines()
        return {line.split("\t")[0]: line.split("\t") for line in out[1:]}

    def add_user(self, name: str, password: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """`tunnel server user add NAME --password-file -` with PASSWORD on stdin (a local account for login)."""
        return self.ns.run([sys.executable, "-m", "tunnel", "server", "user", "add", name, *extra, "--password-file",
                            "-", "--dir", self.dir, "-i", self.ifname], input=password + "\n",
                           env=tunnel_env(self.state))

    def show_json(self) -> dict:
        res = self.ns.run([sys.executable, "-m", "tunnel", "show", self.ifname, "--json"], env=tunnel_env(self.state))
        return json.loads(res.stdout)


def http_login(ns: Netns, body: dict, address: str = "10.8.0.1") -> dict:
    """POST BODY ({"user", "password"[, "code"]}) to http://ADDRESS/api/login from NS; the JSON answer."""
    code = ("import json, sys, urllib.request\n"
            "req = urllib.request.Request(sys.argv[2] + '/api/login', data=sys.argv[1].encode(),\n"
            "                             headers={'Content-Type': 'application/json'})\n"
            "try:\n"
            "    print(urllib.request.urlopen(req, timeout=15).read().decode())\n"
            "except urllib.error.HTTPError as exc:\n"
            "    print(exc.read().decode())\n")
    return json.loads(ns.python(code, json.dumps(body), f"http://{address}").stdout)
