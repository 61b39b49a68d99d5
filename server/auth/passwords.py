"""Password hashes: scrypt (memory-hard) in a self-describing string.

    scrypt$<log2 n>$<r>$<p>$<salt, base64>$<hash, base64>

Rules kept here:
- the parameters travel with the hash, so stronger defaults later do not
  break old hashes (`needs_rehash` tells when to re-hash at the next login);
- a stored string is untrusted input: parameters beyond our limits are
  refused (a tampered row must not make us allocate gigabytes);
- comparison is constant-time (hmac.compare_digest);
- nothing here logs, and no message contains a password or a hash.

hashlib.scrypt is OpenSSL's and releases the GIL while it runs (~0.1 s and
32 MiB with the defaults), so a login does not stall the data-plane thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SCHEME = "scrypt"
LOG2_N = 15  # n = 32768: 128 * r * n = 32 MiB per hash
R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32

_MAX_LOG2_N = 20  # 1 GiB with r = 8: the most we would ever compute for a stored string
_MAX_R = 32
_MAX_P = 16
_MAXMEM = 2 ** 31 - 1


class HashFormatError(ValueError):
    """A stored hash string we cannot read (the message does not echo it)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << log2_n
    maxmem = min(_MAXMEM, 128 * r * n * p + 1024 * 1024 * 4)
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)


def hash_password(password: str, *, log2_n: int = LOG2_N, r: int = R, p: int = P) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, log2_n, r, p, HASH_BYTES)
    return f"{SCHEME}${log2_n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise HashFormatError("not a scrypt$log2n$r$p$salt$hash string")
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise HashFormatError("a field of the scrypt hash is malformed") from None
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise HashFormatError("scrypt parameters out of range")
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise HashFormatError("scrypt salt or hash has a wrong length")
    return log2_n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """True if `password` matches `stored`. Raises HashFormatError for a malformed string."""
    log2_n, r, p, salt, digest = _parse(stored)
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p, len(digest)), digest)


def needs_rehash(stored: str) -> bool:
    log2_n, r, p, _salt, _digest = _parse(stored)
    return (log2_n, r, p) < (LOG2_N, R, P)


# A hash of nothing anyone knows, verified when the user does not exist so that
# "no such user" and "wrong password" take the same time.
_DUMMY = None


def dummy_verify(password: str) -> None:
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = hash_password(os.urandom(16).hex())
    verify_password(password, _DUMMY)
