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
        a.send(b"x" * 100, ("127.0.0.1", b.port))
        buf = bytearray(65536)
        import select

        select.select(b.fds(), [], [], 2)
        n, seg, source = b.recv(b.fds()[0], buf)
        assert (n, seg, source) == (100, 100, ("127.0.0.1", a.port))
