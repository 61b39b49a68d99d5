"""The loop's life around the data: it ends when its TUN's interface is deleted, and runs periodic work.

A TUN whose interface is gone (`ip link del`, or the namespace it was moved
to was deleted) is readable and reads EBADFD on Linux; the fakes' MemoryTun
does the same after `delete()`. The namespace tests show the real one.
"""

from __future__ import annotations

import threading

from ..helpers.packets import ipv4_packet
from ..helpers.planes import PlanePair, vnet_plain


def test_a_deleted_tun_ends_the_loop_and_says_so():
    pair = PlanePair()
    a, b = pair.sides
    try:
        a.tun.inject(vnet_plain(ipv4_packet(a.address4, b.address4, b"before")))
        pair.settle()
        assert len(b.packets()) == 1 and not a.plane.tun_gone
        a.tun.delete()
        a.plane.service([a.tun.fd], pair.clock.now)
        assert a.plane.tun_gone and a.plane._stop
        # The other side's loop goes on as before.
        assert not b.plane.tun_gone
    finally:
        pair.close()


def test_run_returns_when_the_tun_is_deleted():
    pair = PlanePair()
    a, _ = pair.sides
    try:
        thread = threading.Thread(target=a.plane.run, daemon=True)
        thread.start()
        a.tun.delete()
        thread.join(10)
        assert not thread.is_alive() and a.plane.tun_gone
    finally:
        pair.close()


def test_periodic_work_runs_in_the_loop_at_its_interval():
    pair = PlanePair()
    a, _ = pair.sides
    try:
        calls: list[float] = []
        a.plane.every(1.0, calls.append)
        start = pair.clock.now
        for step in range(1, 36):  # 3.5 s in turns of 0.1 s
            pair.clock.now = start + step / 10
            a.plane.service([], pair.clock.now)
        assert [round(t - start, 1) for t in calls] == [1.0, 2.0, 3.0]
    finally:
        pair.close()


def _udp4(src: str, dst: str, sport: int, dport: int, payload: bytes = b"\x04\0\0\0" + bytes(40)) -> bytes:
    import ipaddress

    from ..helpers.packets import udp_dgram

    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    return ipv4_packet(src, dst, udp_dgram(s, d, payload, sport=sport, dport=dport))


def _udp6(src: str, dst: str, sport: int, dport: int, payload: bytes = b"\x04\0\0\0" + bytes(40)) -> bytes:
    import ipaddress

    from ..helpers.packets import ipv6_packet, udp_dgram

    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    return ipv6_packet(src, dst, udp_dgram(s, d, payload, sport=sport, dport=dport))


def test_our_own_datagram_routed_back_into_the_tunnel_is_dropped_not_sealed_again():
    """The classic loop: a peer's endpoint inside its AllowedIPs with no policy routing (the kernel says ELOOP)."""
    pair = PlanePair()
    a, b = pair.sides
    try:
        a.tun.inject(vnet_plain(ipv4_packet(a.address4, b.address4, b"hello")))
        pair.settle()
        assert len(b.packets()) == 1
        peer = a.peer_of(b)
        a.device.allowed_ips.insert("192.0.2.0/24", peer)  # b's endpoint, 192.0.2.2:51820, is routed to b
        a.device.allowed_ips.insert("2001:db8::/32", peer)
        port = a.bind.port  # 51820, as the endpoint's
        looped = [_udp4(a.address4, "192.0.2.2", port, 51820)]
        others = [_udp4(a.address4, "192.0.2.2", port + 1, 51820),   # another program's port
                  _udp4(a.address4, "192.0.2.2", port, 9),           # ours, but not to the endpoint
                  _udp4(a.address4, "192.0.2.3", port, 51820)]       # ours, to another address
        for packet in looped + others:
            a.tun.inject(vnet_plain(packet))
        pair.settle()
        assert a.counters.drops["routing_loop"] == 1
        assert len(b.packets()) == len(others)
        # The same over IPv6, with the endpoint there.
        peer.endpoint = ("2001:db8::2", 51820, 0, 0)
        a.tun.inject(vnet_plain(_udp6(a.address6, "2001:db8::2", port, 51820)))
        a.tun.inject(vnet_plain(_udp6(a.address6, "2001:db8::3", port, 51820)))
        a.plane.service([a.tun.fd], pair.clock.now)
        assert a.counters.drops["routing_loop"] == 2
    finally:
        pair.close()
