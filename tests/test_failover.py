"""Fail-over between a peer's endpoints: the decision on a fake clock, then the whole of it over in-memory planes.

    client 192.0.2.1 ---- gw1 192.0.2.2:51820   one key, sessions of their own
                     \\--- gw2 192.0.2.3:51820   (two gateways of one server)

The Chooser is fed what tunnel/failover.py reads from a peer (heard: bytes
received plus handshakes; awaiting: Peer.awaiting_reply) and its decisions
are checked tick by tick. Then the Failover drives a real client DataPlane
and two gateway DataPlanes on tunnel.dataplane.fakes: gw1 goes silent ->
after 15 s the client is on gw2 and its pings arrive there; probes of gw1
once a minute, not more; gw1 back -> the next probe's answer brings the
client back; a stray packet from gw2's old session does not move it.
"""

from __future__ import annotations

import logging

import pytest

from tests.helpers.packets import ipv4_packet
from tests.helpers.planes import Clock, PlanePair, Side
from tunnel.dataplane.fakes import MemoryNet
from tunnel.failover import PROBE_INTERVAL, SILENCE, TICK, Chooser, Endpoint, Failover, Probe, Switch, resolve_endpoints
from tunnel.protocol.constants import MESSAGE_HANDSHAKE_INITIATION
from tunnel.resolve import EndpointResolutionError

# --- the decision ---------------------------------------------------------------------


def _run(chooser: Chooser, start: float, end: float, heard, awaiting, step: float = TICK) -> list[tuple]:
    """Observe every STEP seconds from START to END; heard(t) and awaiting(t) say what the peer shows."""
    out = []
    t = start
    while t <= end + 1e-9:
        d = chooser.observe(t, heard(t), awaiting(t))
        if d is not None:
            out.append((round(t, 3), d))
        t += step
    return out


