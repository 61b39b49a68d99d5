"""Files that hold secrets: configuration files and key files.

Rules kept here:
- a secret file is accepted only if no group or other permission bit is set and
  it belongs to us or to root; anything else is refused, never merely warned
  about (wg-quick only warns; we would rather not start with a leaked key);
- the check is made on the open file descriptor (fstat) when reading, so the
  file checked is the file read;
- a secret file is written atomically and is never, even for a moment, visible
  with wider permissions than 0600: a temporary file is created 0600 with
  O_EXCL in the same directory, written, fsynced and renamed over the target;
- no message ever contains the file's contents.
"""

from __future__ import annotations

import os
import shlex
import stat

from tunnel.protocol.crypto import KeyError_, decode_key

__all__ = [
    "InsecureFileError",
    "KeyFileError",
    "check_private_file",
    "read_private_file",
    "write_private_file",
    "read_key_file",
]

_PRIVATE_MODE = 0o600
_GROUP_OTHER = 0o077
_READ_BITS = 0o044
_WRITE_BITS = 0o022


class InsecureFileError(PermissionError):
    """A secret file others can read or change; the message says how to fix it."""


class KeyFileError(ValueError):
    """A key file that does not hold one base64 32-byte key."""


def _refusal(path: str, st: os.stat_result, euid: int) -> str | None:
    """Why the file described by `st` may not hold secrets, or None if it may."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    loose = mode & _GROUP_OTHER
    if loose:
        readable = bool(loose & _READ_BITS)
        writable = bool(loose & _WRITE_BITS)
        if readable and writable:
            how = "readable and writable"
        elif readable:
            how = "readable"
        elif writable:
            how = "writable"
        else:
            how = "accessible"
        quoted = shlex.quote(path)
        return f"{path} is {how} by others (mode {mode:04o}): chmod 600 {quoted}"
    # Another ordinary user who owns the file could rewrite it (hooks run as
    # root, keys get replaced) whatever its mode says today.
    if st.st_uid not in (euid, 0):
        return f"{path} is owned by uid {st.st_uid}, not by uid {euid} or root"
    return None


def check_private_file(path: str | os.PathLike) -> os.stat_result:
    """Stat `path` (following symlinks) and refuse it unless it is a private file.

    Raises InsecureFileError, or OSError (e.g. FileNotFoundError) from stat.
    """
    name = os.fspath(path)
    st = os.stat(name)
    reason = _refusal(name, st, os.geteuid())
    if reason:
        raise InsecureFileError(reason)
    return st


def read_private_file(path: str | os.PathLike) -> bytes:
    """The contents of a private file, checked on the descriptor that is read."""
    name = os.fspath(path)
    # O_NONBLOCK so that a FIFO put in place of the file cannot hang us before
    # the regular-file check refuses it.
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        reason = _refusal(name, os.fstat(fd), os.geteuid())
        if reason:
            raise InsecureFileError(reason)
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_private_file(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace `path` with `data` atomically, mode 0600, owned by us."""
    name = os.fspath(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory, base = os.path.split(name)
    directory = directory or "."
    tmp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _PRIVATE_MODE)
    try:
        try:
            # The umask can only have narrowed 0600; set it exactly so the
            # owner can read back what we wrote.
            os.fchmod(fd, _PRIVATE_MODE)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_key_file(path: str | os.PathLike) -> bytes:
    """The 32 raw bytes of a checked key file holding one base64 key (as `wg genkey` writes)."""
    name = os.fspath(path)
    data = read_private_file(name)
    try:
        return decode_key(data.decode("ascii"))
    except (UnicodeDecodeError, KeyError_):
        raise KeyFileError(f"{name} does not hold a base64 32-byte key") from None
