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
- chains and the counting sets (deny_<reason>4/6, per address) are never
  deleted by a re-apply: the counts go on (they start again after `remove`);
- only small listings are asked of nft (one set, or the names of sets and
  chains): nft lists a whole table, a chain or a counter by fetching every
  set element first, which takes a second with a policy of 60,000;
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
from .compile import (CT_MARK_MASK, FAMILY, FIRST_GENERATION, GENERATION_SHIFT, LOGIN_ONLY, Compiled,
                      generation_define, table_name)
from .reasons import DENY_REASONS

_TARGET = re.compile(rf"^(class_\d+|{LOGIN_ONLY})$")
_RULE_SET = re.compile(r"^[pi][46]_[0-9a-f]{16}$")
# Sets and maps whose elements the switch replaces (hash and single-field interval sets: their
# elements change with the generation, atomically). Never the deny/logrl sets: they keep counting.
_REFILLED = ("gwdns4", "gwdns6", "local4", "local6", "clients4", "clients6", "clientnets4", "clientnets6",
             "generation", "valid4", "valid6")


def record_undo(journal: Journal, table: str) -> None:
    """Write the table's undo into the journal unless it is there already (re-applies add nothing)."""
    step = {"kind": "nft_table", "params": {"family": FAMILY, "name": table}}
    if step not in journal.steps:
        journal.record("nft_table", family=FAMILY, name=table)


def _list(*what: str, terse: bool = False) -> list[dict]:
    args = (["-t"] if terse else []) + ["-j", "list", *what]
    text = nft.run(args)
    return json.loads(text).get("nftables", []) if text.strip() else []


def exists(table: str) -> bool:
    """Whether our policy table is there. (Asks for one small set: nft lists whole tables slowly.)"""
    try:
        _list("set", FAMILY, table, "generation")
        return True
    except nft.NftError as exc:
        if "No such file or directory" in str(exc):
            return False
        raise


def _objects(table: str) -> dict[str, set[str]] | None:
    """Names of the table's sets, maps and chains (None: no such table)."""
    if not exists(table):
        return None
    out: dict[str, set[str]] = {"set": set(), "map": set(), "chain": set()}
    for kind, listing in (("set", "sets"), ("map", "maps"), ("chain", "chains")):
        for obj in _list(listing, FAMILY, terse=True):
            o = obj.get(kind)
            if o and o.get("table") == table:
                out[kind].add(o["name"])
    return out


def _elements(table: str, name: str, kind: str = "set") -> list:
    """The elements of one set or map: keys (str, or a list for concatenations), or [key, value] pairs."""
    out = []
    for obj in _list(kind, FAMILY, table, name):
        for e in (obj.get(kind) or {}).get("elem", []):
            value = e.get("elem", {}).get("val") if isinstance(e, dict) and "elem" in e else e
            if isinstance(value, dict) and "concat" in value:
                value = value["concat"]
            out.append(value)
    return out


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
    generation = FIRST_GENERATION if existing is None else _next_generation(current_generation(table))
    try:
        nft.apply(generation_define(generation) + "\n" + _switch(compiled, existing))
    except nft.NftError:
        _drop_unused(table, compiled, staged)
        raise


def current_generation(table: str) -> int | None:
    """The generation the table's policy runs under (None: no table, or no generation recorded)."""
    try:
        values = _elements(table, "generation")
    except nft.NftError:
        return None
    for value in values:
        if isinstance(value, int):
            return (value & CT_MARK_MASK) >> GENERATION_SHIFT
    return None


def _next_generation(current: int | None) -> int:
    """One more, within the mask's 16 bits, never 0 (the mark of a flow nobody judged)."""
    limit = CT_MARK_MASK >> GENERATION_SHIFT
    return 1 if current is None or current >= limit else current + 1


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
    return exists(table or table_name(ifname))


def set_client_target(ifname: str | None, address: str, target: str | None, *, table: str | None = None) -> None:
    """Point ADDRESS at TARGET (a class chain from Compiled.class_of, or LOGIN_ONLY); None removes it
    (the address then meets the `unknown` chain). One atomic transaction, which also takes the
    address's flows off the fast path unless it goes to a class: its established connections are
    judged again at their next packet (a logout cuts them)."""
    table = table or table_name(ifname)
    net = ipaddress.ip_network(address, strict=True)
    if target is not None and not _TARGET.match(target):
        raise ValueError(f"bad target {target!r}: a class_N chain or {LOGIN_ONLY!r}")
    try:
        _set_client_target(table, net, target)
    except nft.NftError as exc:
        if "No such file or directory" not in str(exc):
            raise
        # An apply switched generations between our look and our change: look again, once.
        _set_client_target(table, net, target)


