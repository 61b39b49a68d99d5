"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard builds it (whitepaper 5.4).

    IK:
      <- s
      ...
      -> e, es, s, ss, {t}        handshake initiation (5.4.2)
      <- e, ee, se, psk, {}       handshake response   (5.4.3)

Each step below carries the token it implements. Rules kept here:
- no clock: the caller gives the wall time for the TAI64N timestamp and
  nothing here keeps timers; the flood check takes `now` as an argument;
- randomness (ephemeral keys) comes from the caller's `rng`;
- a message that fails any check raises a RemoteError and leaves the
  handshake exactly as it was; state changes only after every check passed;
- mac1/mac2 are not Noise: cookie.py adds and checks them around this.
"""

from __future__ import annotations

from typing import Callable

from .constants import (
    CONSTRUCTION,
    HANDSHAKE_INITIATION_MIN_INTERVAL,
    IDENTIFIER,
    KEY_LEN,
)
from .crypto import (
    AEAD,
    AEAD_DECRYPT,
    HASH,
    KDF1,
    KDF2,
    KDF3,
    TAI64N,
    InvalidTag,
    PrivateKey,
    clamp,
)
from .errors import AuthenticationFailed, HandshakeFlood, LocalError, ReplayedTimestamp, UnknownPeer
from .messages import Initiation, Response

# C_i = HASH(CONSTRUCTION), H_i = HASH(C_i || IDENTIFIER): the same for every handshake.
INITIAL_CHAIN_KEY = HASH(CONSTRUCTION)
INITIAL_HASH = HASH(INITIAL_CHAIN_KEY + IDENTIFIER)
_ZERO_PSK = bytes(KEY_LEN)
_ZERO_TIMESTAMP = bytes(12)  # TAI64N: older than any real one

Rng = Callable[[int], bytes]

# Handshake states (the kernel's enum noise_handshake_state).
ZEROED = "zeroed"
CREATED_INITIATION = "created_initiation"
CONSUMED_INITIATION = "consumed_initiation"
CREATED_RESPONSE = "created_response"
CONSUMED_RESPONSE = "consumed_response"


class SessionKeys:
    """What a completed handshake yields: the two transport keys and indices."""

    __slots__ = ("send_key", "recv_key", "local_index", "remote_index", "initiator")

    def __init__(self, send_key: bytes, recv_key: bytes, local_index: int, remote_index: int, initiator: bool):
        self.send_key = send_key
        self.recv_key = recv_key
        self.local_index = local_index
        self.remote_index = remote_index
        self.initiator = initiator

    def __repr__(self) -> str:
        return f"SessionKeys(local={self.local_index:#x}, remote={self.remote_index:#x}, initiator={self.initiator})"


class StaticIdentity:
    """Our static key pair, shared by every peer's handshake."""

    __slots__ = ("private", "public")

    def __init__(self, private_key: bytes):
        self.private = PrivateKey(private_key)
        self.public = self.private.public

    def __repr__(self) -> str:
        return "StaticIdentity(<hidden>)"


