"""The per-source limiter for handshake messages under load (the kernel's
ratelimiter.c, wireguard-go's ratelimiter).

Under load, a handshake message whose mac2 proves the sender owns its
address must still pass this limiter before any X25519 work: one host that
fetched a cookie cannot crowd real handshakes out of the queue.

Rules kept here:
- a token bucket per source: IPv4 by address, IPv6 by /64 (one host
  usually owns a whole /64); RATE messages a second with a burst of BURST;
  a new source starts with a full bucket less the message that created it;
- the table is bounded: past MAX_ENTRIES sources a new one is refused, as
  the kernel refuses when its table is full; entries unused for
  EXPIRE_SECONDS are aged out, at most once a second, so memory follows
  the number of sources seen in the last second;
- time is the caller's monotonic `now`; nothing here reads a clock.
"""

from __future__ import annotations

import ipaddress

from .constants import (
    RATELIMIT_BURST,
    RATELIMIT_EXPIRE_SECONDS,
    RATELIMIT_MAX_ENTRIES,
    RATELIMIT_PER_SECOND,
)

_COST = 1.0 / RATELIMIT_PER_SECOND  # seconds of tokens one message costs
_MAX_TOKENS = _COST * RATELIMIT_BURST


def source_key(endpoint: tuple) -> bytes:
    """What the limit is kept per: an IPv4 address, or an IPv6 /64."""
    host = endpoint[0]
    if "%" in host:
        host = host.split("%", 1)[0]
    addr = ipaddress.ip_address(host)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    packed = addr.packed
    return packed if addr.version == 4 else packed[:8]


class RateLimiter:
    __slots__ = ("_table", "_last_gc", "max_entries")

    def __init__(self, max_entries: int = RATELIMIT_MAX_ENTRIES):
        self._table: dict[bytes, list[float]] = {}  # key -> [tokens (seconds), last time]
        self._last_gc = None
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._table)

    def allow(self, endpoint: tuple, now: float) -> bool:
        if self._last_gc is None or now - self._last_gc >= 1.0:
            self._collect(now)
        key = source_key(endpoint)
        entry = self._table.get(key)
        if entry is None:
            if len(self._table) >= self.max_entries:
                return False
            self._table[key] = [_MAX_TOKENS - _COST, now]
            return True
        tokens = min(_MAX_TOKENS, entry[0] + (now - entry[1]))
        entry[1] = now
        if tokens >= _COST:
            entry[0] = tokens - _COST
            return True
        entry[0] = tokens
        return False

    def _collect(self, now: float) -> None:
        self._last_gc = now
        stale = [k for k, e in self._table.items() if now - e[1] >= RATELIMIT_EXPIRE_SECONDS]
        for k in stale:
            del self._table[k]
