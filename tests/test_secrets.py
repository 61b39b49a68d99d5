"""Private files: permission and owner checks, atomic 0600 writes, key files."""

from __future__ import annotations

import os
import stat

import pytest

from tunnel.protocol.crypto import encode_key
from tunnel.secrets import (
    InsecureFileError,
    KeyFileError,
    _refusal,
    check_private_file,
    read_key_file,
    read_private_file,
    write_private_file,
)

KEY = bytes(range(32))


def make(path, data: bytes, mode: int):
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_private_file_accepted(tmp_path):
    p = make(tmp_path / "k", b"secret", 0o600)
    assert stat.S_IMODE(check_private_file(p).st_mode) == 0o600
    assert read_private_file(p) == b"secret"
    make(tmp_path / "r", b"x", 0o400)
    check_private_file(tmp_path / "r")


@pytest.mark.parametrize(
    "mode, how",
    [
        (0o644, "readable"),
        (0o640, "readable"),
        (0o604, "readable"),
        (0o620, "writable"),
        (0o602, "writable"),
        (0o666, "readable and writable"),
        (0o610, "accessible"),
        (0o601, "accessible"),
    ],
)
def test_loose_modes_refused(tmp_path, mode, how):
    p = make(tmp_path / "wg0.conf", b"x", mode)
    expected = f"{p} is {how} by others (mode {mode:04o}): chmod 600 {p}"
    with pytest.raises(InsecureFileError) as e:
        check_private_file(p)
    assert str(e.value) == expected
    with pytest.raises(InsecureFileError) as e:
        read_private_file(p)
    assert str(e.value) == expected


def test_message_quotes_awkward_path(tmp_path):
    p = make(tmp_path / "my file", b"x", 0o644)
    with pytest.raises(InsecureFileError, match="chmod 600 '.*my file'$"):
        check_private_file(p)


def test_message_never_shows_contents(tmp_path):
    p = make(tmp_path / "k", encode_key(KEY).encode(), 0o644)
    with pytest.raises(InsecureFileError) as e:
        read_key_file(p)
    assert encode_key(KEY) not in str(e.value)


def test_owner_rules_on_stat_results():
    def fake(uid, mode=0o100600):
        return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))

    assert _refusal("f", fake(1000), 1000) is None  # ours
    assert _refusal("f", fake(0), 1000) is None  # root's
    assert _refusal("f", fake(1001), 1000) == "f is owned by uid 1001, not by uid 1000 or root"
    assert _refusal("f", fake(1001), 0) == "f is owned by uid 1001, not by uid 0 or root"
    assert _refusal("f", fake(0, mode=0o040700), 0) == "f is not a regular file"


def test_file_of_another_user_refused(tmp_path, monkeypatch):
    p = make(tmp_path / "k", b"x", 0o600)
    if os.geteuid() == 0:
        os.chown(p, 65534, 65534)  # nobody
        owner = 65534
    else:
        owner = os.getuid()
        monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    with pytest.raises(InsecureFileError, match=f"owned by uid {owner}"):
        check_private_file(p)
    with pytest.raises(InsecureFileError, match=f"owned by uid {owner}"):
        read_private_file(p)


def test_fifo_refused_without_blocking(tmp_path):
    p = tmp_path / "fifo"
    os.mkfifo(p, 0o600)
    with pytest.raises(InsecureFileError, match="not a regular file"):
        read_private_file(p)


def test_missing_file_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        check_private_file(tmp_path / "nope")


def test_write_creates_0600_and_replaces(tmp_path):
    p = tmp_path / "wg0.conf"
    write_private_file(p, "first\n")
    assert p.read_text() == "first\n"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    write_private_file(p, b"second\n")
    assert p.read_bytes() == b"second\n"
    assert os.listdir(tmp_path) == ["wg0.conf"]  # no temporary left behind


def test_write_narrows_an_existing_loose_file(tmp_path):
    p = make(tmp_path / "wg0.conf", b"old", 0o644)
    write_private_file(p, b"new")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    check_private_file(p)


def test_write_is_private_even_with_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        write_private_file(tmp_path / "k", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600


def test_write_never_exposes_wider_modes(tmp_path, monkeypatch):
    """Every file the writer opens is created 0600 with O_EXCL (no reuse of a planted file)."""
    seen = []
    real_open = os.open

    def spy(path, flags, mode=0o777, **kw):
        if flags & os.O_CREAT:
            seen.append((flags, mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", spy)
    write_private_file(tmp_path / "k", b"x")
    assert seen and all(mode == 0o600 and flags & os.O_EXCL for flags, mode in seen)


def test_failed_write_leaves_target_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "k"
    write_private_file(p, b"keep")

    def broken_fsync(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_private_file(p, b"lost")
    assert p.read_bytes() == b"keep"
    assert os.listdir(tmp_path) == ["k"]


def test_read_key_file(tmp_path):
    p = make(tmp_path / "private.key", (encode_key(KEY) + "\n").encode(), 0o600)
    assert read_key_file(p) == KEY


@pytest.mark.parametrize(
    "content",
    [b"", b"not base64!\n", encode_key(KEY[:31]).encode(), b"\xff\xfe", (encode_key(KEY) + "A").encode()],
)
def test_bad_key_file(tmp_path, content):
    p = make(tmp_path / "private.key", content, 0o600)
    with pytest.raises(KeyFileError) as e:
        read_key_file(p)
    assert str(e.value) == f"{p} does not hold a base64 32-byte key"


def test_key_file_permissions_checked(tmp_path):
    p = make(tmp_path / "private.key", encode_key(KEY).encode(), 0o640)
    with pytest.raises(InsecureFileError):
        read_key_file(p)


def test_key_file_round_trip_with_writer(tmp_path):
    p = tmp_path / "private.key"
    write_private_file(p, encode_key(KEY) + "\n")
    assert read_key_file(p) == KEY
