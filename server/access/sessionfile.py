"""This gateway's login sessions in a file (IFACE.sessions.json, 0600), so a restart keeps them.

The session core (server/auth/sessions.py) keeps its sessions in a SessionStore; this one is
memory written through to a file: after `tunnel server up` restarts, SessionManager.resume()
finds them, re-admits the live ones (idle and lifetime still counted from before) and ends the
others with their accounting Stop.

Rules kept here:
- the file is replaced atomically and is private (tunnel/secrets.py); a file that cannot be
  read is logged and treated as empty, never a crash at start-up;
- a tick updates every session every second: those updates are written at most every
  FLUSH_EVERY seconds, a new or ended session at once.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import threading
import time

from server.auth.backend import ClientInfo
from server.auth.sessions import Session
from tunnel.secrets import read_private_file, write_private_file

log = logging.getLogger("tunnel.auth")

FLUSH_EVERY = 10.0


def _to_json(s: Session) -> dict:
    d = dataclasses.asdict(s)
    d["groups"] = list(s.groups)
    d["accounting_class"] = [base64.b64encode(c).decode() for c in s.accounting_class]
    return d


def _from_json(d: dict) -> Session:
    d = dict(d)
    d["client"] = ClientInfo(**d["client"])
    d["groups"] = tuple(d.get("groups", ()))
    d["accounting_class"] = tuple(base64.b64decode(c) for c in d.get("accounting_class", ()))
    return Session(**d)


class SessionFile:
    """server.auth.sessions.SessionStore kept in PATH."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._dirty = False
        self._written = 0.0
        try:
            data = json.loads(read_private_file(path))
            self._sessions = {s.client.name: s for s in (_from_json(x) for x in data.get("sessions", []))}
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - a bad file must not stop the server
            log.warning("%s: login sessions not restored: %s", path, exc)

    def get(self, client: str) -> Session | None:
        return self._sessions.get(client)

    def put(self, session: Session) -> None:
        with self._lock:
            new = session.client.name not in self._sessions or \
                self._sessions[session.client.name].session_id != session.session_id
            self._sessions[session.client.name] = session
            self._dirty = True
        self.flush(force=new)

    def remove(self, client: str) -> None:
        with self._lock:
            if self._sessions.pop(client, None) is None:
                return
            self._dirty = True
        self.flush(force=True)

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    def flush(self, force: bool = False) -> None:
        with self._lock:
            if not self._dirty or (not force and time.monotonic() - self._written < FLUSH_EVERY):
                return
            text = json.dumps({"version": 1, "sessions": [_to_json(s) for s in self._sessions.values()]})
            self._dirty = False
            self._written = time.monotonic()
        try:
            write_private_file(self.path, text)
        except OSError as exc:
            log.warning("%s: login sessions not saved: %s", self.path, exc)
