"""Message framing: the four wire sizes, round trips, and malformed input
raising MalformedMessage (a RemoteError), never anything else."""

from __future__ import annotations

import pytest

from tunnel.protocol.constants import (
    COOKIE_REPLY_SIZE,
    HANDSHAKE_INITIATION_SIZE,
    HANDSHAKE_RESPONSE_SIZE,
    KEEPALIVE_SIZE,
)
from tunnel.protocol.errors import MalformedMessage, RemoteError
from tunnel.protocol.messages import (
    CookieReply,
    Initiation,
    Response,
    message_type,
    pack_transport_header,
    unpack_transport_header,
)

from .pair import make_pair


def test_spec_sizes():
    assert (HANDSHAKE_INITIATION_SIZE, HANDSHAKE_RESPONSE_SIZE, COOKIE_REPLY_SIZE, KEEPALIVE_SIZE) == (148, 92, 64, 32)


def test_sizes_on_the_wire():
    """A real exchange: initiation 148, response 92, keepalive 32; cookie reply 64."""
    net, a, b = make_pair()
    a.initiate(b)
    sizes = [(f.sender.name, len(f.data), f.data[0]) for f in net.log]
    # a: initiation; b: response; a: keepalive confirming the session
    assert sizes == [("a", 148, 1), ("b", 92, 2), ("a", 32, 4)]
    init = net.log[0].data
    # a cookie reply from b when under load
    b.drops.clear()
    net.under_load.add("b")
    net.advance(6)
    out = b.inject(init[:-16] + bytes(16), a.endpoint, under_load=True)
    cookies = [x for x in out if type(x).__name__ == "SendDatagram"]
    assert len(cookies) == 1 and len(cookies[0].data) == 64 and cookies[0].data[:4] == b"\x03\0\0\0"


def test_reserved_bytes_are_zero_on_the_wire():
    net, a, b = make_pair()
    a.ping(b)
    for f in net.log:
        assert f.data[1:4] == b"\0\0\0"


def test_initiation_round_trip():
    m = Initiation(0x11223344, bytes(range(32)), bytes(48), bytes(28), b"m" * 16, b"n" * 16)
    raw = m.pack()
    assert len(raw) == 148 and raw[:4] == b"\x01\0\0\0" and raw[4:8] == bytes.fromhex("44332211")
    assert Initiation.unpack(raw) == m


def test_response_round_trip():
    m = Response(7, 9, bytes(32), bytes(16), b"a" * 16, b"b" * 16)
    raw = m.pack()
    assert len(raw) == 92 and raw[:4] == b"\x02\0\0\0"
    assert Response.unpack(raw) == m


def test_cookie_round_trip():
    m = CookieReply(5, bytes(24), bytes(32))
    raw = m.pack()
    assert len(raw) == 64 and raw[:4] == b"\x03\0\0\0"
    assert CookieReply.unpack(raw) == m


def test_transport_header():
    h = pack_transport_header(0xDEADBEEF, 2**64 - 1)
    assert h[:4] == b"\x04\0\0\0" and len(h) == 16
    assert unpack_transport_header(h + bytes(16)) == (0xDEADBEEF, 2**64 - 1)


@pytest.mark.parametrize("cls,size", [(Initiation, 148), (Response, 92), (CookieReply, 64)])
@pytest.mark.parametrize("delta", [-1, 1, -4])
def test_wrong_size_is_malformed(cls, size, delta):
    raw = bytes([{Initiation: 1, Response: 2, CookieReply: 3}[cls]]) + bytes(size + delta - 1)
    with pytest.raises(MalformedMessage):
        cls.unpack(raw)


@pytest.mark.parametrize("cls,size,t", [(Initiation, 148, 2), (Response, 92, 1), (CookieReply, 64, 4)])
def test_wrong_type_is_malformed(cls, size, t):
    with pytest.raises(MalformedMessage):
        cls.unpack(bytes([t]) + bytes(size - 1))


@pytest.mark.parametrize("cls,size,t", [(Initiation, 148, 1), (Response, 92, 2), (CookieReply, 64, 3)])
def test_nonzero_reserved_is_malformed(cls, size, t):
    with pytest.raises(RemoteError):
        cls.unpack(bytes([t, 0, 1, 0]) + bytes(size - 4))


def test_transport_too_short_or_wrong_type():
    with pytest.raises(MalformedMessage):
        unpack_transport_header(pack_transport_header(1, 1) + bytes(15))
    with pytest.raises(MalformedMessage):
        unpack_transport_header(b"\x04\0\1\0" + bytes(28))


@pytest.mark.parametrize("data,expected", [
    (b"", 0), (b"\x01\0\0", 0), (b"\x01\0\0\0", 1), (b"\x04\0\0\0", 4),
    (b"\x05\0\0\0", 0), (b"\x00\0\0\0", 0), (b"\x01\0\0\x01", 0), (b"\x02\x01\0\0", 0),
])
def test_message_type(data, expected):
    assert message_type(data) == expected
