"""The registry's tables, one list of statements per schema version.

Rules kept here:
- SQL that SQLite and PostgreSQL both take as it is (TEXT, BIGINT, DOUBLE
  PRECISION, INTEGER 0/1 for booleans): one schema, no dialect branches;
- a version is never edited once released: a change is a new entry in
  MIGRATIONS, applied in order inside one transaction with meta's
  schema_version, so a half-migrated registry cannot exist;
- UNIQUE constraints are the last guard behind the allocation done under
  the write lock: two clients can never share a name, key or address.
"""

from __future__ import annotations

SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    revision BIGINT NOT NULL
)"""

MIGRATIONS: list[list[str]] = [
    # 1: the registry of issues 10-16
    [
        """CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL                     -- JSON
        )""",
        """CREATE TABLE clients (
            name TEXT PRIMARY KEY,
            public_key TEXT NOT NULL UNIQUE,
            preshared_key TEXT,
            private_key TEXT,                       -- only when the server generated it
            ipv4 TEXT UNIQUE,
            ipv6 TEXT UNIQUE,
            created DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            disabled INTEGER NOT NULL DEFAULT 0,
            options TEXT NOT NULL DEFAULT '{}'      -- JSON: per-client choices (split tunnel, ...)
        )""",
        """CREATE TABLE client_groups (
            client TEXT NOT NULL REFERENCES clients(name) ON DELETE CASCADE,
            grp TEXT NOT NULL,
            PRIMARY KEY (client, grp)
        )""",
        """CREATE TABLE policy (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            text TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            version BIGINT NOT NULL,
            applied_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            totp_secret TEXT,
            disabled INTEGER NOT NULL DEFAULT 0,
            created DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE user_groups (
            user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            grp TEXT NOT NULL,
            PRIMARY KEY (user_name, grp)
        )""",
        """CREATE TABLE login_failures (
            subject TEXT NOT NULL,                  -- user:NAME or client:PUBKEY
            at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX login_failures_by_subject ON login_failures (subject, at)",
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            user_name TEXT NOT NULL,
            client TEXT NOT NULL,
            gateway TEXT,
            started DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            idle_timeout DOUBLE PRECISION,
            last_activity DOUBLE PRECISION NOT NULL,
            rx_bytes BIGINT NOT NULL DEFAULT 0,
            tx_bytes BIGINT NOT NULL DEFAULT 0,
            ended_at DOUBLE PRECISION,
            end_reason TEXT
        )""",
        "CREATE INDEX sessions_running ON sessions (ended_at, client)",
        """CREATE TABLE peer_endpoints (
            public_key TEXT PRIMARY KEY,
            endpoint TEXT NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            gateway TEXT
        )""",
        """CREATE TABLE gateways (
            name TEXT PRIMARY KEY,
            endpoint TEXT,
            last_heartbeat DOUBLE PRECISION,
            ha_role TEXT,
            ha_state TEXT,
            options TEXT NOT NULL DEFAULT '{}'      -- JSON
        )""",
    ],
    # 2: user sessions across gateways (issue 11): a session's groups, a TOTP step used once
    # registry-wide, and the lockouts every gateway honours
    [
        "ALTER TABLE sessions ADD COLUMN groups TEXT NOT NULL DEFAULT '[]'",  # a JSON list
        "ALTER TABLE users ADD COLUMN totp_last_step BIGINT",
        """CREATE TABLE login_locks (
            subject TEXT PRIMARY KEY,               -- user:NAME or client:PUBKEY
            until DOUBLE PRECISION NOT NULL
        )""",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)
