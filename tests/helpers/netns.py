"""The harness for tests that need real network namespaces.

Like the kernel's selftests/wireguard/netns.sh, a test draws its topology at
the top and gets one helper per namespace:

    #  [a] a-b ---- b-a [b]
    with topology("xy") as topo:
        a, b = topo.netns("a"), topo.netns("b")
        a.link_veth(b, "10.0.0.1/24", "10.0.0.2/24")
        b.run(["ping", "-c1", "10.0.0.1"])

Rules kept here:
- nothing of the host's is touched: links are created directly inside our
  namespaces (`ip link add ... netns X type veth peer ... netns Y`), so no
  interface ever exists in, or moves out of, the host namespace; addresses
  are only ever added inside our namespaces;
- names are unique per run: namespaces are f"{prefix}{pid % 100000}-{name}",
  so pytest-xdist workers and concurrent sessions never collide; interface
  names that must be unique machine-wide (wireguard-go's UAPI sockets live in
  the shared /var/run/wireguard) come from `Topology.unique_ifname`;
- teardown always runs (context manager `finally`, and an atexit fallback):
  tracked processes are killed by process group, then every process still in
  a namespace, then the namespaces are deleted (which deletes their links),
  then the /etc/netns/<name> directories and UAPI sockets we created;
- teardown steps each run on their own: one failure does not stop the rest.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from pyroute2.netns import setns

T = TypeVar("T")

IFNAMSIZ_MAX = 15  # kernel IFNAMSIZ (16) minus the terminating NUL
WG_SOCKET_DIR = "/var/run/wireguard"
NETNS_ETC_DIR = "/etc/netns"
NETNS_RUN_DIR = "/var/run/netns"

# Topologies still open in this process; atexit tears down whatever a crash
# or a stray `return` left behind.
_LIVE: list["Topology"] = []
# Names of namespaces created by this process and not yet deleted: a name in
# /var/run/netns that matches ours but is not here was left by a dead process
# that had our pid, and is safe to remove.
_OURS: set[str] = set()
_ifname_counter = 0


class HarnessError(RuntimeError):
    """The harness itself could not build or tear down a topology."""


def is_root() -> bool:
    return os.geteuid() == 0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_root() -> None:
    """Skip for a developer without root; in CI (CI=true) missing root is a failure."""
    if is_root():
        return
    if in_ci():
        pytest.fail("network-namespace tests need root, and CI must run them", pytrace=False)
    pytest.skip("network-namespace tests need root")


def _kill_group(proc: subprocess.Popen[Any], grace: float = 2.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Children may outlive the leader; the group id stays valid while any live.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)


def _netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_RUN_DIR, name))


class Netns:
    """One network namespace of a topology, with helpers that act inside it."""

    def __init__(self, topo: "Topology", short: str, name: str) -> None:
        self.topo = topo
        self.short = short  # the name the test used, e.g. "a"
        self.name = name  # the real namespace name, e.g. "nc4242-a"
        self.procs: list[subprocess.Popen[Any]] = []
        self._veth_count = 0

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    # -- running things inside ----------------------------------------------

    def argv(self, cmd: Sequence[str] | str) -> list[str]:
        """The argv that runs `cmd` in this namespace (a string runs through sh -c)."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self,
        cmd: Sequence[str] | str,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion; stdout/stderr captured as text. check=True raises with stderr shown."""
        res = subprocess.run(
            self.argv(cmd), capture_output=True, text=True, timeout=timeout, input=input,
            env=env, start_new_session=True,
        )
        if check and res.returncode != 0:
            raise HarnessError(
                f"[{self.name}] {' '.join(map(str, self.argv(cmd)[4:]))} exited {res.returncode}:\n"
                f"{res.stdout}{res.stderr}"
            )
        return res

    def popen(self, cmd: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a tracked process in its own process group; teardown kills the group."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs["start_new_session"] = True
        proc = subprocess.Popen(self.argv(cmd), **kwargs)
        self.procs.append(proc)
        return proc

    def python(self, code: str, *args: str, check: bool = True, timeout: float = 60.0,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run Python code with this interpreter (the venv) in the namespace, cwd = repo root."""
        full_env = dict(os.environ if env is None else env)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        full_env["PYTHONPATH"] = root + os.pathsep + full_env.get("PYTHONPATH", "")
        return self.run([sys.executable, "-c", code, *args], check=check, timeout=timeout, env=full_env)

    @contextlib.contextmanager
    def entered(self) -> Iterator["Netns"]:
        """Move the calling thread into this namespace for the block, then back.

        Only the calling thread moves (setns is per thread); sockets opened
        inside stay bound to this namespace after the block.
        """
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            setns(self.name)
            try:
                yield self
            finally:
                setns(home)
        finally:
            os.close(home)

    def pids(self) -> list[int]:
        res = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in res.stdout.split() if p.isdigit()]

    # -- configuration --------------------------------------------------------

    def ip(self, *args: str) -> str:
        return self.run(["ip", *args]).stdout

    def ip_json(self, *args: str) -> Any:
        """`ip -j ARGS` parsed; an empty answer is []."""
        out = self.run(["ip", "-j", *args]).stdout.strip()
        return json.loads(out) if out else []

    def addr(self, ifname: str, address: str) -> None:
        """Add an address with prefix ("10.0.0.1/24", "fd00::1/64"); IPv6 skips DAD."""
        extra = ["nodad"] if ":" in address else []
        self.run(["ip", "addr", "add", address, "dev", ifname, *extra])

    def link_up(self, ifname: str) -> None:
        self.run(["ip", "link", "set", ifname, "up"])

    def route(self, *spec: str) -> None:
        """`ip route add SPEC...` in this namespace (use "-6" first for IPv6 specs without a prefix)."""
        if spec and spec[0] in ("-4", "-6"):
            self.run(["ip", spec[0], "route", "add", *spec[1:]])
        else:
            self.run(["ip", "route", "add", *spec])

    def link_veth(
        self,
        other: "Netns",
        addr: str | Sequence[str] | None = None,
        other_addr: str | Sequence[str] | None = None,
        name: str | None = None,
        other_name: str | None = None,
        mtu: int | None = None,
    ) -> tuple[str, str]:
        """Join this namespace to `other` with a veth pair, both ends up; returns (name, other_name).

        Default names are "<this>-<other>" built from the short names, so the
        link in [a] toward [b] is "a-b"; a second pair gets a number suffix.
        """
        self._veth_count += 1
        other._veth_count += 1
        name = name or self.topo._link_name(self.short, other.short, self._veth_count)
        other_name = other_name or self.topo._link_name(other.short, self.short, other._veth_count)
        for n in (name, other_name):
            if len(n) > IFNAMSIZ_MAX:
                raise HarnessError(f"interface name {n!r} longer than {IFNAMSIZ_MAX}")
        # Created straight inside both namespaces: never in the host's.
        cmd = ["ip", "link", "add", "name", name, "netns", self.name]
        if mtu:
            cmd += ["mtu", str(mtu)]
        cmd += ["type", "veth", "peer", "name", other_name, "netns", other.name]
        if mtu:
            cmd += ["mtu", str(mtu)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise HarnessError(f"{' '.join(cmd)}: {res.stderr.strip()}")
        for ns, n, a in ((self, name, addr), (other, other_name, other_addr)):
            for one in [a] if isinstance(a, str) else (a or []):
                ns.addr(n, one)
            ns.link_up(n)
        return name, other_name

    def enable_forwarding(self) -> None:
        self.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])

    def sysctl(self, key: str, value: str | int) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def etc_dir(self) -> str:
        """/etc/netns/<name>, created; files in it shadow /etc inside `run`/`popen` (e.g. resolv.conf)."""
        path = os.path.join(NETNS_ETC_DIR, self.name)
        os.makedirs(path, exist_ok=True)
        self.topo._etc_dirs.add(path)
        return path

    def snapshot(self) -> dict[str, Any]:
        """The namespace's links, addresses and routes (all tables, v4 and v6), for before/after equality."""
        links = self.ip_json("addr")
        for link in links:
            # The kernel attaches the default qdisc the first time a link goes
            # up and keeps it after it goes down: not a change anyone can undo.
            link.pop("qdisc", None)
        return {
            "addr": links,
            "route4": self.ip_json("-4", "route", "show", "table", "all"),
            "route6": self.ip_json("-6", "route", "show", "table", "all"),
            "rule4": self.ip_json("-4", "rule"),
            "rule6": self.ip_json("-6", "rule"),
        }

    def state(self, sysctls: Sequence[str] = (), files: Sequence[str] = ()) -> dict[str, Any]:
        """`snapshot()` plus the nftables ruleset, SYSCTLS and FILES (None if missing): before == after.

        Routes are compared as sets: a link bounce or a re-added route may
        bring kernel routes back in another order.
        """
        snap = self.snapshot()
        for key in ("route4", "route6"):
            snap[key].sort(key=lambda r: json.dumps(r, sort_keys=True))
        snap["nft"] = self.run(["nft", "-j", "list", "ruleset"]).stdout
        snap["sysctl"] = {k: self.run(["sysctl", "-n", k]).stdout.strip() for k in sysctls}
        snap["files"] = {}
        for path in files:
            try:
                with open(path, encoding="utf-8") as f:
                    snap["files"][path] = f.read()
            except FileNotFoundError:
                snap["files"][path] = None
        return snap

    def nft_counter(self, family: str, table: str, chain: str, comment: str) -> int:
        """Packets counted by the rule with COMMENT in FAMILY TABLE CHAIN (a probe a test installed)."""
        listing = json.loads(self.run(["nft", "-j", "list", "chain", family, table, chain]).stdout)
        for obj in listing["nftables"]:
            rule = obj.get("rule")
            if rule and rule.get("comment") == comment:
                return next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        raise LookupError(f"no rule {comment!r} in {family} {table} {chain} of {self.name}")

    # -- waiting -------------------------------------------------------------

    def wait_dad(self) -> None:
        """Until no IPv6 address is tentative: snapshots and pings must not race DAD."""
        self.wait_for(lambda: "tentative" not in self.ip("-6", "addr"), what=f"DAD in {self.name}")

    @staticmethod
    def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
                 what: str | None = None) -> T:
        """Poll until `condition()` is truthy and return it; raise TimeoutError after `timeout`.

        The timeout is a generous bound against hangs, not an assertion about speed.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition}")
            time.sleep(interval)

    # -- teardown ------------------------------------------------------------

    def _kill_all(self, errors: list[str]) -> None:
        for proc in reversed(self.procs):
            try:
                _kill_group(proc)
            except Exception as exc:
                errors.append(f"kill {proc.args}: {exc}")
        # Anything else still inside: daemons that double-forked, stray children.
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


@dataclass
class Topology:
    """A set of namespaces torn down together; use `topology(prefix)` to get one."""

    prefix: str
    namespaces: dict[str, Netns] = field(default_factory=dict)
    _etc_dirs: set[str] = field(default_factory=set)
    _wg_ifnames: set[str] = field(default_factory=set)
    closed: bool = False

    @property
    def tag(self) -> str:
        return f"{self.prefix}{os.getpid() % 100000}"

    def netns(self, name: str) -> Netns:
        """Create the namespace `name` (loopback up) and return its helper."""
        if name in self.namespaces:
            raise HarnessError(f"namespace {name!r} already in this topology")
        if self.closed:
            raise HarnessError("topology already torn down")
        full = f"{self.tag}-{name}"
        if _netns_exists(full):
            if full in _OURS:
                raise HarnessError(f"namespace {full} is still in use by another topology of this process")
            # Left by a dead process that had our pid: ours to reclaim.
            subprocess.run(["ip", "netns", "del", full], capture_output=True)
        res = subprocess.run(["ip", "netns", "add", full], capture_output=True, text=True)
        if res.returncode != 0:
            raise HarnessError(f"ip netns add {full}: {res.stderr.strip()}")
        _OURS.add(full)
        ns = Netns(self, name, full)
        self.namespaces[name] = ns
        ns.link_up("lo")
        return ns

    def __getitem__(self, name: str) -> Netns:
        return self.namespaces[name]

    def unique_ifname(self, base: str = "wg") -> str:
        """An interface name unique on this machine for this run, <= 15 chars: base + pid + counter."""
        global _ifname_counter
        _ifname_counter += 1
        # Fixed-width pid so that (pid, counter) pairs can never read the same.
        name = f"{base[:4]}{os.getpid() % 100000:05d}{_ifname_counter:x}"
        if len(name) > IFNAMSIZ_MAX:
            raise HarnessError(f"too many interfaces in one process for {name!r}")
        self._wg_ifnames.add(name)
        return name

    def _link_name(self, mine: str, theirs: str, n: int) -> str:
        name = f"{mine}-{theirs}"
        if n > 1:
            name = f"{name}{n}"
        if len(name) > IFNAMSIZ_MAX:
            name = f"{mine[:6]}-{theirs[:5]}{n}"
        return name[:IFNAMSIZ_MAX]

    def close(self) -> list[str]:
        """Tear everything down; each step on its own. Returns the failures (also raised by `topology`)."""
        errors: list[str] = []
        if self.closed:
            return errors
        self.closed = True
        for ns in self.namespaces.values():
            try:
                ns._kill_all(errors)
            except Exception as exc:
                errors.append(f"kill in {ns.name}: {exc}")
        for ns in self.namespaces.values():
            res = subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, text=True)
            if res.returncode != 0 and _netns_exists(ns.name):
                errors.append(f"ip netns del {ns.name}: {res.stderr.strip()}")
            else:
                _OURS.discard(ns.name)
            path = os.path.join(NETNS_ETC_DIR, ns.name)
            if path in self._etc_dirs:
                shutil.rmtree(path, ignore_errors=True)
        # A SIGKILLed wireguard-go leaves its socket behind; the names are ours alone.
        for ifname in self._wg_ifnames:
            for suffix in (".sock", ".name"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(WG_SOCKET_DIR, ifname + suffix))
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)
        return errors


@contextlib.contextmanager
def topology(prefix: str) -> Iterator[Topology]:
    """A topology whose namespaces are named f"{prefix}{pid % 100000}-{name}"; always torn down."""
    if not prefix or not prefix.isalnum():
        raise HarnessError(f"prefix must be alphanumeric, got {prefix!r}")
    topo = Topology(prefix)
    _LIVE.append(topo)
    try:
        yield topo
    finally:  # also on KeyboardInterrupt: `finally` runs for BaseException
        errors = topo.close()
        if errors and sys.exc_info()[0] is None:
            raise HarnessError("teardown failed: " + "; ".join(errors))


@atexit.register
def _teardown_leftovers() -> None:
    for topo in list(_LIVE):
        topo.close()


# -- reference peers ---------------------------------------------------------


def genkey() -> tuple[str, str]:
    """A fresh (private, public) X25519 key pair, base64 as `wg` prints them."""
    priv = X25519PrivateKey.generate()
    raw = priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode(), base64.b64encode(pub).decode()


def pubkey(private_key_b64: str) -> str:
    priv = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key_b64))
    return base64.b64encode(priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


@dataclass
class WgPeer:
    """One [Peer] for `wireguard_go`; allowed_ips like ["10.0.0.2/32", "fd00::2/128"]."""

    public_key: str
    allowed_ips: Sequence[str] = ()
    endpoint: str | None = None  # "10.1.0.2:51820" or "[fd01::2]:51820"
    persistent_keepalive: int | None = None
    preshared_key: str | None = None


@dataclass
class WireguardGo:
    """A running wireguard-go, inside namespace `ns`, interface `ifname`."""

    ns: Netns
    ifname: str
    proc: subprocess.Popen[Any]
    private_key: str
    listen_port: int
    logfile: Any  # an anonymous temporary file: a pipe nobody reads could fill and stall it

    @property
    def public_key(self) -> str:
        return pubkey(self.private_key)

    def wg(self, *args: str, input: str | None = None) -> str:
        """`wg ARGS` in the namespace, e.g. wg("show", ifname, "dump")."""
        return self.ns.run(["wg", *args], input=input).stdout

    def set_peer(self, peer: WgPeer) -> None:
        self.ns.run(["wg", "set", self.ifname, *_peer_args(peer)],
                    input=(peer.preshared_key + "\n") if peer.preshared_key else None)

    def log(self) -> str:
        """What wireguard-go wrote to stderr so far (LOG_LEVEL from env WG_LOG_LEVEL, default error)."""
        self.logfile.seek(0)
        return self.logfile.read().decode(errors="replace")

    def dump(self) -> list[dict[str, str]]:
        """The peers of `wg show IF dump`: public_key, endpoint, allowed_ips, latest_handshake, rx, tx."""
        lines = self.wg("show", self.ifname, "dump").strip().splitlines()[1:]
        keys = ["public_key", "preshared_key", "endpoint", "allowed_ips", "latest_handshake",
                "rx", "tx", "persistent_keepalive"]
        return [dict(zip(keys, line.split("\t"))) for line in lines]

    def stop(self) -> None:
        _kill_group(self.proc)


def _peer_args(peer: WgPeer) -> list[str]:
    args = ["peer", peer.public_key]
    if peer.allowed_ips:
        args += ["allowed-ips", ",".join(peer.allowed_ips)]
    if peer.endpoint:
        args += ["endpoint", peer.endpoint]
    if peer.persistent_keepalive is not None:
        args += ["persistent-keepalive", str(peer.persistent_keepalive)]
    if peer.preshared_key:
        # `wg` reads keys from files only; /dev/stdin carries it without a temp file.
        args += ["preshared-key", "/dev/stdin"]
    return args


def wireguard_go(
    ns: Netns,
    ifname: str,
    private_key_b64: str,
    listen_port: int,
    peers: Sequence[WgPeer] = (),
    address: str | Sequence[str] | None = None,
    mtu: int | None = None,
    timeout: float = 10.0,
) -> WireguardGo:
    """Start Debian's wireguard-go in `ns` (foreground, tracked), configure it, bring it up.

    `ifname` must be unique on the machine (use `ns.topo.unique_ifname()`),
    because the UAPI sockets of all namespaces share /var/run/wireguard.
    """
    if len(ifname) > IFNAMSIZ_MAX:
        raise HarnessError(f"interface name {ifname!r} longer than {IFNAMSIZ_MAX}")
    ns.topo._wg_ifnames.add(ifname)
    sock = os.path.join(WG_SOCKET_DIR, f"{ifname}.sock")
    if os.path.exists(sock):
        raise HarnessError(f"{sock} exists: interface name {ifname!r} is not unique")
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL=os.environ.get("WG_LOG_LEVEL", "error"))
    logfile = tempfile.TemporaryFile()
    proc = ns.popen(["wireguard-go", "-f", ifname], env=env, stdout=logfile, stderr=subprocess.STDOUT)
    wg = WireguardGo(ns, ifname, proc, private_key_b64, listen_port, logfile)

    def ready() -> bool:
        if proc.poll() is not None:
            raise HarnessError(f"wireguard-go {ifname} exited {proc.returncode}: {wg.log()}")
        return os.path.exists(sock)

    Netns.wait_for(ready, timeout, what=f"{sock}")
    # The private key goes through stdin, never argv (visible in ps) or a file.
    ns.run(["wg", "set", ifname, "private-key", "/dev/stdin", "listen-port", str(listen_port)],
           input=private_key_b64 + "\n")
    for peer in peers:
        ns.run(["wg", "set", ifname, *_peer_args(peer)],
               input=(peer.preshared_key + "\n") if peer.preshared_key else None)
    for one in [address] if isinstance(address, str) else (address or []):
        ns.addr(ifname, one)
    if mtu:
        ns.run(["ip", "link", "set", ifname, "mtu", str(mtu)])
    ns.link_up(ifname)
    return wg
