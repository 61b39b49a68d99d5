"""The compiled policy in the kernel: apply, remove, move one client, read the deny counters.

Rules kept here:
- every nft command goes through tunnel/nft.py (the one place that runs nft);
- applying is ONE `nft -f` transaction: declare the table, delete it and
  define it again in full. The kernel switches to the new generation at
  commit: packets meet the old policy or the new one, never none or half;
  if nft refuses anything, nothing changes and the old policy stays;
- the undo ("nft_table", the kind tunnel/nft.py registers, so a fresh
  `tunnel down` process knows it without importing this package) is
  recorded in the journal before the first apply, once per table;
- the deny counters survive a re-apply: apply reads them and writes them
  into the new table's definition, in the same transaction;
- `set_client_target` changes one element of @clients4/@clients6 in one
  transaction (nft 1.0.6 cannot replace an element's verdict in place, so
  it is deleted and added again atomically).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable

from tunnel import nft
from tunnel.undo import Journal

from .clients import ClientRef
from .compile import FAMILY, LOGIN_ONLY, table_name
from .reasons import DENY_REASONS

_TARGET = re.compile(rf"^(class_\d+|{LOGIN_ONLY})$")
_COUNTER_LINE = re.compile(r"^\tcounter (deny_[a-z]+) \{ packets 0 bytes 0 \}$", re.M)


def _header(ruleset: str) -> str:
    m = re.match(rf"table {FAMILY} (tunnel_[A-Za-z0-9_]+) \{{\n", ruleset)
    if not m:
        raise ValueError("not a compiled policy ruleset (expected 'table inet tunnel_... {' first)")
    return m.group(1)


def record_undo(journal: Journal, table: str) -> None:
    """Write the table's undo into the journal unless it is there already (re-applies add nothing)."""
    step = {"kind": "nft_table", "params": {"family": FAMILY, "name": table}}
    if step not in journal.steps:
        journal.record("nft_table", family=FAMILY, name=table)


def apply(journal: Journal, ruleset: str, *, carry_counters: bool = True) -> None:
    """Install RULESET (from compile_ruleset) in place of the table it names, atomically.

    Raises tunnel.nft.NftError if the kernel refuses it; the old table is then untouched.
    """
    table = _header(ruleset)
    record_undo(journal, table)
    old = read_counters(table) if carry_counters else None
    script = f"table {FAMILY} {table} {{}}\ndelete table {FAMILY} {table}\n"
    if old is not None:
        ruleset = _COUNTER_LINE.sub(lambda m: _counter_line(m.group(1), old), ruleset)
    script += ruleset
    if old is not None:
        for fam, elems in ((4, old.elements4), (6, old.elements6)):
            if elems:
                items = ", ".join(f"{a} counter packets {p} bytes {b}" for a, (p, b) in sorted(elems.items()))
                script += f"add element {FAMILY} {table} deny{fam} {{ {items} }}\n"
    nft.apply(script)


def _counter_line(name: str, old: "DenyCounters") -> str:
    packets, nbytes = old.by_reason_raw.get(name, (0, 0))
    return f"\tcounter {name} {{ packets {packets} bytes {nbytes} }}"


def remove(ifname: str | None = None, *, table: str | None = None) -> None:
    """Delete our table (idempotent). The journal's step stays: undoing an absent table is harmless."""
    nft.delete_table(FAMILY, table or table_name(ifname))


def installed(ifname: str | None = None, *, table: str | None = None) -> bool:
    return nft.table_exists(FAMILY, table or table_name(ifname))


def listing(ifname: str | None = None, *, table: str | None = None) -> str:
    """`nft list table` of our table (for tests and `tunnel show`): what the kernel holds."""
    return nft.run(["list", "table", FAMILY, table or table_name(ifname)])


