"""The primitives of whitepaper section 5.4, named as there.

Rules kept here:
- every primitive comes from `cryptography` or from the standard library's
  BLAKE2s; nothing is hand-rolled. The one construction `cryptography` lacks,
  XChaCha20-Poly1305, is built from its ChaCha20 (for HChaCha20) and its
  ChaCha20Poly1305, as draft-irtf-cfrg-xchacha section 2 describes;
- no clock is read: TAI64N takes the wall time as an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac as _hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import HASH_LEN, KEY_LEN, MAC_LEN, TIMESTAMP_LEN

__all__ = [
    "InvalidTag",
    "HASH", "HMAC", "MAC", "KDF1", "KDF2", "KDF3",
    "AEAD", "AEAD_DECRYPT", "XAEAD", "XAEAD_DECRYPT", "hchacha20",
    "DH", "DH_GENERATE", "DH_PUBKEY", "clamp", "TAI64N",
    "KeyError_", "decode_key", "encode_key",
]

_ZERO_KEY = bytes(KEY_LEN)


def HASH(data: bytes) -> bytes:
    """BLAKE2s-256."""
    return hashlib.blake2s(data).digest()


def HMAC(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s-256 (RFC 2104 over BLAKE2s, block size 64)."""
    return _hmac.digest(key, data, hashlib.blake2s)


def MAC(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s with a 16-byte output (mac1, mac2, cookies)."""
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=key).digest()


def KDF1(key: bytes, data: bytes) -> bytes:
    t0 = HMAC(key, data)
    return HMAC(t0, b"\x01")


def KDF2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = HMAC(key, data)
    t1 = HMAC(t0, b"\x01")
    t2 = HMAC(t0, t1 + b"\x02")
    return t1, t2


def KDF3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    t0 = HMAC(key, data)
    t1 = HMAC(t0, b"\x01")
    t2 = HMAC(t0, t1 + b"\x02")
    t3 = HMAC(t0, t2 + b"\x03")
    return t1, t2, t3


def _nonce(counter: int) -> bytes:
    # 32 bits of zeros followed by the 64-bit little-endian counter.
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def AEAD(key: bytes, counter: int, plaintext: bytes, auth: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_nonce(counter), plaintext, auth)


def AEAD_DECRYPT(key: bytes, counter: int, ciphertext: bytes, auth: bytes) -> bytes:
    """Raises InvalidTag when the ciphertext does not authenticate."""
    return ChaCha20Poly1305(key).decrypt(_nonce(counter), ciphertext, auth)


_SIGMA = struct.unpack("<4I", b"expand 32-byte k")


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha-03, 2.2) from `cryptography`'s ChaCha20.

    One ChaCha20 block with the 16-byte input as its counter||nonce words is
    the 20-round state plus the initial state; HChaCha20 is words 0-3 and
    12-15 of the state before that final addition, so subtract it again.
    """
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("hchacha20 takes a 32-byte key and a 16-byte nonce")
    block = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(bytes(64))
    w = struct.unpack("<16I", block)
    n = struct.unpack("<4I", nonce16)
    out = [(w[i] - _SIGMA[i]) & 0xFFFFFFFF for i in range(4)]
    out += [(w[12 + i] - n[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *out)


def _xaead(key: bytes, nonce: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    if len(nonce) != 24:
        raise ValueError("XChaCha20-Poly1305 takes a 24-byte nonce")
    return ChaCha20Poly1305(hchacha20(key, nonce[:16])), b"\x00\x00\x00\x00" + nonce[16:]


def XAEAD(key: bytes, nonce: bytes, plaintext: bytes, auth: bytes) -> bytes:
    aead, n = _xaead(key, nonce)
    return aead.encrypt(n, plaintext, auth)


def XAEAD_DECRYPT(key: bytes, nonce: bytes, ciphertext: bytes, auth: bytes) -> bytes:
    """Raises InvalidTag when the ciphertext does not authenticate."""
    aead, n = _xaead(key, nonce)
    return aead.decrypt(n, ciphertext, auth)


# --- Curve25519 ---------------------------------------------------------------


def clamp(private: bytes) -> bytes:
    """The X25519 clamping `wg genkey` applies before printing a key."""
    b = bytearray(private)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def DH_GENERATE(random32: bytes) -> bytes:
    """A private key from 32 random bytes supplied by the caller."""
    if len(random32) != KEY_LEN:
        raise ValueError("a private key is 32 bytes")
    return clamp(random32)


def DH_PUBKEY(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def DH(private: bytes, public: bytes) -> bytes | None:
    """X25519; None when the result is all zeros (a low-order public key)."""
    return PrivateKey(private).exchange(public)


class PrivateKey:
    """A static private key with its X25519 object built once (exchanges are hot)."""

    __slots__ = ("raw", "public", "_obj")

    def __init__(self, raw: bytes):
        if len(raw) != KEY_LEN:
            raise ValueError("a private key is 32 bytes")
        self.raw = raw
        self._obj = X25519PrivateKey.from_private_bytes(raw)
        self.public = self._obj.public_key().public_bytes_raw()

    def exchange(self, public: bytes) -> bytes | None:
        try:
            shared = self._obj.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:
            return None
        return None if shared == _ZERO_KEY else shared

    def __repr__(self) -> str:  # never show key material
        return "PrivateKey(<hidden>)"


# --- TAI64N -------------------------------------------------------------------

_TAI64_BASE = (1 << 62) + 10  # TAI64 label of the Unix epoch, plus TAI-UTC offset as wireguard-go
# The kernel and wireguard-go clear the low 24 bits of the nanoseconds (about
# 1/60 s, the power of two below 1/50 s) so a timestamp leaks less about the
# initiator's clock.
_WHITEN_MASK = ~0xFFFFFF


def TAI64N(wall: float) -> bytes:
    """12-byte TAI64N label for a Unix time in seconds."""
    seconds = int(wall)
    nanos = int((wall - seconds) * 1e9)
    nanos &= _WHITEN_MASK
    return struct.pack(">QI", _TAI64_BASE + seconds, nanos)


assert len(TAI64N(0.0)) == TIMESTAMP_LEN and HASH_LEN == KEY_LEN


# --- key text encoding --------------------------------------------------------


class KeyError_(ValueError):
    """A key given as text is not 32 bytes of base64."""


def decode_key(text: str) -> bytes:
    """A base64 key as `wg` prints it; raises KeyError_ (message free of the key)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_("not valid base64") from None
    if len(raw) != KEY_LEN:
        raise KeyError_(f"decodes to {len(raw)} bytes, a key is {KEY_LEN}")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
