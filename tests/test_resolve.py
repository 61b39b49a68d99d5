"""Endpoint host names: resolution, and looking them up again while handshakes fail (tunnel/resolve.py).

No root, no network and no wait: the protocol core runs on a virtual clock
and fails its handshakes for real (nobody answers), the resolver is a table,
and the "background thread" and "loop thread" are run by the test itself,
so every step is seen in order.
"""

from __future__ import annotations

import logging
import os
import random
import socket

import pytest

from tunnel.config import parse_config
from tunnel.interface import Interface, InterfaceError, Options
from tunnel.protocol import Device, Event
from tunnel.protocol.crypto import DH_PUBKEY, encode_key
from tunnel.resolve import RERESOLVE_INTERVAL, EndpointResolutionError, Reresolver, resolve_endpoint

STALE = ("10.43.0.9", 51820)  # where vpnhost pointed when the interface came up
MOVED = ("10.43.0.3", 51820)  # where it points now


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Resolver:
    """getaddrinfo as a table: host -> socket address, or an exception to raise."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int):
        self.calls.append((host, port))
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer


def run_now(fn) -> None:
    fn()


@pytest.fixture
def failing_peer():
    """A real core with one peer whose handshakes go nowhere, started at clock.t."""
    clock = Clock()
    device = Device(os.urandom(32), wall_epoch=0.0, rng=random.Random(8).randbytes)  # seeded timer jitter
    peer = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.44.0.2/32"], endpoint=STALE, name="srv")
    device.send_keepalive(peer, clock())  # an initiation that nobody will answer
    return device, peer, clock


def fail_until(device: Device, clock: Clock, until: float, sink) -> list[str]:
    """Run the core's timers up to UNTIL, feeding every Event to SINK; the event kinds in order."""
    kinds = []
    while True:
        deadline = device.next_deadline()
        if deadline is None or deadline > until:
            clock.t = until
            return kinds
        clock.t = deadline
        for action in device.tick(clock.t):
            if isinstance(action, Event):
                kinds.append(action.kind)
                sink(action)


# --- resolve_endpoint -----------------------------------------------------------------


def test_resolve_literals():
    assert resolve_endpoint("127.0.0.1", 51820) == ("127.0.0.1", 51820)
    assert resolve_endpoint("::1", 51820)[:2] == ("::1", 51820)
    assert len(resolve_endpoint("::1", 1)) == 4  # an IPv6 sockaddr


def test_resolve_prefers_family(monkeypatch):
    answers = [
        (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("2001:db8::1", 7, 0, 0)),
        (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.1", 7)),
    ]
    calls = []

    def fake(host, port, *args):
        calls.append((host, port))
        return answers

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert resolve_endpoint("vpn.example.com", 7, socket.AF_INET) == ("192.0.2.1", 7)
    assert resolve_endpoint("vpn.example.com", 7, socket.AF_INET6) == ("2001:db8::1", 7, 0, 0)
    assert resolve_endpoint("vpn.example.com", 7) == ("2001:db8::1", 7, 0, 0)  # the resolver's order
    answers[:] = answers[:1]
    assert resolve_endpoint("vpn.example.com", 7, socket.AF_INET) == ("2001:db8::1", 7, 0, 0)  # only choice
    assert calls[0] == ("vpn.example.com", 7)


def test_resolve_failure(monkeypatch):
    def fail(*args):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(EndpointResolutionError, match="cannot resolve 'nowhere.invalid'"):
        resolve_endpoint("nowhere.invalid", 1)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a: [(socket.AF_UNIX, 2, 0, "", "/x")])
    with pytest.raises(EndpointResolutionError, match="no IPv4 or IPv6 address"):
        resolve_endpoint("odd", 1)


# --- looking up again while handshakes fail ----------------------------------------------


def test_looked_up_again_only_after_15_seconds_of_failing_and_applied_in_the_loop(failing_peer, caplog):
    device, peer, clock = failing_peer
    resolver = Resolver({"vpnhost": MOVED})
    in_loop: list = []
    rr = Reresolver({peer.public_key: ("vpnhost", 51820)}, clock=clock, resolve=resolver,
                    background=run_now, deliver=in_loop.append, ifname="wgr")
    start = clock()
    kinds = fail_until(device, clock, start + RERESOLVE_INTERVAL, rr.on_event)
    # Retries every REKEY_TIMEOUT (+ jitter); the first one starts the count.
    assert kinds.count("handshake_retry") >= 2
    assert resolver.calls == []

    first_failure = start + 5.0  # REKEY_TIMEOUT: no retry comes sooner
    fail_until(device, clock, first_failure + RERESOLVE_INTERVAL + 6.0, rr.on_event)
    assert resolver.calls == [("vpnhost", 51820)]
    assert peer.endpoint == STALE  # not yet: answers are applied in the loop's thread
    with caplog.at_level(logging.INFO, logger="tunnel"):
        for fn in in_loop:
            fn()
    assert peer.endpoint == MOVED
    assert "wgr: peer srv: endpoint vpnhost now resolves to 10.43.0.3" in caplog.text

    # Still failing: the next lookup only another 15 s later, and the same answer changes nothing.
    in_loop.clear()
    caplog.clear()
    fail_until(device, clock, clock() + RERESOLVE_INTERVAL - 7.0, rr.on_event)
    assert len(resolver.calls) == 1
    fail_until(device, clock, clock() + 12.0, rr.on_event)
    assert len(resolver.calls) == 2
    for fn in in_loop:
        fn()
    assert peer.endpoint == MOVED and "now resolves" not in caplog.text


