"""The userspace API (tunnel/uapi.py) on an in-memory Device, and the control socket's I/O rules."""

from __future__ import annotations

import base64
import errno
import json
import os
import select
import socket
import threading

import pytest

from tests.helpers.daemon import serving
from tunnel import control, show, uapi
from tunnel.dataplane import Stats
from tunnel.protocol import Device
from tunnel.protocol.crypto import DH_PUBKEY


def _key() -> bytes:
    return os.urandom(32)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def ctx():
    private = _key()
    device = Device(private, wall_epoch=1_700_000_000.0)
    performed: list = []
    c = uapi.Context(device=device, private_key=private, listen_port=51820, fwmark=0, now=Clock(),
                     perform=lambda actions, now: performed.extend(actions), stats=Stats(), name="wgt")
    c.performed = performed  # type: ignore[attr-defined]
    return c


def _set(ctx, *lines: str) -> str:
    return uapi.handle("\n".join(["set=1", *lines]), ctx)


def test_get_reports_interface_and_peers_as_wg_expects(ctx):
    pub, psk = DH_PUBKEY(_key()), _key()
    peer = ctx.device.add_peer(pub, preshared_key=psk, allowed_ips=["10.0.0.2/32", "fd00::2/128"],
                               endpoint=("192.0.2.7", 4000), persistent_keepalive=25)
    peer.rx_bytes, peer.tx_bytes, peer.last_handshake = 123, 456, 50.25
    text = uapi.handle("get=1", ctx)
    assert text.endswith("\nerrno=0\n\n")
    lines = text.split("\n")
    assert lines[:2] == [f"private_key={ctx.private_key.hex()}", "listen_port=51820"]
    assert not any(line.startswith("fwmark=") for line in lines)
    i = lines.index(f"public_key={pub.hex()}")
    assert lines[i + 1:i + 11] == [
        f"preshared_key={psk.hex()}", "protocol_version=1", "endpoint=192.0.2.7:4000",
        "last_handshake_time_sec=1700000050", "last_handshake_time_nsec=250000000",
        "tx_bytes=456", "rx_bytes=123", "persistent_keepalive_interval=25",
        "allowed_ip=10.0.0.2/32", "allowed_ip=fd00::2/128",
    ]


def test_set_adds_updates_and_removes_peers(ctx):
    pub = DH_PUBKEY(_key())
    assert _set(ctx, f"public_key={pub.hex()}", "name=alice", "endpoint=[fd00::9]:51820",
                "allowed_ip=10.0.0.0/24", "allowed_ip=10.1.0.5/32") == "errno=0\n\n"
    peer = ctx.device.peers[pub]
    assert peer.name == "alice" and peer.endpoint == ("fd00::9", 51820, 0, 0)
    assert ctx.device.allowed_ips.prefixes(peer) == ["10.0.0.0/24", "10.1.0.5/32"]
    # Adding allowed IPs keeps the old ones; replace_allowed_ips drops them first.
    assert _set(ctx, f"public_key={pub.hex()}", "allowed_ip=10.2.0.0/16") == "errno=0\n\n"
    assert len(ctx.device.allowed_ips.prefixes(peer)) == 3
    assert _set(ctx, f"public_key={pub.hex()}", "replace_allowed_ips=true", "allowed_ip=10.3.0.0/16") == "errno=0\n\n"
    assert ctx.device.allowed_ips.prefixes(peer) == ["10.3.0.0/16"]
    # A keepalive on a peer with an endpoint sends one at once (an initiation: no session yet).
    assert _set(ctx, f"public_key={pub.hex()}", "persistent_keepalive_interval=25") == "errno=0\n\n"
    assert peer.persistent_keepalive == 25 and ctx.performed
    assert _set(ctx, f"public_key={pub.hex()}", "remove=true") == "errno=0\n\n"
    assert pub not in ctx.device.peers and peer.removed
    assert ctx.device.allowed_ips.lookup_ip("10.3.0.1") is None
    # Removing an unknown peer is not an error (as wireguard-go).
    assert _set(ctx, f"public_key={pub.hex()}", "remove=true") == "errno=0\n\n"


def test_update_only_does_not_create(ctx):
    pub = DH_PUBKEY(_key())
    assert _set(ctx, f"public_key={pub.hex()}", "update_only=true", "allowed_ip=10.0.0.1/32") == "errno=0\n\n"
    assert ctx.device.peers == {}


