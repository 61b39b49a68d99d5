"""Where each peer was last seen, kept across restarts: the store behind session resumption.

A restarted daemon has no sessions and, for a peer without an Endpoint in
its config (a road-warrior client), no address to reach it at; a stock
client only notices after its own timers fire (~16 s). So the daemon keeps
each peer's last authenticated endpoint and when it was seen, and at start
initiates to the recent ones (tunnel/resume.py).

    EndpointStore          the interface: load(seen_since), save(records), close()
    FileEndpointStore      `tunnel up` of any config: one private JSON file
    (server/endpointstore.py: the registry's peer_endpoints table, handed in
    by the server role through Role.endpoint_store)

Rules kept here:
- a store is used from one thread only (the recorder's, tunnel/endpointrecorder.py):
  its calls may block (a disk, a database) and never run on the data plane's;
- the file is replaced atomically (a temporary file fsynced, renamed, the
  directory fsynced: tunnel/secrets.py), so a kill at any moment leaves the
  old file or the new one, never a torn one; temporary files a killed writer
  left are removed at the next load;
- the file lives where a reboot keeps it (/var/lib/tunnel: systemd's
  StateDirectory), not beside the undo journal in /run/tunnel, which a
  reboot empties; tests and benchmarks that choose a state directory
  (Options.state_dir, TUNNEL_STATE_DIR) get it there instead, so a run
  never writes outside its own folder;
- what cannot be read is not fatal: an unreadable file is one warning and an
  empty store, a malformed entry is skipped; expected failures raise
  EndpointStoreError with one line, and the caller keeps serving.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from .protocol.constants import KEY_LEN
from .protocol.crypto import KeyError_, decode_key, encode_key
from .secrets import InsecureFileError, read_private_file, write_private_file

log = logging.getLogger("tunnel")

DEFAULT_DIR = "/var/lib/tunnel"
FILE_VERSION = 1
# Records older than this are dropped when the file is written: resumption
# looks minutes back, so a day keeps the file the size of the peers in use.
RETAIN_SECONDS = 86400.0


class EndpointStoreError(RuntimeError):
    """The store could not be read or written now; the message says where and why, in one line."""


@dataclass(frozen=True)
class SeenEndpoint:
    """A peer's last authenticated endpoint (as recvmsg reports it) and the wall time it was seen."""

    public_key: bytes
    endpoint: tuple
    last_seen: float


class EndpointStore(Protocol):
    where: str  # for messages

    def load(self, seen_since: float) -> list[SeenEndpoint]:
        """The records seen at or after wall time `seen_since`."""

    def save(self, records: Sequence[SeenEndpoint]) -> None:
        """Add or replace these peers' records, durably, all or none."""

    def close(self) -> None: ...


# -- the text form of an endpoint (the file's and the registry's) ----------------------------


def endpoint_text(endpoint: tuple) -> str:
    """'192.0.2.1:51820', '[2001:db8::1]:51820', '[fe80::1%3]:51820' (an IPv6 scope by index)."""
    host, port = endpoint[0], endpoint[1]
    if ":" not in host:
        return f"{host}:{port}"
    scope = endpoint[3] if len(endpoint) > 3 else 0
    return f"[{host}%{scope}]:{port}" if scope and "%" not in host else f"[{host}]:{port}"


def parse_endpoint_text(text: str) -> tuple:
    """The endpoint tuple of `endpoint_text`'s form (IPv6 as recvmsg reports it); ValueError if it is not one."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"not an endpoint: {text!r}")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        address, _, scope = host[1:-1].partition("%")
        ipaddress.IPv6Address(address)
        if scope and not scope.isdigit():
            raise ValueError(f"not an endpoint: {text!r}")
        return (address, port, 0, int(scope or 0))
    ipaddress.IPv4Address(host)
    return (host, port)


# -- the file ---------------------------------------------------------------------------------


def default_path(ifname: str, state_dir: str | None = None) -> str:
    """/var/lib/tunnel/IFACE.endpoints.json, or in the state directory a test or bench chose."""
    chosen = state_dir or os.environ.get("TUNNEL_STATE_DIR")
    return os.path.join(chosen or DEFAULT_DIR, f"{ifname}.endpoints.json")


class FileEndpointStore:
    def __init__(self, path: str, *, wall_clock: Callable[[], float] = time.time,
                 retain: float = RETAIN_SECONDS):
        self.path = path
        self.where = path
        self.wall_clock = wall_clock
        self.retain = retain
        self._records: dict[bytes, SeenEndpoint] | None = None  # the file's content, once read

    def load(self, seen_since: float) -> list[SeenEndpoint]:
        records = self._read()
        return [r for r in records.values() if r.last_seen >= seen_since]

    def save(self, records: Sequence[SeenEndpoint]) -> None:
        merged = dict(self._read())
        for r in records:
            old = merged.get(r.public_key)
            if old is None or r.last_seen >= old.last_seen:
                merged[r.public_key] = r
        oldest = self.wall_clock() - self.retain
        merged = {k: r for k, r in merged.items() if r.last_seen >= oldest}
        body = {"version": FILE_VERSION, "peers": {
            encode_key(k): {"endpoint": endpoint_text(r.endpoint), "last_seen": round(r.last_seen, 3)}
            for k, r in sorted(merged.items(), key=lambda kv: kv[1].last_seen, reverse=True)}}
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            write_private_file(self.path, json.dumps(body, indent=1) + "\n")
        except OSError as exc:
            raise EndpointStoreError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._records = merged

    def close(self) -> None:
        self._records = None

    def _read(self) -> dict[bytes, SeenEndpoint]:
        if self._records is None:
            self._remove_leftovers()
            self._records = self._parse()
        return self._records

    def _parse(self) -> dict[bytes, SeenEndpoint]:
        try:
            data = json.loads(read_private_file(self.path))
        except FileNotFoundError:
            return {}
        except (OSError, InsecureFileError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.warning("endpoints: %s cannot be read (%s): starting without it", self.path, why)
            return {}
        peers = data.get("peers") if isinstance(data, dict) else None
        if not isinstance(peers, dict):
            log.warning("endpoints: %s holds no peers: starting without it", self.path)
            return {}
        out: dict[bytes, SeenEndpoint] = {}
        skipped = 0
        for key_text, entry in peers.items():
            try:
                key = decode_key(key_text)
                if len(key) != KEY_LEN:
                    raise ValueError("key size")
                out[key] = SeenEndpoint(key, parse_endpoint_text(entry["endpoint"]), float(entry["last_seen"]))
            except (KeyError_, ValueError, TypeError, KeyError):
                skipped += 1
        if skipped:
            log.warning("endpoints: %s: %d malformed record(s) skipped", self.path, skipped)
        return out

    def _remove_leftovers(self) -> None:
        """Temporary files of a writer killed before its rename (write_private_file's names)."""
        directory, base = os.path.split(self.path)
        pattern = re.compile(r"\." + re.escape(base) + r"\.[0-9a-f]{12}\.tmp")
        try:
            names = os.listdir(directory or ".")
        except OSError:
            return
        for name in names:
            if pattern.fullmatch(name):
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass
