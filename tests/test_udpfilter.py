"""The socket filter (tunnel.udpfilter): every shape real traffic has passes, what cannot be a message does not.

The program is judged twice: by its reference interpreter over every shape
(what the in-memory fakes use), and by the kernel on a loopback socket,
GRO trains included (no root needed).
"""

from __future__ import annotations

import random
import select
import time

import pytest

from tunnel import udpfilter
from tunnel.protocol.transport import datagram_size
from tunnel.udp import UdpEndpoint


def msg(kind: int, size: int) -> bytes:
    return bytes([kind, 0, 0, 0]) + bytes(size - 4)


def transport(inner: int, mtu: int = 1420) -> bytes:
    return msg(4, datagram_size(inner, mtu))


HANDSHAKES = [msg(1, 148), msg(2, 92), msg(3, 64)]
# Transport messages of every inner size a 1420 MTU allows, keepalive (0) included; near the MTU
# the padding stops at it, so e.g. 1413 bytes give 1452 - not a multiple of 16 after the header.
TRANSPORTS = [transport(n) for n in range(0, 1421)]


def test_every_single_message_passes():
    assert len(TRANSPORTS[1413]) == 1452 and (len(TRANSPORTS[1413]) - 16) % 16 != 0
    for d in HANDSHAKES + TRANSPORTS:
        assert udpfilter.accepts(d), len(d)


@pytest.mark.parametrize("first,rest", [
    (transport(1420), [transport(1420)] * 63),  # a full GSO train
    (transport(1420), [transport(1420)] * 5 + [transport(40)]),  # the last is smaller
    (transport(1420), [msg(1, 148)]),  # a rekey initiation after data
    (msg(1, 148), [transport(52)]),  # an initiation, then a small data packet of the same flow
    (msg(3, 64), [transport(0)]),  # a cookie reply, then a keepalive
    (msg(2, 92), [msg(2, 92)]),
    (transport(0), [transport(0)] * 10),
])
def test_every_train_real_traffic_can_form_passes(first, rest):
    assert all(len(d) <= len(first) for d in rest)  # GRO's rule: only ever the first one's size, or smaller
    assert udpfilter.accepts(first + b"".join(rest))


def test_what_cannot_be_a_message_is_refused():
    rnd = random.Random(7)
    refused = [b"", b"\x04", b"\x04\0\0", msg(4, 31), msg(1, 147), msg(2, 91), msg(3, 63),
               msg(0, 100), msg(5, 148), msg(255, 1452), b"\x04\0\0\x01" + bytes(60), b"\x01\x01\0\0" + bytes(144),
               b"\0\0\0\x04" + bytes(60)]
    for d in refused:
        assert not udpfilter.accepts(d), d[:8]
    # Random bytes: only a valid type word gets through (4 in 2**32).
    passed = sum(udpfilter.accepts(rnd.randbytes(rnd.randrange(0, 1500))) for _ in range(20000))
    assert passed == 0


def _drain(ep: UdpEndpoint, want: int) -> list[tuple[int, int]]:
    got, buf = [], bytearray(65536)
    deadline = time.monotonic() + 5
    while len(got) < want and time.monotonic() < deadline:
        select.select(ep.fds(), [], [], 0.2)
        try:
            n, seg, _ = ep.recv(ep.fds()[0], buf)
        except BlockingIOError:
            continue
        got.append((n, seg))
    return got


def test_the_kernel_judges_a_gro_train_by_its_first_datagram_and_total_length():
    """On loopback a GSO send reaches a UDP_GRO socket as one train: the kernel runs the filter once on it."""
    with UdpEndpoint(0, host4="127.0.0.1", v6=False) as rx, UdpEndpoint(0, host4="127.0.0.1", v6=False) as tx:
        if not rx.gro:
            pytest.skip("no UDP GRO on this kernel")
        dst = ("127.0.0.1", rx.port)
        tx.send_train(memoryview(msg(1, 148) + transport(52)), 148, dst)  # 148 + 96: kept, though no multiple of 148
        tx.send_train(memoryview(msg(5, 148) + msg(1, 148)), 148, dst)  # a bad first datagram: the whole train goes
        tx.send_train(memoryview(transport(1420) * 3 + transport(1413)), 1452, dst)
        assert _drain(rx, 2) == [(244, 148), (4 * 1452, 1452)]
        assert rx.kernel_drops() == 1
