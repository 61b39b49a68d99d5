"""mac1, mac2 and cookie replies (whitepaper 5.3 and 5.4.4, 5.4.7).

Rules kept here:
- mac1 is checked on every handshake message before any Diffie-Hellman;
  macs are compared in constant time (hmac.compare_digest);
- whether we are under load is the caller's input, never guessed here;
- the cookie secret rotates every COOKIE_SECRET_MAX_AGE seconds of the
  caller's clock; a cookie we received is used for mac2 only while younger
  than COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY;
- a cookie reply is accepted only for the mac1 we last sent, once.
"""

from __future__ import annotations

import hmac
from typing import Callable

from .constants import (
    COOKIE_LEN,
    COOKIE_NONCE_LEN,
    COOKIE_SECRET_LATENCY,
    COOKIE_SECRET_MAX_AGE,
    KEY_LEN,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_LEN,
)
from .crypto import HASH, MAC, XAEAD, XAEAD_DECRYPT, InvalidTag
from .errors import AuthenticationFailed, CookieRequired, InvalidMac
from .messages import CookieReply

Rng = Callable[[int], bytes]


def mac1_key(public_key: bytes) -> bytes:
    return HASH(LABEL_MAC1 + public_key)


def cookie_key(public_key: bytes) -> bytes:
    return HASH(LABEL_COOKIE + public_key)


def source_bytes(endpoint: tuple) -> bytes:
    """The sender's address and port as the cookie covers them (A_m' in the paper)."""
    host, port = endpoint[0], endpoint[1]
    return host.encode("ascii") + b"|" + port.to_bytes(2, "big")


class CookieChecker:
    """The receiving side: our own mac1 key, the rotating secret, cookie replies."""

    def __init__(self, local_public: bytes, rng: Rng):
        self._rng = rng
        self.mac1_key = mac1_key(local_public)
        self.cookie_key = cookie_key(local_public)
        self._secret = b""
        self._secret_born: float | None = None

    def _current_secret(self, now: float) -> bytes:
        if self._secret_born is None or now - self._secret_born >= COOKIE_SECRET_MAX_AGE:
            self._secret = self._rng(KEY_LEN)
            self._secret_born = now
        return self._secret

    def make_cookie(self, endpoint: tuple, now: float) -> bytes:
        return MAC(self._current_secret(now), source_bytes(endpoint))

    def validate(self, packet: bytes, mac1_offset: int, endpoint: tuple, now: float, under_load: bool) -> None:
        """Check mac1 always, and mac2 when under load.

        Raises InvalidMac (drop silently) or CookieRequired (answer with
        `create_reply`). Returns normally when the message may be processed.
        """
        mac1 = packet[mac1_offset:mac1_offset + MAC_LEN]
        if not hmac.compare_digest(MAC(self.mac1_key, packet[:mac1_offset]), mac1):
            raise InvalidMac("mac1 does not match")
        if not under_load:
            return
        mac2_offset = mac1_offset + MAC_LEN
        mac2 = packet[mac2_offset:mac2_offset + MAC_LEN]
        cookie = self.make_cookie(endpoint, now)
        if not hmac.compare_digest(MAC(cookie, packet[:mac2_offset]), mac2):
            raise CookieRequired("under load and mac2 is not valid")

    def create_reply(self, packet: bytes, mac1_offset: int, sender_index: int, endpoint: tuple, now: float) -> bytes:
        """The cookie reply to a handshake message we refused under load."""
        cookie = self.make_cookie(endpoint, now)
        nonce = self._rng(COOKIE_NONCE_LEN)
        mac1 = packet[mac1_offset:mac1_offset + MAC_LEN]
        encrypted = XAEAD(self.cookie_key, nonce, cookie, mac1)
        return CookieReply(sender_index, nonce, encrypted).pack()


class CookieGenerator:
    """The sending side, per peer: adds mac1/mac2 and keeps the peer's cookie.

    Its two keys are derived at first use: a server with 10,000 configured
    peers, most of them idle, derives none at start-up and keeps none.
    """

    __slots__ = ("remote_public", "_mac1_key", "_cookie_key", "_cookie", "_cookie_born", "_last_mac1")

    def __init__(self, remote_public: bytes):
        self.remote_public = remote_public
        self._mac1_key: bytes | None = None
        self._cookie_key: bytes | None = None
        self._cookie = b""
        self._cookie_born: float | None = None
        self._last_mac1: bytes | None = None

    @property
    def mac1_key(self) -> bytes:
        if self._mac1_key is None:
            self._mac1_key = mac1_key(self.remote_public)
        return self._mac1_key

    @property
    def cookie_key(self) -> bytes:
        if self._cookie_key is None:
            self._cookie_key = cookie_key(self.remote_public)
        return self._cookie_key

    def add_macs(self, packet: bytearray, mac1_offset: int, now: float) -> None:
        """Fill mac1 (and mac2 if we hold a fresh cookie) of a packed handshake message in place."""
        mac1 = MAC(self.mac1_key, bytes(packet[:mac1_offset]))
        packet[mac1_offset:mac1_offset + MAC_LEN] = mac1
        self._last_mac1 = mac1
        mac2_offset = mac1_offset + MAC_LEN
        if self._cookie_born is not None and now - self._cookie_born < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY:
            packet[mac2_offset:mac2_offset + MAC_LEN] = MAC(self._cookie, bytes(packet[:mac2_offset]))
        else:
            packet[mac2_offset:mac2_offset + MAC_LEN] = bytes(MAC_LEN)

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        if self._last_mac1 is None:
            raise AuthenticationFailed("cookie reply without a message of ours to answer")
        try:
            cookie = XAEAD_DECRYPT(self.cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1)
        except InvalidTag:
            raise AuthenticationFailed("cookie reply does not authenticate") from None
        assert len(cookie) == COOKIE_LEN
        self._cookie = cookie
        self._cookie_born = now
        self._last_mac1 = None  # one reply per message sent

    @property
    def has_cookie(self) -> bool:
        return self._cookie_born is not None