def test_replace_peers_keeps_listed_sessions_and_drops_the_rest(ctx):
    keep, drop = DH_PUBKEY(_key()), DH_PUBKEY(_key())
    kept = ctx.device.add_peer(keep, allowed_ips=["10.0.0.2/32"], preshared_key=_key())
    ctx.device.add_peer(drop, allowed_ips=["10.0.0.3/32"])
    assert _set(ctx, f"private_key={ctx.private_key.hex()}", "listen_port=51820", "replace_peers=true",
                f"public_key={keep.hex()}", "allowed_ip=10.0.0.9/32") == "errno=0\n\n"
    assert list(ctx.device.peers) == [keep]
    assert ctx.device.peers[keep] is kept  # same Peer object: its session survives
    assert ctx.device.allowed_ips.prefixes(kept) == ["10.0.0.9/32"]
    assert kept.handshake.preshared_key == bytes(32)  # setconf without a PSK means none


@pytest.mark.parametrize("lines, code", [
    (["public_key=zz"], errno.EINVAL),
    (["public_key=" + "00" * 31], errno.EINVAL),
    (["bogus=1"], errno.EINVAL),
    (["listen_port=4000"], errno.EOPNOTSUPP),
    (["fwmark=7"], errno.EOPNOTSUPP),
    (["private_key=" + "11" * 32], errno.EOPNOTSUPP),
    (["no equals sign"], errno.EPROTO),
    (["listen_port=70000"], errno.EINVAL),
])
def test_bad_set_is_refused_whole_with_negative_errno(ctx, lines, code):
    first = DH_PUBKEY(_key())
    # A valid peer first: nothing of the request may be applied.
    answer = _set(ctx, f"public_key={first.hex()}", "allowed_ip=10.0.0.1/32", *lines) if not lines[0].startswith(
        ("listen_port", "fwmark", "private_key")) else _set(ctx, *lines, f"public_key={first.hex()}")
    assert answer == f"errno=-{code}\n\n"
    assert ctx.device.peers == {}


def test_a_peer_with_our_own_key_is_ignored_as_wireguard_does(ctx):
    other = DH_PUBKEY(_key())
    answer = _set(ctx, f"public_key={ctx.device.public_key.hex()}", "allowed_ip=10.0.0.9/32",
                  f"public_key={other.hex()}", "allowed_ip=10.0.0.8/32")
    assert answer == "errno=0\n\n"
    assert list(ctx.device.peers) == [other]


@pytest.mark.parametrize("bad", ["1.2.3.4", "host.example:51820", "[fd00::1]:99999", "1.2.3.4:x"])
def test_endpoints_must_be_numeric_ip_port(ctx, bad):
    pub = DH_PUBKEY(_key())
    assert _set(ctx, f"public_key={pub.hex()}", f"endpoint={bad}") == f"errno=-{errno.EINVAL}\n\n"


@pytest.mark.parametrize("text, sockaddr, shown", [
    ("192.0.2.1:51820", ("192.0.2.1", 51820), "192.0.2.1:51820"),
    ("[::ffff:192.0.2.1]:51820", ("192.0.2.1", 51820), "192.0.2.1:51820"),  # the IPv4 peer it names
    ("[::ffff:c000:201]:51820", ("192.0.2.1", 51820), "192.0.2.1:51820"),
    ("[fd00::1]:51820", ("fd00::1", 51820, 0, 0), "[fd00::1]:51820"),
    ("[fe80::1%lo]:51820", ("fe80::1", 51820, 0, 1), "[fe80::1%lo]:51820"),  # the scope kept, by name
    ("[fe80::1%1]:51820", ("fe80::1", 51820, 0, 1), "[fe80::1%lo]:51820"),
])
def test_endpoint_forms_wg_sends(text, sockaddr, shown):
    assert uapi.parse_endpoint(text) == sockaddr
    assert uapi.format_endpoint(sockaddr) == shown


def test_a_scope_no_interface_has_is_refused(ctx):
    pub = DH_PUBKEY(_key())
    assert _set(ctx, f"public_key={pub.hex()}", "endpoint=[fe80::1%nosuchif0]:1") == f"errno=-{errno.EINVAL}\n\n"


