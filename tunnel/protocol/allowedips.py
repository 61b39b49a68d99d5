"""Cryptokey routing: longest-prefix match from an IP address to a peer.

Rules kept here:
- IPv4 and IPv6 are separate tables; a 4-byte address never matches an IPv6
  prefix (not even ::ffff:0:0/96) and the reverse, as in WireGuard;
- a prefix is stored with its host bits cleared, and belongs to exactly one
  value: inserting a prefix again hands it to the new value (WireGuard moves
  an allowed IP from one peer to another the same way);
- values are matched by identity (`is`), never by equality, so peers need not
  be hashable and two equal-looking peers stay distinct;
- `lookup` is the per-packet call: one int conversion and, for each prefix
  length in use (longest first), one shift and one dict probe. A table of
  /32 and /128 host routes costs one probe whatever the number of peers.
  Configuration calls (insert, remove, prefixes) may be slower; a caller
  that parses prefixes faster than ipaddress (uapi.py, with inet_pton) hands
  in (version, prefix length, key) triples and reads `entries` back.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Union

__all__ = ["AllowedIPs", "prefix_set"]

# A prefix as text, as an ip_network, or parsed: (4 or 6, prefix length, the prefix's top bits as an int).
Network = Union[str, ipaddress.IPv4Network, ipaddress.IPv6Network, tuple[int, int, int]]

_BITS = {4: 32, 6: 128}


def _parse(network: Network) -> tuple[int, int, int]:
    """(version, prefix length, key) where key is the network's top bits."""
    if type(network) is tuple:  # already parsed by the caller
        version, plen, key = network
        if version not in _BITS or not 0 <= plen <= _BITS[version] or not 0 <= key < (1 << plen):
            raise ValueError(f"not a (version, prefix length, key) triple: {network!r}")
        return network
    if isinstance(network, str):
        fast = _parse_text(network)
        if fast is not None:
            return fast
        net = ipaddress.ip_network(network.strip(), strict=False)
    elif isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        net = network
    else:
        raise TypeError(f"expected a prefix string or ip_network, not {type(network).__name__}")
    plen = net.prefixlen
    key = int(net.network_address) >> (_BITS[net.version] - plen)
    return net.version, plen, key


def _parse_text(text: str) -> tuple[int, int, int] | None:
    """The common forms ("10.1.2.3/32", "fd00::1/128") without ip_network's cost (a
    10,000-peer configuration parses 20,000 of them); None sends anything else to
    ipaddress, which also gives the error messages."""
    addr, sep, length = text.strip().partition("/")
    if (sep and not (length.isdigit() and len(length) <= 3)) or "%" in addr:
        return None
    try:
        if ":" in addr:
            version, value = 6, int(ipaddress.IPv6Address(addr))
        else:
            parts = addr.split(".")
            if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and (p == "0" or p[0] != "0")
                                          for p in parts):
                return None
            octets = [int(p) for p in parts]
            if max(octets) > 255:
                return None
            version = 4
            value = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
    except ValueError:
        return None
    bits = _BITS[version]
    plen = int(length) if sep else bits
    if plen > bits:
        return None
    return version, plen, value >> (bits - plen)


def prefix_set(networks) -> frozenset[tuple[int, int, int]]:
    """NETWORKS as `AllowedIPs.prefix_set` gives a value's: to compare without formatting either."""
    return frozenset(_parse(n) for n in networks)


def _format(version: int, plen: int, key: int) -> str:
    # ip_address(int) would guess the version from the size of the int.
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return f"{cls(key << (_BITS[version] - plen))}/{plen}"