class Handshake:
    """The handshake state with one peer (the kernel's struct noise_handshake)."""

    def __init__(self, local: StaticIdentity | None, remote_static: bytes, preshared_key: bytes | None = None):
        if len(remote_static) != KEY_LEN:
            raise LocalError("a public key is 32 bytes")
        if preshared_key is not None and len(preshared_key) != KEY_LEN:
            raise LocalError("a pre-shared key is 32 bytes")
        self.local = local
        self.remote_static = remote_static
        self.preshared_key = preshared_key or _ZERO_PSK
        # ss is the same for every handshake with this peer: computed once, at
        # the first handshake (10,000 configured peers cost no X25519 at start-up),
        # and again after our static key changed (set_local).
        self._static_static: bytes | None | bool = False
        self.state = ZEROED
        self.hash = b""
        self.chaining_key = b""
        self.ephemeral_private: bytes | None = None
        self.remote_ephemeral = b""
        self.local_index = 0
        self.remote_index = 0
        # Greatest TAI64N seen from this peer and when its last initiation was
        # accepted: replay and flood protection (whitepaper 5.1).
        self.latest_timestamp = _ZERO_TIMESTAMP  # one shared object: 10,000 peers need no copies
        self.last_initiation_consumption: float | None = None
        self.last_sent_timestamp = _ZERO_TIMESTAMP

    def __repr__(self) -> str:
        return f"Handshake(state={self.state})"

    @property
    def precomputed_static_static(self) -> bytes | None:
        """DH(our static, their static); None when their key is a low-order point or we have no key."""
        if self._static_static is False:
            self._static_static = None if self.local is None else self.local.private.exchange(self.remote_static)
        return self._static_static

    @property
    def valid_peer(self) -> bool:
        """False when no handshake can succeed: the peer's public key is a low-order point, or we have no key."""
        return self.precomputed_static_static is not None

    def set_local(self, local: StaticIdentity | None) -> None:
        """Our static key changed (None: we have none): ss is computed again, and the handshake in progress is void."""
        self.local = local
        self._static_static = False
        self.clear()

    def clear(self) -> None:
        self.state = ZEROED
        self.hash = b""
        self.chaining_key = b""
        self.ephemeral_private = None
        self.remote_ephemeral = b""
        self.local_index = 0
        self.remote_index = 0

    # --- initiator --------------------------------------------------------

    def create_initiation(self, local_index: int, wall: float, rng: Rng) -> Initiation:
        """-> e, es, s, ss, {t}. mac1/mac2 are left zero for cookie.py."""
        if not self.valid_peer:
            raise LocalError("peer public key is a low-order point")
        c = INITIAL_CHAIN_KEY
        h = HASH(INITIAL_HASH + self.remote_static)
        # e
        e_priv = clamp(rng(KEY_LEN))
        e_key = PrivateKey(e_priv)
        e_pub = e_key.public
        c = KDF1(c, e_pub)
        h = HASH(h + e_pub)
        # es
        es = e_key.exchange(self.remote_static)
        if es is None:
            raise LocalError("peer public key is a low-order point")
        c, k = KDF2(c, es)
        # s
        enc_static = AEAD(k, 0, self.local.public, h)
        h = HASH(h + enc_static)
        # ss
        c, k = KDF2(c, self.precomputed_static_static)
        # {t}: strictly increasing even if the caller's wall clock steps back
        ts = TAI64N(wall)
        if ts <= self.last_sent_timestamp:
            ts = _tai64n_successor(self.last_sent_timestamp)
        self.last_sent_timestamp = ts
        enc_ts = AEAD(k, 0, ts, h)
        h = HASH(h + enc_ts)

        self.clear()
        self.state = CREATED_INITIATION
        self.hash, self.chaining_key = h, c
        self.ephemeral_private = e_priv
        self.local_index = local_index
        return Initiation(local_index, e_pub, enc_static, enc_ts)

    def consume_response(self, msg: Response) -> None:
        """<- e, ee, se, psk, {}: checks only; on success the state becomes CONSUMED_RESPONSE."""
        if self.state != CREATED_INITIATION or msg.receiver != self.local_index:
            raise AuthenticationFailed("response without a matching initiation")
        assert self.ephemeral_private is not None
        e_key = PrivateKey(self.ephemeral_private)
        c, h = self.chaining_key, self.hash
        # e
        c = KDF1(c, msg.ephemeral)
        h = HASH(h + msg.ephemeral)
        # ee
        ee = e_key.exchange(msg.ephemeral)
        if ee is None:
            raise AuthenticationFailed("low-order ephemeral")
        c = KDF1(c, ee)
        # se
        se = self.local.private.exchange(msg.ephemeral)
        if se is None:
            raise AuthenticationFailed("low-order ephemeral")
        c = KDF1(c, se)
        # psk
        c, tau, k = KDF3(c, self.preshared_key)
        h = HASH(h + tau)
        # {}
        try:
            AEAD_DECRYPT(k, 0, msg.encrypted_nothing, h)
        except InvalidTag:
            raise AuthenticationFailed("response does not authenticate") from None
        h = HASH(h + msg.encrypted_nothing)

        self.hash, self.chaining_key = h, c
        self.remote_ephemeral = msg.ephemeral
        self.remote_index = msg.sender
        self.state = CONSUMED_RESPONSE

    # --- responder --------------------------------------------------------

    def create_response(self, local_index: int, rng: Rng) -> Response:
        """<- e, ee, se, psk, {}. Needs a consumed initiation."""
        if self.state != CONSUMED_INITIATION:
            raise LocalError("no consumed initiation to respond to")
        c, h = self.chaining_key, self.hash
        # e
        e_priv = clamp(rng(KEY_LEN))
        e_key = PrivateKey(e_priv)
        e_pub = e_key.public
        c = KDF1(c, e_pub)
        h = HASH(h + e_pub)
        # ee
        ee = e_key.exchange(self.remote_ephemeral)
        # se
        se = e_key.exchange(self.remote_static)
        if ee is None or se is None:
            raise LocalError("low-order point in a consumed initiation")
        c = KDF1(c, ee)
        c = KDF1(c, se)
        # psk
        c, tau, k = KDF3(c, self.preshared_key)
        h = HASH(h + tau)
        # {}
        enc_nothing = AEAD(k, 0, b"", h)
        h = HASH(h + enc_nothing)

        self.hash, self.chaining_key = h, c
        self.ephemeral_private = e_priv
        self.local_index = local_index
        self.state = CREATED_RESPONSE
        return Response(local_index, self.remote_index, e_pub, enc_nothing)

    # --- both ---------------------------------------------------------------

    def derive_session(self) -> SessionKeys:
        """Split() (whitepaper 5.4.5): transport keys from the final chaining key; wipes the handshake."""
        if self.state == CONSUMED_RESPONSE:
            initiator = True
        elif self.state == CREATED_RESPONSE:
            initiator = False
        else:
            raise LocalError(f"no completed handshake (state {self.state})")
        t1, t2 = KDF2(self.chaining_key, b"")
        send, recv = (t1, t2) if initiator else (t2, t1)
        keys = SessionKeys(send, recv, self.local_index, self.remote_index, initiator)
        self.clear()
        return keys


