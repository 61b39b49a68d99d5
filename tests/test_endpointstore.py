"""The endpoint stores behind session resumption (no root): the private file and the registry's table.

The file must survive a kill at any moment whole: a writer started and
SIGKILLed again and again mid-write leaves the old file or the new one,
never a torn one, and the next load removes the temporary files it left.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time

import pytest

from server.endpointstore import RegistryEndpointStore
from server.registry import RegistryUnavailable, open_registry
from tunnel.endpointstore import (
    EndpointStoreError,
    FileEndpointStore,
    SeenEndpoint,
    default_path,
    endpoint_text,
    parse_endpoint_text,
)
from tunnel.protocol.crypto import DH_GENERATE, DH_PUBKEY, encode_key

NOW = 1_800_000_000.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _key() -> bytes:
    return DH_PUBKEY(DH_GENERATE(os.urandom(32)))


def _store(path) -> FileEndpointStore:
    return FileEndpointStore(str(path), wall_clock=lambda: NOW)


@pytest.mark.parametrize("endpoint, text", [
    (("192.0.2.7", 51820), "192.0.2.7:51820"),
    (("2001:db8::7", 51820, 0, 0), "[2001:db8::7]:51820"),
    (("fe80::7", 1, 0, 3), "[fe80::7%3]:1"),
])
def test_endpoint_text_round_trip(endpoint, text):
    assert endpoint_text(endpoint) == text
    assert parse_endpoint_text(text) == endpoint


@pytest.mark.parametrize("bad", ["", "192.0.2.7", "192.0.2.7:0", "192.0.2.7:70000", "host:1", "[192.0.2.7]:1",
                                 "2001:db8::1:51820", "[fe80::1%eth0]:1", "[2001:db8::1]:x"])
def test_endpoint_text_refuses_what_is_not_an_address(bad):
    with pytest.raises(ValueError):
        parse_endpoint_text(bad)


def test_default_path_is_var_lib_unless_a_state_directory_is_chosen(monkeypatch):
    monkeypatch.delenv("TUNNEL_STATE_DIR", raising=False)
    assert default_path("wg0") == "/var/lib/tunnel/wg0.endpoints.json"
    assert default_path("wg0", "/tmp/x") == "/tmp/x/wg0.endpoints.json"
    monkeypatch.setenv("TUNNEL_STATE_DIR", "/tmp/y")
    assert default_path("wg0") == "/tmp/y/wg0.endpoints.json"


def test_file_round_trip_newest_wins_window_and_retention(tmp_path):
    path = tmp_path / "lib" / "wg0.endpoints.json"  # the directory is made, private
    k1, k2, k3 = _key(), _key(), _key()
    store = _store(path)
    assert store.load(0.0) == []
    store.save([SeenEndpoint(k1, ("192.0.2.1", 1000), NOW - 10),
                SeenEndpoint(k2, ("2001:db8::2", 2000, 0, 0), NOW - 400)])
    store.save([SeenEndpoint(k1, ("192.0.2.9", 1009), NOW - 5),  # roamed
                SeenEndpoint(k2, ("2001:db8::9", 9, 0, 0), NOW - 900),  # older than what is stored: kept out
                SeenEndpoint(k3, ("192.0.2.3", 3000), NOW - 2 * 86400)])  # past retention: dropped
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(path.parent).st_mode & 0o777 == 0o700
    again = _store(path)  # a new process reads it
    assert again.load(NOW - 300) == [SeenEndpoint(k1, ("192.0.2.9", 1009), NOW - 5)]
    assert sorted(r.endpoint[0] for r in again.load(0.0)) == ["192.0.2.9", "2001:db8::2"]
    on_disk = json.loads(path.read_text())
    assert on_disk["version"] == 1 and set(on_disk["peers"]) == {encode_key(k1), encode_key(k2)}


def test_unreadable_malformed_or_open_file_is_a_warning_and_an_empty_store(tmp_path, caplog):
    path = tmp_path / "wg0.endpoints.json"
    good = encode_key(_key())
    path.write_text(json.dumps({"version": 1, "peers": {
        good: {"endpoint": "192.0.2.1:1", "last_seen": NOW},
        "not-a-key": {"endpoint": "192.0.2.1:1", "last_seen": NOW},
        encode_key(_key()): {"endpoint": "somewhere", "last_seen": NOW},
        encode_key(_key()): "nonsense"}}))
    os.chmod(path, 0o600)
    with caplog.at_level(logging.WARNING, logger="tunnel"):
        assert [encode_key(r.public_key) for r in _store(path).load(0.0)] == [good]
    assert "3 malformed record(s) skipped" in caplog.text
    caplog.clear()
    path.write_text('{"version": 1, "peers": {')  # not JSON (the atomic write never leaves this)
    with caplog.at_level(logging.WARNING, logger="tunnel"):
        assert _store(path).load(0.0) == []
    assert "cannot be read" in caplog.text
    caplog.clear()
    path.write_text("{}")
    os.chmod(path, 0o666)  # anyone could point our handshakes anywhere: refused
    with caplog.at_level(logging.WARNING, logger="tunnel"):
        assert _store(path).load(0.0) == []
    assert "writable by others" in caplog.text


def test_a_write_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = _store(blocker / "sub" / "wg0.endpoints.json")
    with pytest.raises(EndpointStoreError, match=r"^cannot write .*wg0\.endpoints\.json: Not a directory$"):
        store.save([SeenEndpoint(_key(), ("192.0.2.1", 1), NOW)])


def test_leftover_temporary_files_of_a_killed_writer_are_removed_at_load(tmp_path):
    path = tmp_path / "wg0.endpoints.json"
    _store(path).save([SeenEndpoint(_key(), ("192.0.2.1", 1), NOW)])
    torn = tmp_path / ".wg0.endpoints.json.0123456789ab.tmp"
    torn.write_text('{"version": 1, "pe')
    other = tmp_path / ".wg1.endpoints.json.0123456789ab.tmp"  # another interface's: not ours to touch
    other.write_text("")
    assert len(_store(path).load(0.0)) == 1
    assert not torn.exists() and other.exists()


# The writer runs in an interpreter of its own: a fork of a test process with threads (pytest-xdist's)
# may deadlock in the child on a lock some thread held at the fork, and then never write.
_WRITER = r"""
import sys
from tunnel.endpointstore import FileEndpointStore, SeenEndpoint
path, keyfile, now, base = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
keys = [bytes.fromhex(word) for word in open(keyfile).read().split()]
store = FileEndpointStore(path, wall_clock=lambda: now)
print("ready", flush=True)
for n in range(1_000_000):  # whole generations, one after another, until killed
    store.save([SeenEndpoint(k, ("192.0.2.1", 1 + i), base + n / 1000) for i, k in enumerate(keys)])
