"""One transport session: the two ChaCha20-Poly1305 keys a handshake derived.

The data plane reads these fields directly on its hot path (one attribute
load per packet, no method layers); everything that changes peer state goes
through Peer. Python cannot overwrite immutable key bytes, so "zeroing" a
keypair drops every reference to its key objects; no copy is kept elsewhere.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import MESSAGE_TRANSPORT_DATA, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from .noise import SessionKeys
from .replay import ReplayWindow

if TYPE_CHECKING:
    from .peer import Peer

_HEADER_PREFIX = struct.Struct("<II")


class Keypair:
    __slots__ = (
        "peer", "send_aead", "recv_aead", "local_index", "remote_index", "initiator",
        "created", "send_counter", "replay", "header_prefix", "valid",
    )

    def __init__(self, keys: SessionKeys, now: float, peer: "Peer"):
        self.peer = peer
        self.send_aead: ChaCha20Poly1305 | None = ChaCha20Poly1305(keys.send_key)
        self.recv_aead: ChaCha20Poly1305 | None = ChaCha20Poly1305(keys.recv_key)
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.initiator = keys.initiator
        self.created = now
        # The next nonce to use for sending; the data plane may reserve a run of them.
        self.send_counter = 0
        self.replay = ReplayWindow()
        # type (4, with three zero bytes) and the receiver index: the first 8 header bytes.
        self.header_prefix = _HEADER_PREFIX.pack(MESSAGE_TRANSPORT_DATA, keys.remote_index)
        self.valid = True

    def __repr__(self) -> str:
        return f"Keypair(local={self.local_index:#x}, initiator={self.initiator}, sent={self.send_counter})"

    def can_send(self, now: float, count: int = 1) -> bool:
        return (
            self.valid
            and now - self.created < REJECT_AFTER_TIME
            and self.send_counter + count <= REJECT_AFTER_MESSAGES
        )

    def can_receive(self, now: float) -> bool:
        return self.valid and now - self.created < REJECT_AFTER_TIME

    def reserve(self, count: int) -> int:
        """Take `count` consecutive nonces; returns the first."""
        first = self.send_counter
        self.send_counter = first + count
        return first

    def wipe(self) -> None:
        self.valid = False
        self.send_aead = None
        self.recv_aead = None
