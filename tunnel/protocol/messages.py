"""Pack and unpack the four WireGuard messages (whitepaper 5.4.2-5.4.7).

Unpacking checks only the framing (type, reserved bytes, exact size); it
raises MalformedMessage, a RemoteError, for anything else. Cryptographic
checks belong to noise.py and cookie.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import (
    COOKIE_REPLY_SIZE,
    HANDSHAKE_INITIATION_SIZE,
    HANDSHAKE_RESPONSE_SIZE,
    MESSAGE_HANDSHAKE_COOKIE,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from .errors import MalformedMessage

# The type is one byte followed by three zero bytes: read as one LE word.
_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")

assert _INITIATION.size == HANDSHAKE_INITIATION_SIZE
assert _RESPONSE.size == HANDSHAKE_RESPONSE_SIZE
assert _COOKIE.size == COOKIE_REPLY_SIZE
assert TRANSPORT_HEADER.size == TRANSPORT_HEADER_SIZE

EMPTY_MAC = bytes(16)


@dataclass(slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = EMPTY_MAC
    mac2: bytes = EMPTY_MAC

    def pack(self) -> bytes:
        return _INITIATION.pack(
            MESSAGE_HANDSHAKE_INITIATION, self.sender, self.ephemeral,
            self.encrypted_static, self.encrypted_timestamp, self.mac1, self.mac2,
        )

    @classmethod
    def unpack(cls, data: bytes) -> "Initiation":
        if len(data) != HANDSHAKE_INITIATION_SIZE:
            raise MalformedMessage("initiation of wrong size")
        t, sender, e, s, ts, m1, m2 = _INITIATION.unpack(data)
        if t != MESSAGE_HANDSHAKE_INITIATION:
            raise MalformedMessage("not an initiation")
        return cls(sender, e, s, ts, m1, m2)


@dataclass(slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = EMPTY_MAC
    mac2: bytes = EMPTY_MAC

    def pack(self) -> bytes:
        return _RESPONSE.pack(
            MESSAGE_HANDSHAKE_RESPONSE, self.sender, self.receiver, self.ephemeral,
            self.encrypted_nothing, self.mac1, self.mac2,
        )

    @classmethod
    def unpack(cls, data: bytes) -> "Response":
        if len(data) != HANDSHAKE_RESPONSE_SIZE:
            raise MalformedMessage("response of wrong size")
        t, sender, receiver, e, empty, m1, m2 = _RESPONSE.unpack(data)
        if t != MESSAGE_HANDSHAKE_RESPONSE:
            raise MalformedMessage("not a response")
        return cls(sender, receiver, e, empty, m1, m2)


@dataclass(slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def pack(self) -> bytes:
        return _COOKIE.pack(MESSAGE_HANDSHAKE_COOKIE, self.receiver, self.nonce, self.encrypted_cookie)

    @classmethod
    def unpack(cls, data: bytes) -> "CookieReply":
        if len(data) != COOKIE_REPLY_SIZE:
            raise MalformedMessage("cookie reply of wrong size")
        t, receiver, nonce, enc = _COOKIE.unpack(data)
        if t != MESSAGE_HANDSHAKE_COOKIE:
            raise MalformedMessage("not a cookie reply")
        return cls(receiver, nonce, enc)


def pack_transport_header(receiver: int, counter: int) -> bytes:
    return TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT_DATA, receiver, counter)


def unpack_transport_header(data: bytes) -> tuple[int, int]:
    """(receiver index, counter) of a transport data message."""
    if len(data) < TRANSPORT_MIN_SIZE:
        raise MalformedMessage("transport message too short")
    t, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    if t != MESSAGE_TRANSPORT_DATA:
        raise MalformedMessage("not a transport message")
    return receiver, counter


def message_type(data: bytes) -> int:
    """The message type, or 0 when the first word is not one of the four."""
    if len(data) < 4:
        return 0
    t = int.from_bytes(data[:4], "little")
    return t if 1 <= t <= 4 else 0
