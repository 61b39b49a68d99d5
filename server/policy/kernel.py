"""The compiled policy in the kernel: apply, remove, move one client, read the deny counters.

Rules kept here:
- every nft command goes through tunnel/nft.py (the one place that runs nft);
- the switch from one policy to the next is ONE `nft -f` transaction
  (flush the rules, re-point the maps, define every chain again, delete
  what the new policy no longer uses): packets meet the old policy or the
  new one, never none or half. If nft refuses anything, nothing changes;
- the classes' lookup sets are loaded by an earlier transaction, before
  anything refers to them. The kernel fills a new concatenated interval set
  (nft_set_pipapo) only after it has published the generation whose rules
  use it, so a set created in the switching transaction looks empty to
  packets for an instant: we measured accepted packets dropped during
  re-applies that way. Sets are named after their content, so a set that
  did not change is neither reloaded nor touched;
- chains, counters and the per-source deny sets are never deleted by a
  re-apply: the counts go on (they start again only after `remove`);
- the undo ("nft_table", the kind tunnel/nft.py registers, so a fresh
  `tunnel down` process knows it without importing this package) is
  recorded in the journal before the first change, once per table;
- `set_client_target` changes one element of @clients4/@clients6 in one
  transaction (nft 1.0.6 cannot replace an element's verdict in place, so
  it is deleted and added again atomically).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Iterable

from tunnel import nft
from tunnel.undo import Journal

from .clients import ClientRef
from .compile import FAMILY, LOGIN_ONLY, Compiled, table_name
from .reasons import DENY_REASONS

_TARGET = re.compile(rf"^(class_\d+|{LOGIN_ONLY})$")
_RULE_SET = re.compile(r"^[pi][46]_[0-9a-f]{16}$")
# Sets and maps whose elements the switch replaces (hash and single-field interval sets: their
# elements change with the generation, atomically). Never the deny/logrl sets: they keep counting.
_REFILLED = ("gwdns4", "gwdns6", "local4", "local6", "clients4", "clients6", "clientnets4", "clientnets6")


def record_undo(journal: Journal, table: str) -> None:
    """Write the table's undo into the journal unless it is there already (re-applies add nothing)."""
    step = {"kind": "nft_table", "params": {"family": FAMILY, "name": table}}
    if step not in journal.steps:
        journal.record("nft_table", family=FAMILY, name=table)


def _objects(table: str) -> dict[str, set[str]] | None:
    """Names of the table's sets, maps and chains (None: no such table)."""
    if not nft.table_exists(FAMILY, table):
        return None
    out: dict[str, set[str]] = {"set": set(), "map": set(), "chain": set()}
    for obj in _terse(table):
        for kind in out:
            if kind in obj:
                out[kind].add(obj[kind]["name"])
    return out


def _terse(table: str) -> list[dict]:
    """`nft -t -j list table`: the objects without set elements (a big policy lists fast)."""
    text = nft.run(["-t", "-j", "list", "table", FAMILY, table])
    return json.loads(text).get("nftables", []) if text.strip() else []


def apply(journal: Journal, compiled: Compiled) -> None:
    """Install COMPILED (from compile_policy) on its table: new lookup sets first, then one switch.

    Raises tunnel.nft.NftError if the kernel refuses it; the policy in force is then unchanged.
    """
    table = compiled.table
    record_undo(journal, table)
    existing = _objects(table)
    have = (existing or {}).get("set", set())
    staged = [decl for name, decl in compiled.sets.items() if name not in have]
    if existing is None or staged:
        nft.apply(f"table {FAMILY} {table} {{\n" + "\n".join(staged) + "\n}\n")
    try:
        nft.apply(_switch(compiled, existing))
    except nft.NftError:
        _drop_unused(table, compiled, staged)
        raise


def _switch(compiled: Compiled, existing: dict[str, set[str]] | None) -> str:
    table = compiled.table
    where = f"{FAMILY} {table}"
    lines = [f"flush table {where}"]
    if existing is not None:
        for kind in ("set", "map"):
            lines += [f"flush {kind} {where} {name}" for name in sorted(existing[kind]) if name in _REFILLED]
        chains = set(re.findall(r"^\tchain (\w+) \{", compiled.body, re.M))
        lines += [f"delete chain {where} {name}" for name in sorted(existing["chain"] - chains)]
        lines += [f"delete set {where} {name}" for name in sorted(existing["set"])
                  if _RULE_SET.match(name) and name not in compiled.sets]
    lines += [f"table {where} {{", compiled.body, "}"]
    return "\n".join(lines) + "\n"


def _drop_unused(table: str, compiled: Compiled, staged: list[str]) -> None:
    """After a refused switch: delete the sets we loaded for it that nothing uses (best effort)."""
    names = [n for n, decl in compiled.sets.items() if decl in staged]
    if names:
        try:
            nft.apply("".join(f"delete set {FAMILY} {table} {n}\n" for n in names))
        except nft.NftError:
            pass  # in use after all, or gone: the next apply deletes what is unused


def listing(ifname: str | None = None, *, table: str | None = None) -> str:
    """`nft list table` of our table (for tests and `tunnel show`): what the kernel holds."""
    return nft.run(["list", "table", FAMILY, table or table_name(ifname)])


def remove(ifname: str | None = None, *, table: str | None = None) -> None:
    """Delete our table (idempotent). The journal's step stays: undoing an absent table is harmless."""
    nft.delete_table(FAMILY, table or table_name(ifname))


def installed(ifname: str | None = None, *, table: str | None = None) -> bool:
    return nft.table_exists(FAMILY, table or table_name(ifname))


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
    """Packets denied, by source address and by reason (the deny reasons of reasons.py)."""

    by_address: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    by_client: dict[str, int] = field(default_factory=dict)  # filled when clients are given


def read_counters(table: str) -> DenyCounters | None:
    """The counters of TABLE, or None if there is no such table."""
    if not nft.table_exists(FAMILY, table):
        return None
    out = DenyCounters(by_reason={r.value: 0 for r in DENY_REASONS})
    names = {r.counter: r.value for r in DENY_REASONS}
    for obj in nft.list_json("counters", "table", FAMILY, table):
        c = obj.get("counter")
        if c and c.get("name") in names:
            out.by_reason[names[c["name"]]] = int(c.get("packets", 0))
    for fam in (4, 6):
        for obj in nft.list_json("set", FAMILY, table, f"deny{fam}"):
            for e in (obj.get("set") or {}).get("elem", []):
                elem = e.get("elem", {}) if isinstance(e, dict) else {}
                if "val" in elem:
                    out.by_address[str(elem["val"])] = int((elem.get("counter") or {}).get("packets", 0))
    return out


def deny_counters(ifname: str | None = None, clients: Iterable[ClientRef] = (), *,
                  table: str | None = None) -> DenyCounters:
    """Denied packets by address, by reason and (given CLIENTS) by client name; zeros if no table."""
    counts = read_counters(table or table_name(ifname)) or DenyCounters(
        by_reason={r.value: 0 for r in DENY_REASONS})
    addrs = [(ipaddress.ip_address(a), n) for a, n in counts.by_address.items()]
    for c in clients:
        counts.by_client[c.name] = sum(n for a, n in addrs for net in c.networks if a in net)
    return counts
