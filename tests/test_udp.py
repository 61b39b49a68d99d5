"""tunnel.udp as the data plane's Bind, on loopback (no root)."""

from __future__ import annotations

import socket

from tunnel.udp import UdpEndpoint


def _sink():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    return s


def test_v4_mapped_endpoint_is_sent_from_the_ipv4_socket():
    sink = _sink()
    port = sink.getsockname()[1]
    with UdpEndpoint(0, host4="127.0.0.1", host6="::1") as ep:
        ep.send(b"one", ("::ffff:127.0.0.1", port))
        ep.send_train(memoryview(b"aabbc"), 2, ("::FFFF:127.0.0.1", port, 0, 0))
        got = [sink.recvfrom(100) for _ in range(4)]
    assert [d for d, _ in got] == [b"one", b"aa", b"bb", b"c"]
    assert {a[1] for _, a in got} == {ep.port} and {a[0] for _, a in got} == {"127.0.0.1"}
    sink.close()


def test_recv_gives_the_train_and_its_source():
    with UdpEndpoint(0, host4="127.0.0.1", v6=False) as a, UdpEndpoint(0, host4="127.0.0.1", v6=False) as b:
        a.send(b"\x04\0\0\0" + b"x" * 96, ("127.0.0.1", b.port))  # shaped as transport: the filter keeps it
        buf = bytearray(65536)
        import select

        select.select(b.fds(), [], [], 2)
        n, seg, source = b.recv(b.fds()[0], buf)
        assert (n, seg, source) == (100, 100, ("127.0.0.1", a.port))


def test_the_socket_filter_drops_what_cannot_be_a_message_and_counts_it():
    """The kernel runs the same program the fakes interpret (tunnel.udpfilter), on a real socket."""
    import select
    import time

    from tunnel import udpfilter

    cases = [b"", b"\x04", b"\x04\0\0\0" + bytes(27), b"\x04\0\0\0" + bytes(28), b"\x04\0\0\0" + bytes(1449),
             b"\x01\0\0\0" + bytes(143), b"\x01\0\0\0" + bytes(144), b"\x01\0\0\0" + bytes(300),
             b"\x02\0\0\0" + bytes(87), b"\x02\0\0\0" + bytes(88), b"\x03\0\0\0" + bytes(60),
             b"\x03\0\0\0" + bytes(59), b"\x05\0\0\0" + bytes(100), b"\x04\0\1\0" + bytes(100),
             b"\x00\0\0\x04" + bytes(100), b"\xff" * 700]
    kept = [c for c in cases if udpfilter.accepts(c)]
    assert [len(c) for c in kept] == [32, 1453, 148, 304, 92, 64]
    with UdpEndpoint(0, host4="127.0.0.1", v6=False, gro=False) as ep, _sink() as tx:
        for c in cases:
            tx.sendto(c, ("127.0.0.1", ep.port))
        got, buf = [], bytearray(65536)
        deadline = time.monotonic() + 5
        while len(got) < len(kept) and time.monotonic() < deadline:
            select.select(ep.fds(), [], [], 0.5)
            try:
                n, _, _ = ep.recv(ep.fds()[0], buf)
            except BlockingIOError:
                continue
            got.append(bytes(buf[:n]))
        assert got == kept
        assert ep.kernel_drops() == len(cases) - len(kept)
    with UdpEndpoint(0, host4="127.0.0.1", v6=False, filter=False) as ep, _sink() as tx:
        tx.sendto(b"\xff" * 10, ("127.0.0.1", ep.port))
        select.select(ep.fds(), [], [], 2)
        assert ep.recv(ep.fds()[0], bytearray(100))[0] == 10


def test_rebind_moves_to_the_new_port_and_a_taken_port_changes_nothing():
    import errno
    import select

    import pytest

    with UdpEndpoint(0, host4="127.0.0.1", v6=False) as ep, _sink() as tx, _sink() as taken:
        old_port, old_fds = ep.port, ep.fds()
        opened, closed = ep.pin([("127.0.0.1", tx.getsockname()[1])])
        assert opened and ep.pinned()
        with pytest.raises(OSError) as exc:
            ep.rebind(taken.getsockname()[1])
        assert exc.value.errno == errno.EADDRINUSE
        assert ep.port == old_port and ep.pinned() and set(old_fds) <= set(ep.fds())
        opened, closed = ep.rebind(0)
        assert ep.port != old_port and ep.pinned() == []
        assert set(old_fds) <= set(closed) and len(closed) == len(old_fds) + 1 and set(opened) == set(ep.fds())
        assert ep.rebind(ep.port) == ([], [])  # the port it has: nothing to do
        tx.sendto(b"\x04\0\0\0" + b"y" * 28, ("127.0.0.1", ep.port))
        select.select(ep.fds(), [], [], 2)
        assert ep.recv(ep.fds()[0], bytearray(100))[0] == 32
        # The old port is free again.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", old_port))
        probe.close()


def test_set_fwmark_marks_every_socket_and_those_pinned_later():
    import os

    import pytest

    if os.geteuid() != 0:
        pytest.skip("SO_MARK needs CAP_NET_ADMIN")
    with UdpEndpoint(0, host4="127.0.0.1", v6=False) as ep, _sink() as peer:
        ep.pin([("127.0.0.1", peer.getsockname()[1])])
        ep.set_fwmark(0x1234)
        ep.pin([("127.0.0.1", peer.getsockname()[1]), ("127.0.0.1", 9)])
        socks = [*ep.sockets(), *ep._pinned.values()]
        assert len(socks) == 3
        assert {s.getsockopt(socket.SOL_SOCKET, 36) for s in socks} == {0x1234}
        ep.set_fwmark(0)
        assert {s.getsockopt(socket.SOL_SOCKET, 36) for s in socks} == {0}
