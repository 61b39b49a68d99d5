"""`tunnel genkey | pubkey | genpsk` are byte-compatible with `wg`'s."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tunnel.cli import main

WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None and not os.environ.get("CI"),
                              reason="wireguard-tools not installed (CI installs it)")


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_genkey_is_a_clamped_32_byte_key():
    r = run("genkey")
    assert r.exit_code == 0
    raw = base64.b64decode(r.output.strip(), validate=True)
    assert len(raw) == 32
    assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40


def test_genkeys_differ():
    assert run("genkey").output != run("genkey").output


def test_genpsk_is_32_random_bytes():
    a, b = run("genpsk").output.strip(), run("genpsk").output.strip()
    assert len(base64.b64decode(a, validate=True)) == 32 and a != b


@needs_wg
@pytest.mark.parametrize("source", ["ours", "wg"])
def test_pubkey_matches_wg_pubkey(source):
    if source == "ours":
        private = run("genkey").output
    else:
        private = subprocess.run([WG, "genkey"], capture_output=True, text=True, check=True).stdout
    theirs = subprocess.run([WG, "pubkey"], input=private, capture_output=True, text=True, check=True).stdout
    ours = run("pubkey", input=private)
    assert ours.exit_code == 0
    assert ours.output == theirs


def test_pubkey_of_rfc7748_alice():
    # RFC 7748 section 6.1: Alice's private and public keys.
    private = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    public = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    r = run("pubkey", input=base64.b64encode(private).decode() + "\n")
    assert r.output.strip() == base64.b64encode(public).decode()


@pytest.mark.parametrize("bad", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_pubkey_refuses_bad_input_in_one_line(bad):
    r = subprocess.run([sys.executable, "-m", "tunnel", "pubkey"], input=bad, capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("tunnel: the private key on stdin is not valid")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
