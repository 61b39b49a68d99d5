"""TOTP: RFC 6238 vectors, the +/-1 step window, replays, the otpauth URI, the local backend on a fake clock."""

import base64
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from server.auth import passwords, totp
from server.auth.accounts import Account, MemoryAccountStore
from server.auth.backend import Accepted, AuthRequest, Challenged, ClientInfo, Rejected
from server.auth.local import LocalBackend

from .clock import FakeClock

VECTORS = json.loads((Path(__file__).parent / "vectors" / "totp_rfc6238.json").read_text())
CLIENT = ClientInfo("laptop", "S0VZ", "10.8.0.2")


@pytest.mark.parametrize("now,algorithm,expected", VECTORS["vectors"])
def test_rfc6238_vectors(now, algorithm, expected):
    seed = base64.b32encode(VECTORS["seeds"][algorithm].encode()).decode()
    assert totp.code_at(seed, now, digits=8, algorithm=algorithm) == expected


def test_six_digit_codes_are_the_low_digits():
    seed = base64.b32encode(b"12345678901234567890").decode()
    assert totp.code_at(seed, 59) == "287082"  # what an authenticator app shows for the first vector


def test_window_is_one_step_either_side():
    secret = totp.new_secret()
    now = 1_800_000_015.0
    step = totp.step_at(now)
    for delta in (-1, 0, 1):
        code = totp.code_at(secret, now + 30 * delta)
        assert totp.verify(secret, code, now) == step + delta
    for delta in (-2, 2):
        assert totp.verify(secret, totp.code_at(secret, now + 30 * delta), now) is None


def test_a_code_is_not_accepted_twice_nor_an_older_one():
    secret = totp.new_secret()
    now = 1_800_000_015.0
    code = totp.code_at(secret, now)
    used = totp.verify(secret, code, now)
    assert used is not None
    assert totp.verify(secret, code, now, last_step=used) is None
    assert totp.verify(secret, totp.code_at(secret, now - 30), now, last_step=used) is None
    assert totp.verify(secret, totp.code_at(secret, now + 30), now, last_step=used) == used + 1


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "12 34 5x"])
def test_malformed_codes(code):
    assert totp.verify(totp.new_secret(), code, 1_800_000_000.0) is None


def test_otpauth_uri():
    secret = totp.new_secret()
    uri = totp.otpauth_uri(secret, "alice@example.org", "ACME VPN")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert parts.path == "/ACME%20VPN:alice@example.org"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {"secret": secret, "issuer": "ACME VPN", "algorithm": "SHA1", "digits": "6", "period": "30"}
    assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) == totp.SECRET_BYTES


def test_local_backend_with_totp_on_a_fake_clock():
    clock = FakeClock()
    store = MemoryAccountStore()
    secret = totp.new_secret()
    store.add(Account("alice", passwords.hash_password("wonderland!", log2_n=12), ("staff",), secret))
    backend = LocalBackend(store)
    code = totp.code_at(secret, clock())

    # The code with the password: one round.
    result = backend.authenticate(AuthRequest("alice", "wonderland!", CLIENT, code=code), clock())
    assert result == Accepted(user="alice", groups=("staff",))
    # The same code again, even within its 30 s: refused.
    again = backend.authenticate(AuthRequest("alice", "wonderland!", CLIENT, code=code), clock())
    assert again == Rejected("code already used")

    # Password only: challenged; the next step's code answers it.
    clock.advance(30)
    challenge = backend.authenticate(AuthRequest("alice", "wonderland!", CLIENT), clock())
    assert isinstance(challenge, Challenged) and challenge.state
    wrong = backend.authenticate(AuthRequest("alice", "", CLIENT, code="000000", state=challenge.state), clock())
    assert isinstance(wrong, Rejected)
    # A challenge is used once: the failed answer consumed it.
    code = totp.code_at(secret, clock())
    stale = backend.authenticate(AuthRequest("alice", "", CLIENT, code=code, state=challenge.state), clock())
    assert stale == Rejected("unknown or expired challenge")
    challenge = backend.authenticate(AuthRequest("alice", "wonderland!", CLIENT), clock())
    ok = backend.authenticate(AuthRequest("alice", "", CLIENT, code=code, state=challenge.state), clock())
    assert isinstance(ok, Accepted)

    # A challenge expires.
    clock.advance(30)
    challenge = backend.authenticate(AuthRequest("alice", "wonderland!", CLIENT), clock())
    clock.advance(121)
    code = totp.code_at(secret, clock())
    late = backend.authenticate(AuthRequest("alice", "", CLIENT, code=code, state=challenge.state), clock())
    assert late == Rejected("unknown or expired challenge")

    # Wrong password never reaches the code.
    assert backend.authenticate(AuthRequest("alice", "nope", CLIENT, code=code), clock()) == \
        Rejected("wrong password")
    assert backend.authenticate(AuthRequest("mallory", "nope", CLIENT), clock()) == Rejected("no such user")