def test_other_events_start_no_count_and_literals_are_never_looked_up(failing_peer):
    device, peer, clock = failing_peer
    literal = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.44.0.3/32"], endpoint=STALE)
    resolver = Resolver({})
    rr = Reresolver({literal.public_key: STALE}, clock=clock, resolve=resolver, background=run_now,
                    deliver=run_now)
    rr.on_event(Event("handshake_completed", peer))
    clock.t += 100
    rr.on_event(Event("roamed", peer, STALE))
    rr.on_event(Event("handshake_retry", peer))  # unknown to the table: a peer added by `wg set`
    device.send_keepalive(literal, clock())
    fail_until(device, clock, clock() + 60, rr.on_event)
    assert resolver.calls == []
    assert literal.endpoint == STALE


def test_a_failed_lookup_is_one_log_line_and_changes_nothing(failing_peer, caplog):
    device, peer, clock = failing_peer
    resolver = Resolver({"vpnhost": EndpointResolutionError("cannot resolve 'vpnhost': no such name")})
    in_loop: list = []
    rr = Reresolver({peer.public_key: ("vpnhost", 51820)}, clock=clock, resolve=resolver,
                    background=run_now, deliver=in_loop.append, ifname="wgr")
    with caplog.at_level(logging.INFO, logger="tunnel"):
        fail_until(device, clock, clock() + 30, rr.on_event)
    assert len(resolver.calls) == 1 and in_loop == []
    assert peer.endpoint == STALE
    lines = [r.getMessage() for r in caplog.records if "resolve" in r.getMessage()]
    assert lines == ["wgr: cannot resolve endpoint vpnhost: cannot resolve 'vpnhost': no such name"]


def test_a_peer_removed_before_the_answer_is_left_alone_and_ipv6_answers_are_socket_addresses(failing_peer):
    device, peer, clock = failing_peer
    resolver = Resolver({"vpnhost": ("fd43::3", 51820, 0, 0, "extra")})
    in_loop: list = []
    rr = Reresolver({peer.public_key: ("vpnhost", 51820)}, clock=clock, resolve=resolver,
                    background=run_now, deliver=in_loop.append)
    fail_until(device, clock, clock() + 30, rr.on_event)
    assert len(in_loop) == 1
    device.remove_peer(peer.public_key)
    in_loop[0]()
    assert peer.endpoint == STALE

    other = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.44.0.4/32"], endpoint=STALE)
    rr.hosts[other.public_key] = ("vpnhost", 51820)
    rr.on_event(Event("handshake_retry", other))
    clock.t += RERESOLVE_INTERVAL
    rr.on_event(Event("handshake_retry", other))
    in_loop[-1]()
    assert other.endpoint == ("fd43::3", 51820, 0, 0)  # as recvmsg reports IPv6 sources


# --- the interface's wiring ------------------------------------------------------------------


class LoopStub:
    """What Interface asks of its data plane for re-resolution: run a call in the loop's thread."""

    def __init__(self):
        self.calls: list = []

    def call_soon_threadsafe(self, fn) -> None:
        self.calls.append(fn)


def test_interface_looks_endpoints_up_with_its_injected_clock_and_resolver(failing_peer, tmp_path, caplog):
    device, peer, clock = failing_peer
    text = (f"[Interface]\nPrivateKey = {encode_key(os.urandom(32))}\n\n"
            f"[Peer]\nPublicKey = {encode_key(peer.public_key)}\nAllowedIPs = 10.44.0.2/32\n"
            "Endpoint = vpnhost:51820\n")
    resolver = Resolver({"vpnhost": MOVED, "gone.invalid": EndpointResolutionError("no such name")})
    iface = Interface(parse_config(text, name="wgr0"),
                      Options(state_dir=str(tmp_path), clock=clock, resolver=resolver, background=run_now))
    # Bring-up resolves each Endpoint once through the same resolver.
    assert iface._resolve(("vpnhost", 51820)) == MOVED
    with pytest.raises(InterfaceError, match="cannot resolve endpoint gone.invalid: no such name"):
        iface._resolve(("gone.invalid", 1))
    resolver.calls.clear()

    iface.plane = LoopStub()
    with caplog.at_level(logging.DEBUG, logger="tunnel"):
        fail_until(device, clock, clock() + 30, iface._on_event)
    assert "peer srv: handshake_retry" in caplog.text  # every event is still logged
    assert resolver.calls == [("vpnhost", 51820)]
    assert len(iface.plane.calls) == 1 and peer.endpoint == STALE
    iface.plane.calls[0]()
    assert peer.endpoint == MOVED
    assert not os.listdir(tmp_path)  # nothing was brought up, nothing journalled


def test_a_peer_with_several_endpoints_is_looked_up_under_the_one_it_uses(failing_peer):
    device, peer, clock = failing_peer
    resolver = Resolver({"vpnhost": MOVED, "vpn2": ("10.43.0.9", 51820)})
    in_loop: list = []
    rr = Reresolver({peer.public_key: ("vpnhost", 51820)}, clock=clock, resolve=resolver,
                    background=run_now, deliver=in_loop.append)
    fail_until(device, clock, clock() + 30, rr.on_event)
    assert resolver.calls == [("vpnhost", 51820)] and len(in_loop) == 1
    rr.follow(peer.public_key, ("vpn2", 51820))  # fail-over moved it before the answer came
    in_loop.pop()()
    assert peer.endpoint == STALE  # the answer for the endpoint it left is dropped
    fail_until(device, clock, clock() + 30, rr.on_event)
    assert resolver.calls[-1] == ("vpn2", 51820)
    in_loop.pop()()
    assert peer.endpoint == ("10.43.0.9", 51820)
    rr.follow(peer.public_key, ("192.0.2.1", 51820))  # a literal: nothing to look up
    fail_until(device, clock, clock() + 60, rr.on_event)
    assert resolver.calls[-1] == ("vpn2", 51820) and in_loop == []
