"""A login endpoint on loopback with local accounts, for the HTTP, browser and `tunnel login` tests.

    alice / wonderland!   groups staff, ops
    bob   / builder-bob   group admins, with TOTP (env.bob_secret)
The client is 127.0.0.1 ("laptop"); env.clients maps addresses to clients.
"""

from __future__ import annotations

import contextlib
import http.client
import json
from dataclasses import dataclass
from typing import Iterator

from server.auth import passwords, totp
from server.auth.accounts import Account, MemoryAccountStore
from server.auth.backend import ClientInfo
from server.auth.local import LocalBackend
from server.auth.service import LoginService
from server.auth.web import LoginEndpoint

from .clock import FakeClock

LAPTOP = ClientInfo("laptop", "bGFwdG9wLWtleQ==", "127.0.0.1")


@dataclass
class Env:
    service: LoginService
    endpoint: LoginEndpoint
    store: MemoryAccountStore
    bob_secret: str
    clock: FakeClock
    clients: dict

    @property
    def port(self) -> int:
        return self.endpoint.port

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                content_type: str = "application/json") -> tuple[int, dict, str]:
        """(status, headers, body text) from one plain HTTP request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            data = None
            h = dict(headers or {})
            if body is not None:
                data = body if isinstance(body, (bytes, str)) else json.dumps(body)
                data = data.encode() if isinstance(data, str) else data
                h.setdefault("Content-Type", content_type)
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
        finally:
            conn.close()

    def api(self, method: str, path: str, body=None, **kw) -> tuple[int, dict]:
        status, _headers, text = self.request(method, path, body, **kw)
        return status, json.loads(text)


@contextlib.contextmanager
def running_endpoint(clock: FakeClock | None = None, **options) -> Iterator[Env]:
    clock = clock or FakeClock()
    store = MemoryAccountStore()
    # Cheaper scrypt than the default (2^15) keeps these tests quick; the format and checks are the same.
    store.add(Account("alice", passwords.hash_password("wonderland!", log2_n=12), ("staff", "ops")))
    bob_secret = totp.new_secret()
    store.add(Account("bob", passwords.hash_password("builder-bob", log2_n=12), ("admins",), bob_secret))
    service = LoginService(LocalBackend(store), clock=clock, send_accounting=False)
    clients = {"127.0.0.1": LAPTOP}
    endpoint = LoginEndpoint(service, clients.get, "127.0.0.1", 0, **options)
    endpoint.start()
    try:
        yield Env(service, endpoint, store, bob_secret, clock, clients)
    finally:
        endpoint.stop()
        service.close()
