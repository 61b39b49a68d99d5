"""IFACE.cache.json: the daemon's last snapshot of the registry, kept to serve while it is unreachable.

Rules kept here: no private key is stored (the server's is in IFACE.conf and
is put back on load; clients' are not needed to serve); the file is private
(0600) and replaced atomically; a cache that cannot be read is ignored
(the daemon then serves IFACE.conf as it is). Everything the reconciler's
listeners act on is kept (the policy, the running sessions, the gateways), so
a gateway restarted while the registry is down enforces what it enforced.
User accounts and login failures are not: logins need the registry anyway.
"""

from __future__ import annotations

import dataclasses
import json

from server.layout import Paths
from server.registry import Client, Gateway, Policy, ServerSettings, Session, Snapshot
from tunnel.secrets import read_private_file, write_private_file


_CLIENT_FIELDS = tuple(f.name for f in dataclasses.fields(Client))


def save(p: Paths, snap: Snapshot) -> None:
    settings = dataclasses.asdict(snap.settings)
    settings["private_key"] = ""
    data = {"revision": snap.revision, "settings": settings, "clients": [],
            "policy": dataclasses.asdict(snap.policy) if snap.policy is not None else None,
            "sessions": [dataclasses.asdict(x) for x in snap.sessions],
            "gateways": [dataclasses.asdict(g) for g in snap.gateways]}
    # One client a line, each by the C encoder (indent= would take the pure-Python
    # one, and dataclasses.asdict deep-copies: a second for 10,000 clients).
    clients = [json.dumps({f: getattr(c, f) for f in _CLIENT_FIELDS} | {"private_key": None}) for c in snap.clients]
    head = json.dumps(data, indent=1)
    cut = head.index('"clients": []') + len('"clients": [')
    text = head[:cut] + ("\n  " + ",\n  ".join(clients) + "\n " if clients else "") + head[cut:] + "\n"
    try:
        if read_private_file(p.cache).decode("utf-8") == text:
            return  # each periodic pass would otherwise rewrite (and fsync) the same bytes
    except (OSError, UnicodeDecodeError):
        pass
    write_private_file(p.cache, text)


def load(p: Paths, private_key: str) -> Snapshot | None:
    try:
        data = json.loads(read_private_file(p.cache))
        settings = dict(data["settings"], private_key=private_key)
        for k in ("pools", "dns", "sites"):
            settings[k] = tuple(settings[k])
        clients = tuple(Client(**dict(c, groups=tuple(c["groups"]))) for c in data["clients"])
        policy = Policy(**data["policy"]) if data.get("policy") else None  # caches before this had none
        sessions = tuple(Session(**dict(x, groups=tuple(x.get("groups", ())))) for x in data.get("sessions", ()))
        return Snapshot(revision=int(data["revision"]), settings=ServerSettings(**settings), clients=clients,
                        policy=policy, sessions=sessions, gateways=tuple(Gateway(**g) for g in data["gateways"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None