def test_unknown_command_and_extended_status(ctx):
    assert uapi.handle("frob=1", ctx) == f"errno=-{errno.EINVAL}\n\n"
    ctx.device.add_peer(DH_PUBKEY(_key()), allowed_ips=["10.0.0.2/32"], name="bob")
    ctx.stats.rx_packets = 5
    ctx.stats.drops["replayed"] += 2
    answer = uapi.handle("get=tunnel", ctx)
    assert answer.endswith("\nerrno=0\n\n")
    state = json.loads(answer.split("\n")[0][len("json="):])
    assert state["interface"] == "wgt" and state["listen_port"] == 51820
    assert state["peers"][0]["name"] == "bob" and state["peers"][0]["allowed_ips"] == ["10.0.0.2/32"]
    assert state["counters"]["rx_packets"] == 5 and state["counters"]["drops"] == {"replayed": 2}
    assert ctx.private_key.hex() not in answer


# --- the socket ---------------------------------------------------------------------


@pytest.fixture
def served(ctx, tmp_path):
    server = control.ControlServer("wgt", lambda text: uapi.handle(text, ctx), str(tmp_path))
    yield server, ctx, str(tmp_path)
    server.close()


def _connect(directory: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(control.socket_path("wgt", directory))
    s.settimeout(5)
    return s


def test_socket_is_private_and_removed_on_close(served):
    server, _, directory = served
    path = control.socket_path("wgt", directory)
    assert os.stat(path).st_mode & 0o777 == 0o600
    server.close()
    assert not os.path.exists(path)
    server.close = lambda: None  # the fixture's second close


def test_a_live_socket_is_not_taken_over_but_a_stale_one_is(served, tmp_path):
    _, ctx, directory = served
    with pytest.raises(control.ControlError, match="in use"):
        control.ControlServer("wgt", lambda t: "", directory)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(control.socket_path("old", directory))
    stale.close()  # the file stays, nobody listens: a crashed run's leftover
    fresh = control.ControlServer("old", lambda t: "errno=0\n\n", directory)
    fresh.close()


def test_requests_are_answered_without_blocking_on_a_slow_client(served):
    server, ctx, directory = served
    slow = _connect(directory)
    slow.sendall(b"get=1\n")  # half a request, never finished
    server.on_readable()
    quick = _connect(directory)
    quick.sendall(b"get=1\n\nget=tunnel\n\n")  # two requests on one connection
    server.on_readable()
    server.on_readable()
    data = b""
    while data.count(b"errno=0\n\n") < 2:
        data += quick.recv(65536)
    assert data.startswith(b"private_key=") and b"json=" in data
    slow.close()
    quick.close()
    server.on_readable()
    assert server.conns == {}


def test_a_client_that_never_reads_does_not_stall_the_server(served):
    server, ctx, directory = served
    for i in range(300):  # a large answer
        ctx.device.add_peer(DH_PUBKEY(_key()), allowed_ips=[f"10.{i // 250}.{i % 250}.1/32"])
    greedy = _connect(directory)
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    greedy.sendall(b"get=1\n\n" * 20)
    for _ in range(5):
        server.on_readable()  # returns at once although the answer does not fit
    assert any(c.outbuf for c in server.conns.values())
    other = _connect(directory)
    other.sendall(b"set=1\n\n")
    server.on_readable()  # accepts
    server.on_readable()  # reads and answers
    assert other.recv(100) == b"errno=0\n\n"
    greedy.close()
    other.close()


def test_syncconf_of_ten_thousand_peers_fits_in_one_request(served):
    """`wg syncconf` sends every peer in one request: 10,000 are ~1.3 MB (issue 9, item 14)."""
    server, ctx, directory = served
    lines = [f"public_key={DH_PUBKEY(_key()).hex()}\nreplace_allowed_ips=true\nallowed_ip=10.{i // 250}.{i % 250}.1/32"
             for i in range(10000)]
    request = ("set=1\n" + "\n".join(lines) + "\n\n").encode()
    assert len(request) > 1 << 20
    s = _connect(directory)
    s.settimeout(None)  # the sender thread blocks; this one looks before it reads

    def send() -> None:
        try:
            s.sendall(request)
        except OSError:  # the server hung up: the answer below says so
            pass

    sender = threading.Thread(target=send)
    sender.start()
    answer = b""
    while not answer.endswith(b"\n\n"):
        server.on_readable()
        if not select.select([s], [], [], 0.01)[0]:
            continue
        chunk = s.recv(100)
        if not chunk:
            break  # closed without an answer
        answer += chunk
    sender.join()
    assert answer == b"errno=0\n\n"
    assert len(ctx.device.peers) == 10000
    s.close()
    # A question about one of them answers with that one alone.
    one = next(iter(ctx.device.peers))
    state = json.loads(uapi.handle(f"get=tunnel\npublic_key={one.hex()}", ctx).split("\n")[0][len("json="):])
    assert [p["public_key"] for p in state["peers"]] == [base64.b64encode(one).decode()]


def test_oversized_request_closes_the_connection(served, monkeypatch):
    server, _, directory = served
    monkeypatch.setattr(control, "MAX_REQUEST", 1000)
    s = _connect(directory)
    server.on_readable()
    s.sendall(b"set=1\n" + b"x" * 2000)
    server.on_readable()
    assert server.conns == {}
    assert s.recv(10) == b""


def test_client_helpers(served):
    server, ctx, directory = served
    pub = DH_PUBKEY(_key())
    ctx.device.add_peer(pub, allowed_ips=["10.0.0.2/32", "10.0.0.3/32"])
    with serving(server):
        answer = control.request("wgt", "get=1", directory)
    assert control.answer_errno(answer) == 0
    iface, peers = control.parse_get(answer)
    assert iface["listen_port"] == "51820"
    assert peers[0]["public_key"] == pub.hex() and peers[0]["allowed_ips"] == ["10.0.0.2/32", "10.0.0.3/32"]
    assert control.answer_errno("errno=-22\n\n") == errno.EINVAL
    assert control.answer_errno("garbage") == errno.EPROTO
    with pytest.raises(control.ControlError, match="not running"):
        control.request("nothere", "get=1", directory)


def test_show_renders_names_counters_and_never_a_private_key(ctx):
    pub = DH_PUBKEY(_key())
    peer = ctx.device.add_peer(pub, allowed_ips=["10.0.0.2/32"], endpoint=("192.0.2.1", 5000), name="alice",
                               persistent_keepalive=25)
    peer.rx_bytes, peer.tx_bytes, peer.last_handshake = 3 * 1024 * 1024, 512, 10.0
    ctx.stats.drops["replayed"] = 2
    assert "endpoint switches" not in show.render(uapi.extended_status(ctx), now=1_700_000_010.0)
    ctx.stats.endpoint_switches = 3
    state = uapi.extended_status(ctx)
    assert state["counters"]["endpoint_switches"] == 3
    text = show.render(state, now=1_700_000_010.0 + 125)
    assert "  endpoint switches (fail-over): 3\n" in text
    assert "peer: " in text and "(alice)" in text
    assert "  endpoint: 192.0.2.1:5000" in text and "  allowed ips: 10.0.0.2/32" in text
    assert "  latest handshake: 2 minutes, 5 seconds ago" in text
    assert "  transfer: 3.00 MiB received, 512 B sent" in text
    assert "drops: replayed 2" in text
    assert ctx.private_key.hex() not in text
    assert show.ago(0, 5.0) == "never"


# --- an interface whose key, port and fwmark change while running (tunnel-wg) --------


class FakeSockets:
    """What uapi.Live drives: the data plane's sockets. Port 4242 is "taken"."""

    def __init__(self):
        self.port = 51820
        self.fwmark = 0
        self.calls: list[tuple] = []

    def rebind(self, port: int) -> int:
        self.calls.append(("rebind", port))
        if port == 4242:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        self.port = port or 40000
        return self.port

    def set_fwmark(self, mark: int) -> None:
        self.calls.append(("fwmark", mark))
        self.fwmark = mark


@pytest.fixture
def live():
    device = Device(None, wall_epoch=1_700_000_000.0)
    sockets = FakeSockets()
    c = uapi.Context(device=device, private_key=None, listen_port=51820, fwmark=0, now=Clock(), stats=Stats(),
                     name="wgt", live=uapi.Live(sockets.rebind, sockets.set_fwmark))
    c.sockets = sockets  # type: ignore[attr-defined]
    return c


def test_without_a_key_get_has_no_private_key_line(live):
    text = uapi.handle("get=1", live)
    assert text == "listen_port=51820\nerrno=0\n\n"
    assert json.loads(uapi.handle("get=tunnel", live)[5:].split("\n")[0])["public_key"] is None


def test_a_key_is_taken_clamped_as_wg_shows_it_and_removed_with_zeros(live):
    raw = bytes([0xFF]) + _key()[1:31] + bytes([0xFF])  # low bits of the first byte and the top bit set
    assert _set(live, f"private_key={raw.hex()}") == "errno=0\n\n"
    clamped = bytes([0xF8]) + raw[1:31] + bytes([0x7F])
    assert live.device.private_key == clamped and live.private_key == clamped
    assert uapi.handle("get=1", live).startswith(f"private_key={clamped.hex()}\n")
    assert live.device.public_key == DH_PUBKEY(clamped)
    assert _set(live, f"private_key={'00' * 32}") == "errno=0\n\n"
    assert live.device.private_key is None and live.device.public_key is None
    assert not uapi.handle("get=1", live).startswith("private_key=")


def test_a_new_key_removes_the_peer_that_has_its_public_key(live):
    key = _key()
    pub = DH_PUBKEY(key)
    assert _set(live, f"public_key={pub.hex()}") == "errno=0\n\n"
    assert list(live.device.peers) == [pub]
    assert _set(live, f"private_key={key.hex()}") == "errno=0\n\n"
    assert live.device.peers == {}
    # ... and a peer with it is ignored from then on.
    assert _set(live, f"public_key={pub.hex()}") == "errno=0\n\n"
    assert live.device.peers == {}


def test_listen_port_and_fwmark_change_the_sockets(live):
    assert _set(live, "listen_port=51821", "fwmark=51820") == "errno=0\n\n"
    assert live.sockets.calls == [("rebind", 51821), ("fwmark", 51820)]
    text = uapi.handle("get=1", live)
    assert "listen_port=51821\nfwmark=51820\n" in text
    # What wg setconf sends again unchanged moves nothing.
    assert _set(live, "listen_port=51821", "fwmark=51820") == "errno=0\n\n"
    assert len(live.sockets.calls) == 2
    assert _set(live, "listen_port=0", "fwmark=0") == "errno=0\n\n"
    assert live.listen_port == 40000 and live.fwmark == 0


def test_a_port_in_use_refuses_the_whole_request(live):
    pub = DH_PUBKEY(_key())
    key = _key()
    answer = _set(live, f"private_key={key.hex()}", "listen_port=4242", "fwmark=7", f"public_key={pub.hex()}")
    assert answer == f"errno=-{errno.EADDRINUSE}\n\n"
    assert live.listen_port == 51820 and live.fwmark == 0 and live.private_key is None
    assert live.device.peers == {} and live.sockets.calls == [("rebind", 4242)]


def test_allowed_ips_parse_and_print_as_ipaddress_does():
    import ipaddress
    import random

    rnd = random.Random(14)
    texts = ["0.0.0.0/0", "::/0", "10.1.2.3/32", "10.1.2.3", "fd00::1", "::ffff:1.2.3.4/128", "1.2.3.4/24",
             "fe80::1:2:3:4/64", "2001:db8::/32", "255.255.255.255/31"]
    for _ in range(2000):
        if rnd.random() < 0.5:
            texts.append(f"{ipaddress.IPv4Address(rnd.getrandbits(32))}/{rnd.randint(0, 32)}")
        else:
            texts.append(f"{ipaddress.IPv6Address(rnd.getrandbits(128))}/{rnd.randint(0, 128)}")
    for text in texts:
        shown = uapi.format_prefix(*uapi._prefix(text))
        # inet_ntop writes a v4-mapped address as ::ffff:1.2.3.4, ipaddress as ::ffff:102:304: the same prefix.
        assert ipaddress.ip_network(shown) == ipaddress.ip_network(text, strict=False), text
    for bad in ["1.2.3.4/33", "fd00::/129", "1.2.3/8", "01.2.3.4/8", "x/1", "1.2.3.4/-1"]:
        with pytest.raises(uapi.UapiError):
            uapi._prefix(bad)


def test_a_big_set_request_round_trips(live):
    """The selftest's 255 x 256 x 2 allowed IPs for one peer, in one request (measured: well under 2 s)."""
    pub = DH_PUBKEY(_key())
    lines = [f"public_key={pub.hex()}", "replace_allowed_ips=true"]
    for a in range(1, 256):
        for b in range(256):
            lines += [f"allowed_ip={a}.{b}.0.0/16", f"allowed_ip={a}::{b:x}/128"]
    assert _set(live, *lines) == "errno=0\n\n"
    got = [line for line in uapi.handle("get=1", live).split("\n") if line.startswith("allowed_ip=")]
    assert len(got) == 255 * 256 * 2
    assert got[0] == "allowed_ip=1.0.0.0/16" and got[-1] == "allowed_ip=255::ff/128"
