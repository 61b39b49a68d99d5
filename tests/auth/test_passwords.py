"""scrypt password hashes: format, verification, hostile stored strings."""

import pytest

from server.auth import passwords


def test_hash_is_self_describing_and_verifies():
    stored = passwords.hash_password("correct horse")
    scheme, log2_n, r, p, salt, digest = stored.split("$")
    assert (scheme, int(log2_n), int(r), int(p)) == ("scrypt", passwords.LOG2_N, passwords.R, passwords.P)
    assert salt and digest and "correct horse" not in stored
    assert passwords.verify_password("correct horse", stored)
    assert not passwords.verify_password("correct horsE", stored)
    assert not passwords.verify_password("", stored)


def test_same_password_different_salt():
    a, b = passwords.hash_password("x" * 12, log2_n=10), passwords.hash_password("x" * 12, log2_n=10)
    assert a != b
    assert passwords.verify_password("x" * 12, a) and passwords.verify_password("x" * 12, b)


def test_old_parameters_still_verify_and_ask_for_rehash():
    weak = passwords.hash_password("pässwörd", log2_n=10, r=4)
    assert passwords.verify_password("pässwörd", weak)
    assert passwords.needs_rehash(weak)
    assert not passwords.needs_rehash(passwords.hash_password("pässwörd"))


@pytest.mark.parametrize("stored", [
    "",
    "bcrypt$10$8$1$c2FsdHNhbHQ$aGFzaA",
    "scrypt$15$8$1$c2FsdHNhbHQ",  # a field missing
    "scrypt$x$8$1$c2FsdHNhbHRzYWx0$" + "A" * 43,
    "scrypt$40$8$1$c2FsdHNhbHRzYWx0$" + "A" * 43,  # 2^40: would allocate terabytes
    "scrypt$15$8$99$c2FsdHNhbHRzYWx0$" + "A" * 43,
    "scrypt$15$8$1$!!!$" + "A" * 43,
    "scrypt$15$8$1$c2FsdA$" + "A" * 43,  # salt too short
])
def test_malformed_or_hostile_strings_are_refused(stored):
    with pytest.raises(passwords.HashFormatError) as exc:
        passwords.verify_password("anything", stored)
    assert "anything" not in str(exc.value)
