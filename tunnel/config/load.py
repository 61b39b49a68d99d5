"""A wg-quick file on disk to a Config: the one place this package touches a file.

Rules kept here: the file must be private (0600, ours: tunnel/secrets.py);
the interface name comes from the file name, as wg-quick derives it.
"""

from __future__ import annotations

import os
import re

from ..secrets import InsecureFileError, read_private_file
from .model import Config, ConfigError
from .parse import parse_config

_INTERFACE_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")


def interface_name_from_path(path: str | os.PathLike) -> str:
    """The interface name wg-quick derives from a file name: `wg0.conf` -> `wg0`."""
    base = os.path.basename(os.fspath(path))
    stem, dot, ext = base.rpartition(".")
    if not dot or ext != "conf" or not _INTERFACE_NAME.fullmatch(stem):
        raise ConfigError(
            os.fspath(path), None,
            "the file name must be an interface name (1-15 of a-z A-Z 0-9 _ = + . -) followed by .conf",
        )
    return stem


def load_config(path: str | os.PathLike) -> Config:
    """Read, check and parse a private wg-quick file. Raises ConfigError only."""
    filename = os.fspath(path)
    name = interface_name_from_path(filename)
    try:
        data = read_private_file(filename)
    except InsecureFileError as e:
        raise ConfigError(filename, None, str(e), text=str(e)) from None
    except OSError as e:
        raise ConfigError(filename, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(filename, data.count(b"\n", 0, e.start) + 1, "not UTF-8 text") from None
    return parse_config(text, filename=filename, name=name)