def set_client_target(ifname: str | None, address: str, target: str | None, *, table: str | None = None) -> None:
    """Point ADDRESS at TARGET (a class chain from Compiled.class_of, or LOGIN_ONLY); None removes it
    (the address then meets the `unknown` chain). One atomic transaction."""
    table = table or table_name(ifname)
    net = ipaddress.ip_network(address, strict=True)
    if target is not None and not _TARGET.match(target):
        raise ValueError(f"bad target {target!r}: a class_N chain or {LOGIN_ONLY!r}")
    key = str(net.network_address) if net.num_addresses == 1 else str(net)
    name = f"clients{net.version}" if net.num_addresses == 1 else f"clientnets{net.version}"
    where = f"{FAMILY} {table} {name}"
    script = ""
    if _has_element(table, name, key):
        script += f"delete element {where} {{ {key} }}\n"
    if target is not None:
        script += f"add element {where} {{ {key} : jump {target} }}\n"
    if script:
        nft.apply(script)


def _has_element(table: str, name: str, key: str) -> bool:
    try:
        nft.run(["get", "element", FAMILY, table, name, f"{{ {key} }}"])
        return True
    except nft.NftError as exc:
        if "No such file or directory" in str(exc):
            return False
        raise


def client_target(ifname: str | None, address: str, *, table: str | None = None) -> str | None:
    """What the map holds for ADDRESS now (a chain name), or None."""
    table = table or table_name(ifname)
    net = ipaddress.ip_network(address, strict=True)
    key = str(net.network_address) if net.num_addresses == 1 else str(net)
    name = f"clients{net.version}" if net.num_addresses == 1 else f"clientnets{net.version}"
    try:
        out = nft.run(["get", "element", FAMILY, table, name, f"{{ {key} }}"])
    except nft.NftError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise
    m = re.search(r":\s*(?:jump|goto)\s+(\w+)", out)
    return m.group(1) if m else None


# -- counters ------------------------------------------------------------------


@dataclass
class DenyCounters:
    """Packets denied, by source address and by reason (deny reasons of reasons.py)."""

    by_address: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    by_client: dict[str, int] = field(default_factory=dict)  # filled when clients are given
    by_reason_raw: dict[str, tuple[int, int]] = field(default_factory=dict)  # counter name -> (packets, bytes)
    elements4: dict[str, tuple[int, int]] = field(default_factory=dict)
    elements6: dict[str, tuple[int, int]] = field(default_factory=dict)


def read_counters(table: str) -> DenyCounters | None:
    """The counters of TABLE, or None if there is no such table."""
    if not nft.table_exists(FAMILY, table):
        return None
    out = DenyCounters()
    for obj in nft.list_json("counters", "table", FAMILY, table):
        c = obj.get("counter")
        if c and c.get("name", "").startswith("deny_"):
            out.by_reason_raw[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    for reason in DENY_REASONS:
        out.by_reason[reason.value] = out.by_reason_raw.get(reason.counter, (0, 0))[0]
    for fam, dest in ((4, out.elements4), (6, out.elements6)):
        for obj in nft.list_json("set", FAMILY, table, f"deny{fam}"):
            for e in (obj.get("set") or {}).get("elem", []):
                elem = e.get("elem", {}) if isinstance(e, dict) else {}
                counter = elem.get("counter") or {}
                if "val" in elem:
                    dest[str(elem["val"])] = (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
    for addr, (packets, _) in list(out.elements4.items()) + list(out.elements6.items()):
        out.by_address[addr] = packets
    return out


def deny_counters(ifname: str | None = None, clients: Iterable[ClientRef] = (), *,
                  table: str | None = None) -> DenyCounters:
    """Denied packets by address, by reason and (given CLIENTS) by client name; zeros if no table."""
    counts = read_counters(table or table_name(ifname)) or DenyCounters(
        by_reason={r.value: 0 for r in DENY_REASONS})
    for c in clients:
        total = 0
        for net in c.networks:
            for addr, n in counts.by_address.items():
                if ipaddress.ip_address(addr) in net:
                    total += n
        counts.by_client[c.name] = total
    return counts