class AllowedIPs:
    """A longest-prefix-match table from IPv4/IPv6 prefixes to values."""

    __slots__ = ("_tables", "_order4", "_order6", "_owned")

    def __init__(self) -> None:
        # version -> prefix length -> {key: value}
        self._tables: dict[int, dict[int, dict[int, Any]]] = {4: {}, 6: {}}
        # (shift, table) for each prefix length in use, longest first; rebuilt
        # only when a length appears or disappears.
        self._order4: tuple[tuple[int, dict[int, Any]], ...] = ()
        self._order6: tuple[tuple[int, dict[int, Any]], ...] = ()
        # id(value) -> (value, [(version, plen, key)]) for remove_value/prefixes: a list, as
        # a peer has one or two prefixes and a set of one costs ~250 bytes more per peer.
        self._owned: dict[int, tuple[Any, list[tuple[int, int, int]]]] = {}

    # --- configuration -----------------------------------------------------

    def insert(self, network: Network, value: Any) -> None:
        """Route `network` (host bits ignored) to `value`, replacing any owner."""
        if value is None:
            raise ValueError("None cannot be stored: lookup returns None for no match")
        version, plen, key = _parse(network)
        by_len = self._tables[version]
        table = by_len.get(plen)
        if table is None:
            table = by_len[plen] = {}
            self._reorder(version)
        old = table.get(key)
        if old is value:
            return
        if old is not None:
            self._disown(old, (version, plen, key))
        table[key] = value
        entry = self._owned.get(id(value))
        if entry is None:
            self._owned[id(value)] = (value, [(version, plen, key)])
        else:  # not there yet: a prefix value already owned returned above
            entry[1].append((version, plen, key))

    def remove(self, network: Network) -> bool:
        """Forget exactly this prefix; False if it was not present."""
        version, plen, key = _parse(network)
        table = self._tables[version].get(plen)
        if table is None or key not in table:
            return False
        self._disown(table[key], (version, plen, key))
        self._drop(version, plen, key)
        return True

    def remove_value(self, value: Any) -> int:
        """Forget every prefix routed to `value`; returns how many."""
        # The table holds a reference to each value, so its id cannot have
        # been reused by another object while it is in here.
        entry = self._owned.pop(id(value), None)
        if entry is None:
            return 0
        for version, plen, key in entry[1]:
            self._drop(version, plen, key)
        return len(entry[1])

    def clear(self) -> None:
        self._tables = {4: {}, 6: {}}
        self._order4 = ()
        self._order6 = ()
        self._owned = {}

    # --- queries -------------------------------------------------------------

    def lookup(self, addr: bytes | bytearray | memoryview) -> Any:
        """The value of the longest prefix containing `addr` (4 or 16 raw
        bytes, network order), or None."""
        n = len(addr)
        if n == 4:
            order = self._order4
        elif n == 16:
            order = self._order6
        else:
            raise ValueError(f"an address is 4 or 16 bytes, not {n}")
        x = int.from_bytes(addr, "big")
        for shift, table in order:
            value = table.get(x >> shift)
            if value is not None:
                return value
        return None

    def lookup_ip(self, ip: str) -> Any:
        """`lookup` for an address written as text (tests, tools)."""
        return self.lookup(ipaddress.ip_address(ip.strip()).packed)

    def prefixes(self, value: Any) -> list[str]:
        """The prefixes routed to `value`: IPv4 first, then by address, then
        by prefix length."""
        return [_format(*e) for e in self.entries(value)]

    def entries(self, value: Any) -> list[tuple[int, int, int]]:
        """`prefixes` as (version, prefix length, key) triples, in the same order."""
        entry = self._owned.get(id(value))
        if entry is None:
            return []
        return sorted(entry[1], key=lambda e: (e[0], e[2] << (_BITS[e[0]] - e[1]), e[1]))

    def prefix_set(self, value: Any) -> frozenset[tuple[int, int, int]]:
        """The prefixes routed to `value`, comparable with `prefix_set(networks)` (nothing formatted)."""
        entry = self._owned.get(id(value))
        return frozenset(entry[1]) if entry is not None else frozenset()

    def __len__(self) -> int:
        return sum(len(t) for by_len in self._tables.values() for t in by_len.values())

    def __repr__(self) -> str:
        return f"AllowedIPs({len(self)} prefixes)"

    # --- internals -----------------------------------------------------------

    def _disown(self, value: Any, item: tuple[int, int, int]) -> None:
        entry = self._owned[id(value)]
        entry[1].remove(item)
        if not entry[1]:
            del self._owned[id(value)]

    def _drop(self, version: int, plen: int, key: int) -> None:
        by_len = self._tables[version]
        table = by_len[plen]
        del table[key]
        if not table:
            del by_len[plen]
            self._reorder(version)

    def _reorder(self, version: int) -> None:
        bits = _BITS[version]
        by_len = self._tables[version]
        order = tuple((bits - plen, by_len[plen]) for plen in sorted(by_len, reverse=True))
        if version == 4:
            self._order4 = order
        else:
            self._order6 = order
