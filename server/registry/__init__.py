"""The server's registry: one place for its state (issues 10, 11, 12, 15, 16).

    reg = open_registry("/etc/wireguard/wg0.db")          # SQLite, the default
    reg = open_registry("postgresql://tunnel@db/tunnel")  # shared by several gateways

The interface is `Registry` (base.py); the values are in model.py.
"""

from __future__ import annotations

from .base import Registry
from .model import (
    Client,
    Conflict,
    Gateway,
    NotFound,
    PeerEndpoint,
    Policy,
    RegistryError,
    RegistryUnavailable,
    ServerSettings,
    Session,
    Snapshot,
    User,
    check_name,
    split_endpoint,
)

__all__ = [
    "Client", "Conflict", "Gateway", "NotFound", "PeerEndpoint", "Policy", "Registry", "RegistryError",
    "RegistryUnavailable", "ServerSettings", "Session", "Snapshot", "User", "check_name", "is_postgres",
    "open_registry", "split_endpoint",
]


def is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def open_registry(location: str, *, create: bool = True) -> Registry:
    """A PostgreSQL URL or the path of a SQLite file (created, 0600, unless create=False)."""
    if is_postgres(location):
        from .postgres import PostgresRegistry

        return PostgresRegistry(location)
    if "://" in location:
        raise RegistryError(f"registry {location.split('://')[0]}://...: give a file path or a postgresql:// URL")
    from .sqlite import SqliteRegistry

    return SqliteRegistry(location, create=create)
