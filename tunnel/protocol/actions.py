"""What a call into the protocol core asks its caller to do.

The core returns a list of these, in order; it never does them itself.
Each is a small slotted class so that `match` statements and tests read well.
"""

from __future__ import annotations

from typing import Any


class Action:
    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(
            getattr(self, s) == getattr(other, s) for s in self.__slots__
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{s}={_short(getattr(self, s))}" for s in self.__slots__)
        return f"{type(self).__name__}({fields})"


def _short(v: Any) -> str:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(v)} bytes>"
    return repr(v)


class SendDatagram(Action):
    """Send `data` in one UDP datagram to `endpoint` ((host, port))."""

    __slots__ = ("endpoint", "data", "peer")

    def __init__(self, endpoint: tuple, data: bytes, peer: Any = None):
        self.endpoint = endpoint
        self.data = data
        self.peer = peer


class WritePacket(Action):
    """Write the decrypted IP packet `data` to the tunnel device."""

    __slots__ = ("data", "peer")

    def __init__(self, data: bytes, peer: Any = None):
        self.data = data
        self.peer = peer


class Drop(Action):
    """Something was discarded; `reason` is a fixed label suitable for a counter."""

    __slots__ = ("reason", "peer")

    def __init__(self, reason: str, peer: Any = None):
        self.reason = reason
        self.peer = peer


class Event(Action):
    """Something worth one log line: handshake_completed, roamed, session_expired, keys_zeroed..."""

    __slots__ = ("kind", "peer", "detail")

    def __init__(self, kind: str, peer: Any = None, detail: Any = None):
        self.kind = kind
        self.peer = peer
        self.detail = detail
