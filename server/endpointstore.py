"""The server's endpoint store: the registry's peer_endpoints table (tunnel/endpointstore.py's interface).

`tunnel server up` hands this in (ServerRole.endpoint_store) instead of the
interface's own file: the records then live with the clients, in SQLite
beside the config or in the PostgreSQL that several gateways share, where a
gateway taking over another's clients can read them too.

Rules kept here:
- a connection of its own, opened on first use and again after the registry
  was unreachable: the store is called from the endpoint recorder's thread
  only (registries are not shared between threads);
- records are this gateway's: written with its name, and at start only the
  peers last seen by this gateway are resumed, since one that moved to
  another gateway is served there (a handshake from here would pull it
  back); a member of a virtual IP resumes nobody at start (resume_at_start=False): it handshakes
  with every recent peer when it becomes the VIP's holder (server/ha), and not before;
- an unreachable or refusing registry is EndpointStoreError in one line: the
  recorder keeps the records and tries again, the interface keeps serving.
"""

from __future__ import annotations

from typing import Callable, Sequence

from server.registry import Registry, RegistryError
from tunnel.endpointstore import EndpointStoreError, SeenEndpoint, endpoint_text, parse_endpoint_text
from tunnel.protocol.crypto import KeyError_, decode_key, encode_key


class RegistryEndpointStore:
    def __init__(self, opener: Callable[[], Registry], *, gateway: str | None = None, where: str = "the registry",
                 resume_at_start: bool = True):
        self._open = opener
        self.gateway = gateway
        self.resume_at_start = resume_at_start
        self.where = where
        self._registry: Registry | None = None

    def _reg(self) -> Registry:
        if self._registry is None:
            self._registry = self._open()
        return self._registry

    def load(self, seen_since: float) -> list[SeenEndpoint]:
        if not self.resume_at_start:
            return []
        try:
            rows = self._reg().peer_endpoints(seen_since=seen_since)
        except RegistryError as exc:
            self._drop()
            raise EndpointStoreError(str(exc)) from None
        out = []
        for row in rows.values():
            if row.gateway != self.gateway:
                continue
            try:
                out.append(SeenEndpoint(decode_key(row.public_key), parse_endpoint_text(row.endpoint), row.last_seen))
            except (KeyError_, ValueError):
                continue  # not one we wrote: nothing to resume from it
        return out

    def save(self, records: Sequence[SeenEndpoint]) -> None:
        entries = [(encode_key(r.public_key), endpoint_text(r.endpoint), r.last_seen) for r in records]
        try:
            self._reg().record_endpoints(entries, gateway=self.gateway)
        except RegistryError as exc:
            self._drop()
            raise EndpointStoreError(str(exc)) from None

    def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if self._registry is not None:
            try:
                self._registry.close()
            except RegistryError:
                pass
            self._registry = None
