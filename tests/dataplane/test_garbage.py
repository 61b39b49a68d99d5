"""Garbage at the port costs an established session nothing (the data plane over fakes, no root).

Each kind of garbage of the flood benchmark (bench/flood.py) meets the
cheapest check that can refuse it: the socket filter (in the kernel; the
fakes run its program), the core's framing, the receiver index, the replay
window; only what carries a live receiver index and a fresh counter reaches
the AEAD, and only exact-size handshake messages reach the handshake queue.
Every drop is counted under its reason, and the session's own packets,
interleaved with the garbage (some of it sent from the peer's own address),
all arrive, in order.
"""

from __future__ import annotations

import random
import struct

from tunnel.dataplane.loop import KERNEL_DROPS_INTERVAL

from ..helpers.packets import ipv4_packet
from ..helpers.planes import PlanePair, vnet_plain

ATTACKER = ("203.0.113.9", 4444)


class CountingAead:
    """A keypair's receive AEAD, counting the decryptions it is asked for."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def decrypt_into(self, *args):
        self.calls += 1
        return self.inner.decrypt_into(*args)


def _session(pair: PlanePair):
    """a and b with a session; returns b's keypair (its receive AEAD counted) and a's real datagrams to b."""
    a, b = pair.sides
    a.tun.inject(vnet_plain(ipv4_packet(a.address4, b.address4, b"hello")))
    pair.settle()
    assert len(b.packets()) == 1
    kp = b.peer_of(a).current
    kp.recv_aead = CountingAead(kp.recv_aead)
    return kp


def _garbage(rnd: random.Random, index: int, seen_counter: int) -> dict[str, list[bytes]]:
    """Datagrams by the reason they must be dropped for."""
    def typed(t, n):
        return bytes([t, 0, 0, 0]) + rnd.randbytes(n - 4)

    def transport(receiver, counter, n):
        return struct.pack("<IIQ", 4, receiver, counter) + rnd.randbytes(n - 16)

    return {
        # refused by the socket filter, in the kernel
        "udp_kernel_drops": [rnd.randbytes(rnd.randrange(0, 1500)).replace(b"\x04", b"\x05") for _ in range(40)]
        + [typed(t, n) for t, n in ((4, 31), (1, 147), (2, 91), (3, 63), (4, 4))]
        + [b"\x04\0\0\x01" + rnd.randbytes(60), b""],
        # a handshake type at a wrong size: past the filter (it could be a train), refused by the core
        "malformed": [typed(t, n) for t, n in ((1, 149), (1, 600), (2, 93), (3, 65), (3, 1400))],
        # exact-size handshake messages: queued, refused for their mac1 before any other work
        "invalid_mac1": [typed(1, 148), typed(2, 92)],
        "unknown_receiver": [transport(index + 1 + i, rnd.getrandbits(64), rnd.randrange(32, 1500)) for i in range(20)],
        "replayed": [transport(index, seen_counter, rnd.randrange(32, 1500)) for _ in range(20)],
        # a live receiver index and a fresh counter: only the AEAD can tell
        "authentication": [transport(index, (1 << 40) + i, rnd.randrange(32, 1500)) for i in range(10)],
    }


def test_garbage_of_every_kind_is_dropped_where_it_costs_least_and_the_session_goes_on():
    pair = PlanePair()
    a, b = pair.sides
    try:
        kp = _session(pair)
        queued = []
        queue = b.plane.receiver.queue_handshake
        b.plane.receiver.queue_handshake = lambda d, s: (queued.append(d), queue(d, s))
        drops_before = dict(b.counters.drops)
        # a's next packets are held on the wire, to be delivered between garbage.
        held = []
        pair.net.impair = lambda datagrams, src, dst: (held.extend(datagrams), [])[1]
        packets = [ipv4_packet(a.address4, b.address4, bytes([i]) * (10 + 37 * i)) for i in range(30)]
        for p in packets:
            a.tun.inject(vnet_plain(p))
            pair.settle()
        pair.net.impair = None
        assert len(held) == len(packets)
        garbage = _garbage(random.Random(5), kp.local_index, seen_counter=0)
        flat = [(reason, d) for reason, ds in garbage.items() for d in ds]
        random.Random(6).shuffle(flat)
        per_packet = -(-len(flat) // len(held))
        for i, real in enumerate(held):
            for n, (_, d) in enumerate(flat[i * per_packet:(i + 1) * per_packet]):
                # Most from a stranger; some spoofed from a's own address, into a's pinned queue.
                b.bind.inject(d, a.endpoint if n % 3 == 0 else ATTACKER)
            b.bind.arrive([real], a.endpoint, False)
        pair.settle()
        pair.advance(KERNEL_DROPS_INTERVAL)  # the loop reads the kernel's drop counter

        assert b.packets() == packets
        # Only the real packets and the fresh-counter garbage were decrypted.
        assert kp.recv_aead.calls == len(packets) + len(garbage["authentication"])
        assert sorted(map(len, queued)) == [92, 148]
        drops = {k: v - drops_before.get(k, 0) for k, v in b.counters.drops.items() if v != drops_before.get(k, 0)}
        assert drops == {reason: len(ds) for reason, ds in garbage.items()}
        assert all(dst == a.endpoint for dst, _ in b.bind.take_sent())  # nothing to the attacker
    finally:
        pair.close()


def test_a_train_is_judged_datagram_by_datagram():
    """A GRO train from the peer's address with garbage in it: the real ones arrive, the rest is counted."""
    pair = PlanePair()
    a, b = pair.sides
    try:
        kp = _session(pair)
        held = []
        pair.net.impair = lambda datagrams, src, dst: (held.extend(datagrams), [])[1]
        packets = [ipv4_packet(a.address4, b.address4, bytes([i]) * 100) for i in range(3)]
        for p in packets:
            a.tun.inject(vnet_plain(p))
            pair.settle()
        pair.net.impair = None
        assert len({len(d) for d in held}) == 1
        seg = len(held[0])
        forged = struct.pack("<IIQ", 4, kp.local_index, 1 << 50) + bytes(seg - 16)
        replay = held[0]
        tail = bytes([1, 0, 0, 0]) + bytes(60)  # a handshake type, smaller: ends the train
        b.bind.inject_train(held[0] + forged + held[1] + replay + held[2] + tail, seg, a.endpoint)
        pair.settle()
        assert b.packets() == packets
        assert kp.recv_aead.calls == 3 + 1
        assert (b.counters.drops["authentication"], b.counters.drops["replayed"], b.counters.drops["malformed"]) == (1, 1, 1)
    finally:
        pair.close()


def test_a_flood_at_the_port_does_not_delay_an_established_session():
    """The peer's datagrams queue on its pinned socket: served in the next turn, however much garbage waits."""
    pair = PlanePair()
    a, b = pair.sides
    try:
        _session(pair)
        assert b.bind.pinned() == [a.endpoint] and a.bind.pinned() == [b.endpoint]
        rnd = random.Random(9)
        for _ in range(5000):
            b.bind.inject(struct.pack("<IIQ", 4, rnd.getrandbits(32), 0) + rnd.randbytes(100), ATTACKER)
        a.tun.inject(vnet_plain(ipv4_packet(a.address4, b.address4, b"ping")))
        a.plane.service(a.pending(), pair.clock.now)
        b.plane.service(b.pending(), pair.clock.now)  # one turn
        assert [p[20:] for p in b.packets()] == [b"ping"]
        assert b.bind.queued() > 4000  # the garbage is still waiting: it gets a turn's budget at a time
        pair.settle()
        assert b.counters.drops["unknown_receiver"] == 5000 and b.bind.queued() == 0
    finally:
        pair.close()
