"""A config error names the line and what is wrong, never a key (issue 9, item 6).

A key pasted on a line of its own, into the wrong key or onto the wrong line
must not reach stderr or the journal: the message says which line and why,
and describes a value that may be key material instead of quoting it. Checked
on the parser's messages, then through the command line (`tunnel up`, and
`tunnel server` reading an old server's wg0.conf), with no root needed.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from tunnel.config import ConfigError, parse_config
from tunnel.protocol.crypto import DH_PUBKEY, encode_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIV = bytes(range(1, 33))
KEY = encode_key(PRIV)  # the secret that must never be printed
PUB = encode_key(DH_PUBKEY(bytes(range(2, 34))))


def windows(key: str, width: int = 10) -> list[str]:
    """Every WIDTH-character piece of KEY (base64) and of its hex form: none may show."""
    texts = [key, base64.b64decode(key).hex()]
    return [t[i:i + width] for t in texts for i in range(len(t) - width + 1)]


def assert_no_key(text: str) -> None:
    leaked = [w for w in windows(KEY) if w in text]
    assert not leaked, f"key material {leaked[:3]} in: {text}"


def interface(extra: str) -> str:
    return f"[Interface]\nPrivateKey = {encode_key(bytes(range(3, 35)))}\n{extra}\n"


def peer(extra: str) -> str:
    return interface("") + f"\n[Peer]\nPublicKey = {PUB}\n{extra}\n"


# (config text, line of the mistake, words the message must hold)
MISTAKES = [
    (interface(KEY), 3, "looks like a key"),  # the report of issue 9: a key on a line of its own
    (interface(KEY[:-1]), 3, "looks like a key"),  # without its padding
    (interface(f"{KEY} = 1"), 3, "looks like a key"),
    (interface(f"ListenPort = {KEY}"), 3, "ListenPort"),
    (interface(f"ListenPort = 51820 {KEY}"), 3, "ListenPort"),
    (interface(f"FwMark = {KEY}"), 3, "FwMark"),
    (interface(f"Address = {KEY}"), 3, "Address"),
    (interface(f"Address = 10.0.0.1/24, {KEY}"), 3, "Address"),
    (interface(f"DNS = {KEY}"), 3, "DNS"),
    (interface(f"MTU = {KEY}"), 3, "MTU"),
    (interface(f"Table = {KEY}/x"), 3, "Table"),
    (interface(f"SaveConfig = {KEY}"), 3, "SaveConfig"),
    (interface(f"[{KEY}]"), 3, "section"),
    (f"{KEY}\n" + interface(""), 1, "looks like a key"),
    (f"ListenPort{KEY} = 1\n" + interface(""), 1, ""),
    (peer(f"AllowedIPs = {KEY}"), 7, "AllowedIPs"),
    (peer(f"Endpoint = {KEY}"), 7, "Endpoint"),
    (peer(f"Endpoint = [{KEY}]:51820"), 7, "Endpoint"),
    (peer(f"Endpoint = {KEY}:51820"), 7, "Endpoint"),
    (peer(f"PersistentKeepalive = {KEY}"), 7, "PersistentKeepalive"),
    (peer(KEY), 7, "looks like a key"),
    (peer(f"PresharedKey = {KEY[:30]}"), 7, "PresharedKey is not a valid"),
]


@pytest.mark.parametrize("text, line, words", MISTAKES, ids=[f"{i}:{m[2] or 'name'}" for i, m in enumerate(MISTAKES)])
def test_the_message_names_the_line_and_shows_no_key(text, line, words):
    with pytest.raises(ConfigError) as e:
        parse_config(text, filename="wg0.conf")
    message = str(e.value)
    assert e.value.line == line, message
    assert message.startswith(f"wg0.conf:{line}: ") and words in message, message
    assert_no_key(message)


def test_harmless_values_are_still_quoted():
    with pytest.raises(ConfigError) as e:
        parse_config(interface("ListenPort = 70000"), filename="wg0.conf")
    assert str(e.value) == "wg0.conf:3: ListenPort: '70000' is not a port (0-65535)"
    with pytest.raises(ConfigError) as e:
        parse_config(interface("Killswitsh = on"), filename="wg0.conf")
    assert str(e.value) == "wg0.conf:3: unknown key 'Killswitsh' in [Interface]"


# --- through the command line ------------------------------------------------------------


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _tunnel(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT, TUNNEL_STATE_DIR=os.path.join(cwd, "state"))
    return subprocess.run([sys.executable, "-m", "tunnel", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60)


def test_tunnel_up_says_which_line_without_the_key(tmp_path):
    path = str(tmp_path / "wg7.conf")
    _write(path, interface("Address = 10.0.0.1/24\n" + KEY))
    r = _tunnel("up", path, cwd=str(tmp_path))
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"tunnel: {path}:4: ") and "looks like a key" in r.stderr, r.stderr
    assert_no_key(r.stderr)


def test_tunnel_server_says_which_line_without_the_key(tmp_path):
    """An old server's wg0.conf (migrated by the first `tunnel server` command) with a stray key line."""
    d = tmp_path / "srv"
    d.mkdir(mode=0o700)
    _write(str(d / "wg0.conf"), interface("ListenPort = 51820\n" + KEY))
    _write(str(d / "wg0.server.json"), '{"endpoint": "vpn.example.com", "pools": ["10.8.0.0/24"]}')
    r = _tunnel("server", "list", "--dir", str(d), "-i", "wg0", cwd=str(tmp_path))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{d / 'wg0.conf'}:4: " in r.stderr and "looks like a key" in r.stderr, r.stderr
    assert_no_key(r.stdout + r.stderr)
