"""The per-source handshake limiter (kernel ratelimiter.c / wireguard-go ratelimiter) and where it applies."""

from __future__ import annotations

from tunnel.protocol.constants import RATELIMIT_BURST, RATELIMIT_PER_SECOND
from tunnel.protocol.ratelimiter import RateLimiter, source_key

from .pair import make_pair


def test_burst_then_the_rate():
    rl = RateLimiter()
    src = ("198.51.100.7", 4000)
    assert [rl.allow(src, 10.0) for _ in range(RATELIMIT_BURST + 3)] == [True] * RATELIMIT_BURST + [False] * 3
    # One message's worth of tokens comes back every 1/RATE seconds.
    step = 1.0 / RATELIMIT_PER_SECOND
    assert rl.allow(src, 10.0 + step * 1.01)
    assert not rl.allow(src, 10.0 + step * 1.02)
    # Over a long run the rate holds: ~RATE a second, not more.
    allowed = sum(rl.allow(src, 20.0 + i * 0.001) for i in range(5000))  # 5 s at 1000 msg/s
    assert RATELIMIT_PER_SECOND * 5 <= allowed <= RATELIMIT_PER_SECOND * 5 + RATELIMIT_BURST + 1


def test_sources_apart_ipv6_by_64_and_ports_ignored():
    rl = RateLimiter()
    for _ in range(RATELIMIT_BURST):
        assert rl.allow(("2001:db8:1:2::1", 1), 0.0)
    assert not rl.allow(("2001:db8:1:2:ffff::9", 2), 0.0)  # the same /64
    assert rl.allow(("2001:db8:1:3::1", 1), 0.0)  # another /64
    for _ in range(RATELIMIT_BURST):
        assert rl.allow(("192.0.2.1", 1), 0.0)
    assert not rl.allow(("192.0.2.1", 2), 0.0)  # another port, the same host
    assert rl.allow(("192.0.2.2", 1), 0.0)
    assert source_key(("fe80::1%eth0", 1)) == source_key(("fe80::2", 1))


def test_table_is_bounded_and_ages_out():
    rl = RateLimiter(max_entries=100)
    for i in range(100):
        assert rl.allow((f"10.0.{i // 256}.{i % 256}", 1), 0.0)
    assert not rl.allow(("10.9.9.9", 1), 0.5)  # full: a new source is refused
    assert len(rl) == 100
    assert rl.allow(("10.9.9.9", 1), 1.5)  # a second later the idle ones are gone
    assert len(rl) == 1


def _flood_with_cookie(count: int):
    """a holds b's cookie (valid mac2) and sends `count` fresh initiations while b is under load."""
    net, a, b = make_pair(seed=7)
    net.under_load.add("b")
    a.initiate(b)  # answered with a cookie reply
    assert a.peer_of(b).cookie.has_cookie
    b.clear()
    for _ in range(count):
        a.peer_of(b).last_sent_initiation = None
        a.initiate(b, deliver=False)
    net.deliver()
    return net, a, b


def test_valid_mac2_under_load_still_limited_before_x25519():
    net, a, b = _flood_with_cookie(40)
    reasons = b.drop_reasons()
    assert reasons.count("ratelimited") == 40 - RATELIMIT_BURST
    # Only the burst reached the handshake (a response, or the per-peer flood check after X25519).
    assert len([r for r in reasons if r != "ratelimited"]) + len(
        [s for s in b.sent if s.data[0] == 2]) == RATELIMIT_BURST


def test_not_under_load_no_limit():
    net, a, b = make_pair(seed=8)
    for _ in range(20):
        a.peer_of(b).last_sent_initiation = None
        a.initiate(b, deliver=False)
    net.deliver()
    assert "ratelimited" not in b.drop_reasons()