"""


def test_a_writer_killed_at_any_moment_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "wg0.endpoints.json"
    keys = [_key() for _ in range(2000)]  # ~200 KB a write: kills land mid-write
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(" ".join(k.hex() for k in keys))
    rng = random.Random(7)
    generations: set[float] = set()
    torn = 0  # kills that left a temporary file: they landed mid-write
    # Until kills have landed both mid-write and between writes often enough (a bound against a hang).
    for run in range(200):
        if torn >= 3 and len(generations) >= 5:
            break
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(keyfile), str(NOW),
                                   str(NOW - 1000 + run)], cwd=ROOT, stdout=subprocess.PIPE)
        try:
            assert writer.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.1))
        finally:
            writer.kill()
            writer.wait()
            writer.stdout.close()
        torn += any(n.endswith(".tmp") for n in os.listdir(tmp_path))
        if not path.exists():
            continue  # killed before its first rename: no file yet is "the old file"
        records = _store(path).load(0.0)  # json.load of the whole file
        assert len(records) == len(keys)
        assert len({r.last_seen for r in records}) == 1, "a file mixing two writes"
        generations.add(records[0].last_seen)
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # the load removed them
    assert torn >= 3 and len(generations) >= 5, (torn, len(generations))


# -- the registry's table (server/endpointstore.py) ------------------------------------------


def test_registry_store_keeps_this_gateways_records(registry_location):
    opened = []

    def opener():
        opened.append(open_registry(registry_location))
        return opened[-1]

    k1, k2, k3 = _key(), _key(), _key()
    gw1 = RegistryEndpointStore(opener, gateway="gw1")
    gw2 = RegistryEndpointStore(opener, gateway="gw2")
    try:
        gw1.save([SeenEndpoint(k1, ("192.0.2.1", 1000), NOW - 10),
                  SeenEndpoint(k2, ("2001:db8::2", 2000, 0, 0), NOW - 20),
                  SeenEndpoint(k3, ("192.0.2.3", 3000), NOW - 1000)])
        gw2.save([SeenEndpoint(k2, ("192.0.2.22", 2222), NOW - 5)])  # k2 moved to gw2
        assert gw1.load(NOW - 300) == [SeenEndpoint(k1, ("192.0.2.1", 1000), NOW - 10)]
        assert gw2.load(NOW - 300) == [SeenEndpoint(k2, ("192.0.2.22", 2222), NOW - 5)]
        assert len(gw1.load(0.0)) == 2
        with open_registry(registry_location) as reg:  # as issue 16's take-over will read them
            rows = reg.peer_endpoints(seen_since=NOW - 300)
        assert {r.endpoint for r in rows.values()} == {"192.0.2.1:1000", "192.0.2.22:2222"}
        assert len(opened) == 2  # one connection each, kept
    finally:
        gw1.close()
        gw2.close()


def test_registry_store_unreachable_is_an_endpoint_store_error_and_connects_again():
    calls = []

    def opener():
        calls.append(1)
        raise RegistryUnavailable("registry postgresql://db/tunnel is unreachable: connection refused")

    store = RegistryEndpointStore(opener, gateway="gw1")
    with pytest.raises(EndpointStoreError, match="^registry .* is unreachable: connection refused$"):
        store.save([SeenEndpoint(_key(), ("192.0.2.1", 1), NOW)])
    with pytest.raises(EndpointStoreError):
        store.load(0.0)
    assert len(calls) == 2