def consume_initiation(
    local: StaticIdentity,
    msg: Initiation,
    find_peer: Callable[[bytes], "Handshake | None"],
    now: float,
) -> Handshake:
    """-> e, es, s, ss, {t} on the responder: identifies the peer by its static key.

    `find_peer(public_key)` returns that peer's Handshake or None. Returns the
    peer's Handshake in state CONSUMED_INITIATION. Raises a RemoteError, with
    the handshake untouched, on any failure: unknown key, bad AEAD, a replayed
    timestamp, or an initiation sooner than HANDSHAKE_INITIATION_MIN_INTERVAL
    after the last one accepted.
    """
    c = INITIAL_CHAIN_KEY
    h = HASH(INITIAL_HASH + local.public)
    # e
    c = KDF1(c, msg.ephemeral)
    h = HASH(h + msg.ephemeral)
    # es
    es = local.private.exchange(msg.ephemeral)
    if es is None:
        raise AuthenticationFailed("low-order ephemeral")
    c, k = KDF2(c, es)
    # s
    try:
        remote_static = AEAD_DECRYPT(k, 0, msg.encrypted_static, h)
    except InvalidTag:
        raise AuthenticationFailed("initiation does not authenticate") from None
    h = HASH(h + msg.encrypted_static)
    hs = find_peer(remote_static)
    if hs is None:
        raise UnknownPeer("initiation from an unknown public key")
    if not hs.valid_peer:
        raise AuthenticationFailed("peer key is a low-order point")
    # ss
    c, k = KDF2(c, hs.precomputed_static_static)
    # {t}
    try:
        timestamp = AEAD_DECRYPT(k, 0, msg.encrypted_timestamp, h)
    except InvalidTag:
        raise AuthenticationFailed("initiation timestamp does not authenticate") from None
    h = HASH(h + msg.encrypted_timestamp)
    if timestamp <= hs.latest_timestamp:
        raise ReplayedTimestamp("initiation timestamp not newer than the last one")
    if (
        hs.last_initiation_consumption is not None
        and now - hs.last_initiation_consumption < HANDSHAKE_INITIATION_MIN_INTERVAL
    ):
        raise HandshakeFlood("initiations arriving faster than allowed")

    # Every check passed: only now does the peer's state change. An index we
    # gave an initiation of our own stays recorded until create_response
    # replaces it, so the owner can still release it (as the kernel keeps its
    # index-table entry); forgetting it here would leak it forever.
    pending_index = hs.local_index
    hs.clear()
    hs.local_index = pending_index
    hs.latest_timestamp = timestamp
    hs.last_initiation_consumption = now
    hs.hash, hs.chaining_key = h, c
    hs.remote_ephemeral = msg.ephemeral
    hs.remote_index = msg.sender
    hs.state = CONSUMED_INITIATION
    return hs


def _tai64n_successor(ts: bytes) -> bytes:
    return (int.from_bytes(ts, "big") + 1).to_bytes(12, "big")
