"""Hardening of the receive path and the clock, through the data plane over fakes (issue: review
against the kernel and wireguard-go)."""

from __future__ import annotations

from tunnel.protocol.constants import REKEY_TIMEOUT

from ..helpers.packets import ipv4_packet
from ..helpers.planes import PlanePair, Side, vnet_plain


def _tai64n_seconds(ts: bytes) -> int:
    return int.from_bytes(ts[:8], "big") - (1 << 62) - 10


def test_flood_of_valid_cookie_initiations_is_rate_limited_per_source():
    pair = PlanePair()
    a, b = pair.sides
    try:
        b.plane._under_load_until = pair.clock.now + 1000  # b is under load for the whole test
        a.tun.inject(vnet_plain(ipv4_packet(a.address4, b.address4, b"x")))
        pair.settle()  # a's initiation is answered with a cookie reply
        assert a.peer_of(b).cookie.has_cookie and b.counters.cookie_replies == 1
        peer = a.peer_of(b)
        for _ in range(300):
            peer.last_sent_initiation = None
            a.plane.perform(a.device.initiate(peer, pair.clock.now), pair.clock.now)
        pair.settle()
        assert b.counters.drops["ratelimited"] >= 300 - 5
    finally:
        pair.close()


def test_initiation_timestamps_follow_the_wall_clock_after_ntp_corrects_it():
    pair = PlanePair()
    a, b = pair.sides
    try:
        a.tun.inject(vnet_plain(ipv4_packet(a.address4, b.address4, b"before restart")))
        pair.settle()
        assert len(b.packets()) == 1
        seen = _tai64n_seconds(b.peer_of(a).handshake.latest_timestamp)
        assert abs(seen - pair.clock.wall()) <= 1
        # a restarts on a machine whose clock is an hour behind (NTP not synced yet).
        a.close()
        pair.clock.wall_offset = -3600.0
        a2 = Side("a", 1, pair.net, pair.clock, 0)
        assert a2.device.public_key == a.device.public_key
        a2.device.add_peer(b.device.public_key, allowed_ips=[f"{b.address4}/32"], endpoint=b.endpoint)
        pair.a = a2
        a2.tun.inject(vnet_plain(ipv4_packet(a2.address4, b.address4, b"after restart")))
        pair.settle()
        assert b.packets() == [] and b.counters.drops["replayed_timestamp"] == 1
        # NTP corrects the clock; the next retry carries the corrected time and is accepted.
        pair.clock.wall_offset = 0.0
        pair.advance(REKEY_TIMEOUT + 1)
        assert [p[20:] for p in b.packets()] == [b"after restart"]
        assert _tai64n_seconds(b.peer_of(a2).handshake.latest_timestamp) >= seen
    finally:
        pair.close()