def test_nothing_moves_while_the_peer_answers_or_nothing_waits():
    c = Chooser(2, now=0.0)
    # Idle with keepalives of ours only: nothing awaits an answer.
    assert _run(c, 0, 300, heard=lambda t: 0, awaiting=lambda t: False) == []
    # Data always waiting, but the peer answers every 10 s (its passive keepalive).
    assert _run(c, 300, 600, heard=lambda t: int(t // 10), awaiting=lambda t: True) == []
    assert c.index == 0


def test_fifteen_seconds_of_silence_while_waiting_moves_to_the_next_cyclically():
    c = Chooser(3, now=0.0)
    decisions = _run(c, 0, 50, heard=lambda t: 7, awaiting=lambda t: t >= 2.0)
    assert decisions == [(2.0 + SILENCE, Switch(1)), (2.0 + 2 * SILENCE + TICK, Switch(2)),
                         (2.0 + 3 * SILENCE + 2 * TICK, Switch(0))]
    assert c.index == 0


def test_waiting_that_pauses_still_counts_until_something_is_heard():
    c = Chooser(2, now=0.0)
    # The core's new-handshake timer fires and re-arms: a moment without `awaiting` does not reset the wait.
    assert _run(c, 0, 20, heard=lambda t: 1, awaiting=lambda t: not 5.0 <= t < 6.0) == [(SILENCE, Switch(1))]
    c = Chooser(2, now=0.0)
    assert _run(c, 0, 20, heard=lambda t: 1 if t < 14.0 else 2, awaiting=lambda t: True) == []


def test_one_endpoint_never_switches():
    assert _run(Chooser(1, now=0.0), 0, 100, heard=lambda t: 0, awaiting=lambda t: True) == []


def test_probes_of_the_first_at_most_once_a_minute_after_leaving_it():
    c = Chooser(2, now=0.0)
    assert _run(c, 0, SILENCE, heard=lambda t: 0, awaiting=lambda t: True) == [(SILENCE, Switch(1))]
    left = SILENCE
    probes = _run(c, left + TICK, left + 3 * PROBE_INTERVAL, heard=lambda t: int(t), awaiting=lambda t: False)
    assert probes == [(left + PROBE_INTERVAL, Probe(0)), (left + 2 * PROBE_INTERVAL, Probe(0)),
                      (left + 3 * PROBE_INTERVAL, Probe(0))]
    # A probe the core refused (a handshake in flight) is tried again at the next look.
    now = left + 4 * PROBE_INTERVAL
    assert c.observe(now, 10_000, False) == Probe(0)
    c.probe_refused()
    assert c.observe(now + TICK, 10_001, False) == Probe(0)


def test_a_roam_is_kept_only_as_the_answer_to_our_probe():
    c = Chooser(3, now=0.0)
    _run(c, 0, 2 * SILENCE + TICK, heard=lambda t: 0, awaiting=lambda t: True)
    assert c.index == 2
    assert not c.moved(1, 40.0)  # a packet from the one we left: go back to ours
    assert c.moved(2, 40.0)  # where we are
    assert c.observe(2 * SILENCE + TICK + PROBE_INTERVAL, 1, False) == Probe(0)
    t = 2 * SILENCE + TICK + PROBE_INTERVAL
    assert not c.moved(1, t + 0.1)  # not the probed one
    assert not c.moved(0, t + 6.0)  # too late to be its answer
    c.observe(t + PROBE_INTERVAL, 2, False)
    assert c.moved(0, t + PROBE_INTERVAL + 0.05) and c.index == 0
    assert c.observe(t + 3 * PROBE_INTERVAL, 3, False) is None  # on the first: no probes


def test_resolve_endpoints_keeps_order_skips_failures_and_repeats():
    table = {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.1"}

    def resolve(host, port):
        if host not in table:
            raise EndpointResolutionError(f"cannot resolve {host!r}")
        return (table[host], port)

    found, failures = resolve_endpoints([("b", 1), ("x", 1), ("a", 1), ("c", 1)], resolve)
    assert [(e.host, e.address) for e in found] == [("b", ("192.0.2.2", 1)), ("a", ("192.0.2.1", 1))]
    assert failures == ["x: cannot resolve 'x'"]


# --- the whole of it over in-memory planes ----------------------------------------------


class Gateways(PlanePair):
    """A client and two gateways with one key (both 10.0.0.2 inside the tunnel), on one fake clock."""

    def __init__(self, seed=0):
        self.net = MemoryNet()
        self.clock = Clock()
        self.client = Side("client", 1, self.net, self.clock, seed)
        self.gw1 = Side("gw", 2, self.net, self.clock, seed)  # the same name: the same key
        self.gw2 = Side("gw", 3, self.net, self.clock, seed)
        assert self.gw1.device.public_key == self.gw2.device.public_key
        self.peer = self.client.device.add_peer(self.gw1.device.public_key, allowed_ips=["10.0.0.2/32"],
                                                endpoint=self.gw1.endpoint, name="office")
        for gw in (self.gw1, self.gw2):
            gw.device.add_peer(self.client.device.public_key, allowed_ips=["10.0.0.1/32"], name="client")
        self.failover = Failover(self.client.device, self.client.counters, ifname="wgc")
        self.failover.add(self.peer, [Endpoint("192.0.2.2", 51820, self.gw1.endpoint),
                                      Endpoint("192.0.2.3", 51820, self.gw2.endpoint)], self.clock.now)
        self.failover.attach(self.client.plane)
        self.client.plane.on_event = lambda ev: (self.client.events.append(ev), self.failover.on_event(ev))
        self.dead: set[tuple] = set()
        self.net.impair = lambda datagrams, src, dst: [] if {src[:2], dst[:2]} & self.dead else datagrams

    @property
    def sides(self):
        return (self.client, self.gw1, self.gw2)

    def run(self, seconds: float, ping_every: float = 1.0) -> None:
        """SECONDS of a ping from the client every PING_EVERY, the fail-over looking every TICK."""
        end = self.clock.now + seconds
        next_ping = self.clock.now
        while self.clock.now < end - 1e-9:
            if self.clock.now >= next_ping - 1e-9:
                self.client.tun.inject_plain(ipv4_packet("10.0.0.1", "10.0.0.2", b"ping"))
                next_ping += ping_every
            self.advance(TICK)
            self.failover.tick()

    def probes_to(self, side: Side) -> int:
        return sum(1 for dst, d in self.client.bind.sent if dst[:2] == side.endpoint and
                   d[0] == MESSAGE_HANDSHAKE_INITIATION)


@pytest.fixture
def gws():
    g = Gateways(seed=5)
    yield g
    g.close()


def test_the_client_moves_to_gw2_when_gw1_goes_quiet_and_comes_back_when_it_answers(gws, caplog):
    caplog.set_level(logging.INFO, logger="tunnel")
    gws.run(3)
    assert gws.gw1.packets() and gws.peer.endpoint == gws.gw1.endpoint
    gws.gw2.packets()
    heard = gws.peer.rx_bytes
    while gws.peer.rx_bytes == heard:  # until gw1's passive keepalive: the silence counts from there
        gws.run(TICK)

    gws.dead.add(gws.gw1.endpoint)  # gw1 is gone
    died = gws.clock.now
    gws.run(SILENCE - 1)
    assert gws.peer.endpoint == gws.gw1.endpoint  # not yet
    gws.run(3)
    assert gws.peer.endpoint == gws.gw2.endpoint and gws.client.counters.endpoint_switches == 1
    switched = [r for r in caplog.records if "switched to 192.0.2.3:51820 (endpoint 2 of 2)" in r.getMessage()]
    assert len(switched) == 1 and "nothing from 192.0.2.2:51820 for 15 s" in switched[0].getMessage()
    gws.run(2)
    assert len(gws.gw2.packets()) >= 2  # the pings arrive there now
    assert died + SILENCE <= gws.clock.now

    # On gw2: one probe of gw1 a minute, unanswered while gw1 is down, and the client stays.
    probes = gws.probes_to(gws.gw1)
    gws.run(PROBE_INTERVAL)
    assert gws.probes_to(gws.gw1) == probes + 1
    assert gws.peer.endpoint == gws.gw2.endpoint and gws.gw2.packets()

    gws.dead.clear()  # gw1 is back
    gws.gw1.packets()
    gws.run(PROBE_INTERVAL)
    assert gws.peer.endpoint == gws.gw1.endpoint and gws.client.counters.endpoint_switches == 2
    assert any("192.0.2.2:51820 answers again: back on it (endpoint 1 of 2)" in r.getMessage()
               for r in caplog.records)
    gws.gw2.packets()
    gws.run(3)
    assert gws.gw1.packets() and not gws.gw2.packets()

    # gw2 still holds its old session: a packet from it is opened, and the client stays on gw1.
    gws.client.events.clear()
    gws.gw2.tun.inject_plain(ipv4_packet("10.0.0.2", "10.0.0.1", b"stray"))
    gws.settle()
    assert ipv4_packet("10.0.0.2", "10.0.0.1", b"stray") in gws.client.packets()
    assert [ev.detail for ev in gws.client.events if ev.kind == "roamed"] == [gws.gw2.endpoint]  # the core's roam
    assert gws.peer.endpoint == gws.gw1.endpoint and gws.client.counters.endpoint_switches == 2
    gws.run(2)
    assert gws.gw1.packets() and not gws.gw2.packets()


def test_a_client_that_starts_while_the_first_is_down_moves_on(gws):
    gws.dead.add(gws.gw1.endpoint)
    gws.run(SILENCE + 2)
    assert gws.peer.endpoint == gws.gw2.endpoint
    gws.run(2)
    assert gws.gw2.packets() and not gws.gw1.packets()


def test_an_endpoint_set_by_hand_stands(gws, caplog):
    caplog.set_level(logging.INFO, logger="tunnel")
    gws.run(2)
    assert gws.gw1.packets()
    gws.peer.endpoint = gws.gw2.endpoint  # as `wg set IF peer KEY endpoint 192.0.2.3:51820` does
    gws.run(2)  # the next look starts a handshake there: gw1's session is no use to gw2
    assert gws.peer.endpoint == gws.gw2.endpoint and gws.failover.watched[gws.peer.public_key].chooser.index == 1
    assert gws.client.counters.endpoint_switches == 0 and gws.gw2.packets()
    assert "set to 192.0.2.3:51820 (endpoint 2 of 2)" in caplog.text
    gws.run(2 * SILENCE)  # gw1's late passive keepalive does not take it back; gw2 answers
    assert gws.peer.endpoint == gws.gw2.endpoint and gws.client.counters.endpoint_switches == 0
    assert gws.gw2.packets() and not gws.gw1.packets()


def test_a_removed_peer_is_forgotten(gws):
    gws.run(1)
    gws.client.device.remove_peer(gws.peer.public_key)
    gws.failover.tick()
    assert gws.failover.watched == {}
