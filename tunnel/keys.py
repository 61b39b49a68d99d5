"""Key generation and conversion, text-compatible with `wg genkey | wg pubkey` and `wg genpsk`."""

from __future__ import annotations

import os

from .protocol.crypto import DH_GENERATE, DH_PUBKEY, decode_key, encode_key


def generate_private_key() -> str:
    return encode_key(DH_GENERATE(os.urandom(32)))


def public_key_of(private_text: str) -> str:
    """The base64 public key for a base64 private key; raises ValueError for bad input."""
    return encode_key(DH_PUBKEY(decode_key(private_text)))


def generate_preshared_key() -> str:
    return encode_key(os.urandom(32))