def _set_client_target(table: str, net, target: str | None) -> None:
    host = net.num_addresses == 1
    key = str(net.network_address) if host else str(net)
    name = f"clients{net.version}" if host else f"clientnets{net.version}"
    where = f"{FAMILY} {table}"
    generation = current_generation(table)
    if generation is None:
        raise nft.NftError(f"no policy table {table} (or not one of ours): apply a policy first")
    mark = (generation << GENERATION_SHIFT) & CT_MARK_MASK
    pair = f"{key} . {mark:#010x}"
    mapped = _map_keys(table, name)
    script = ""
    if key in mapped:
        script += f"delete element {where} {name} {{ {key} }}\n"
    if host and [key, mark] in _elements(table, f"valid{net.version}"):
        script += f"delete element {where} valid{net.version} {{ {pair} }}\n"
    if target is not None:
        script += f"add element {where} {name} {{ {key} : jump {target} }}\n"
        if host and target != LOGIN_ONLY:
            script += f"add element {where} valid{net.version} {{ {pair} }}\n"
    if script:
        nft.apply(script)


def _map_keys(table: str, name: str) -> dict[str, str]:
    """A verdict map's elements: key (address or prefix) -> the chain it jumps to."""
    out = {}
    for pair in _elements(table, name, "map"):
        if isinstance(pair, list) and len(pair) == 2:
            key, value = pair
            if isinstance(key, dict) and "prefix" in key:
                key = f"{key['prefix']['addr']}/{key['prefix']['len']}"
            target = value.get("jump", value.get("goto", {})).get("target") if isinstance(value, dict) else None
            out[str(key)] = target
    return out


def client_target(ifname: str | None, address: str, *, table: str | None = None) -> str | None:
    """What the map holds for ADDRESS now (a chain name), or None."""
    table = table or table_name(ifname)
    net = ipaddress.ip_network(address, strict=True)
    host = net.num_addresses == 1
    key = str(net.network_address) if host else str(net)
    return _map_keys(table, f"clients{net.version}" if host else f"clientnets{net.version}").get(key)


# -- counters ------------------------------------------------------------------


@dataclass
class DenyCounters:
    """Packets denied, by address and reason. The address is the client's (its source; for
    `inbound`, the client the attempt was aimed at); unknown sources appear by address."""

    by_address_reason: dict[str, dict[str, int]] = field(default_factory=dict)
    by_client_reason: dict[str, dict[str, int]] = field(default_factory=dict)  # filled when clients are given

    @property
    def by_reason(self) -> dict[str, int]:
        out = {r.value: 0 for r in DENY_REASONS}
        for reasons in self.by_address_reason.values():
            for reason, n in reasons.items():
                out[reason] += n
        return out

    @property
    def by_address(self) -> dict[str, int]:
        return {a: sum(r.values()) for a, r in self.by_address_reason.items()}

    @property
    def by_client(self) -> dict[str, int]:
        return {c: sum(r.values()) for c, r in self.by_client_reason.items()}


def read_counters(table: str) -> DenyCounters | None:
    """The counts of TABLE (one small listing per reason and family), or None if there is no such table."""
    if not exists(table):
        return None
    out = DenyCounters()
    for reason in DENY_REASONS:
        for fam in (4, 6):
            for obj in _list("set", FAMILY, table, f"{reason.counter}{fam}"):
                for e in (obj.get("set") or {}).get("elem", []):
                    elem = e.get("elem", {}) if isinstance(e, dict) else {}
                    if "val" in elem:
                        packets = int((elem.get("counter") or {}).get("packets", 0))
                        counts = out.by_address_reason.setdefault(str(elem["val"]), {})
                        counts[reason.value] = counts.get(reason.value, 0) + packets
    return out


def deny_counters(ifname: str | None = None, clients: Iterable[ClientRef] = (), *,
                  table: str | None = None) -> DenyCounters:
    """Denied packets by address and reason, and (given CLIENTS) by client; empty if no table.

    They count from the first apply on; a re-apply keeps them, `remove` ends them.
    """
    counts = read_counters(table or table_name(ifname)) or DenyCounters()
    addrs = [(ipaddress.ip_address(a), r) for a, r in counts.by_address_reason.items()]
    for c in clients:
        mine: dict[str, int] = {}
        for a, reasons in addrs:
            if any(a in net for net in c.networks):
                for reason, n in reasons.items():
                    mine[reason] = mine.get(reason, 0) + n
        counts.by_client_reason[c.name] = mine
    return counts
