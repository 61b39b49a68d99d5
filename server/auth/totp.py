"""Time-based one-time passwords (RFC 6238) as authenticator apps expect them:
HMAC-SHA1, 30-second steps, 6 digits, base32 secrets, otpauth:// URIs.

Written on the standard library (hmac, struct, base64) rather than pyotp: the
algorithm is twenty lines and checked against the RFC's test vectors, and what
pyotp does not do for us - refusing a code that was already used - needs our
own state anyway (`verify` returns the step so the caller can store it).

Rules kept here:
- time is an argument, never read here;
- a code is accepted for the current step and one step either side (clock
  drift, a code typed just as it changed), and only for a step later than the
  last one accepted for that user: a code is never accepted twice;
- codes are compared in constant time; nothing here logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from urllib.parse import quote, urlencode

STEP = 30
DIGITS = 6
WINDOW = 1  # steps accepted either side of now
SECRET_BYTES = 20  # 160 bits, as RFC 4226 recommends for SHA1

_ALGORITHMS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}


class SecretError(ValueError):
    """A TOTP secret that is not base32."""


def new_secret() -> str:
    return base64.b32encode(os.urandom(SECRET_BYTES)).decode("ascii").rstrip("=")


def decode_secret(secret: str) -> bytes:
    text = secret.replace(" ", "").upper()
    try:
        key = base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError:
        raise SecretError("the TOTP secret is not base32") from None
    if not key:
        raise SecretError("the TOTP secret is empty")
    return key


def hotp(key: bytes, counter: int, digits: int = DIGITS, algorithm: str = "SHA1") -> str:
    """RFC 4226 section 5.3: dynamic truncation of HMAC(key, counter)."""
    mac = hmac.new(key, struct.pack(">Q", counter), _ALGORITHMS[algorithm]).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** digits).zfill(digits)


def step_at(now: float, step: int = STEP) -> int:
    return int(now // step)


def code_at(secret: str, now: float, *, digits: int = DIGITS, step: int = STEP, algorithm: str = "SHA1") -> str:
    return hotp(decode_secret(secret), step_at(now, step), digits, algorithm)


def verify(secret: str, code: str, now: float, last_step: int | None = None, *,
           window: int = WINDOW, step: int = STEP, digits: int = DIGITS) -> int | None:
    """The step `code` belongs to, if it is valid at `now` and newer than `last_step`; else None."""
    code = code.strip().replace(" ", "")
    if len(code) != digits or not code.isdigit():
        return None
    key = decode_secret(secret)
    current = step_at(now, step)
    found = None
    # Check every candidate (no early exit) so timing does not tell which step matched.
    for candidate in range(current - window, current + window + 1):
        if hmac.compare_digest(hotp(key, candidate, digits), code):
            if last_step is None or candidate > last_step:
                found = candidate if found is None else max(found, candidate)
    return found


def otpauth_uri(secret: str, account: str, issuer: str) -> str:
    """The Key URI format authenticator apps scan (Google Authenticator's wiki)."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = urlencode({"secret": secret, "issuer": issuer, "algorithm": "SHA1",
                       "digits": DIGITS, "period": STEP})
    return f"otpauth://totp/{label}?{query}"
