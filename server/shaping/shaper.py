"""Per-client download and upload limits on one tunnel interface: the API the daemon calls.

    shaper = Shaper(journal, "wg0")
    shaper.apply({"alice": ClientLimit(("10.8.0.2", "fd08::2"), down_bps=5_000_000, up_bps=2_000_000),
                  "bob": ClientLimit(("10.8.0.3",), down_bps=5_000_000)})
    shaper.set_client("carol", ClientLimit(("10.8.0.4",), up_bps=1_000_000))   # add or change one
    shaper.remove_client("alice")                                               # back to unlimited

Rules kept here:
- download is shaped on the tunnel device's egress, upload on the egress of
  its ifb device (server/shaping/ifb.py); a side with no limited client has
  nothing installed, so a server without limits pays nothing;
- each side is written down in the Journal before it is installed (kinds
  "shaping.root", "shaping.ifb", "shaping.ingress"); every class, queue and
  filter lives inside those and goes with them, so `tunnel down` after a
  crash removes everything; each kind is recorded once per Shaper;
- one call is one `tc -batch`: deletions first (so an address can move
  between clients), then additions; adding, changing or removing a client
  touches that client's class and filters only, never another's;
- a client's limits are its own: members of a group each get the group's
  rate (the caller expands groups), and unlimited clients are not shaped;
- if tc fails half-way, the next call rebuilds the whole configuration from
  scratch instead of guessing what the kernel holds.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from tunnel.undo import Journal, undoer

from . import ifb, plan, tc
from .plan import IPAddress, ClassParams, Handle
from .tc import ShapingError

DOWN, UP = "down", "up"
KEY = {DOWN: "dst", UP: "src"}


@dataclass(frozen=True)
class ClientLimit:
    """One client's tunnel addresses (hosts, IPv4 and/or IPv6) and its rates in bit/s; None = unlimited."""

    addresses: tuple[str, ...]
    down_bps: int | None = None
    up_bps: int | None = None


@dataclass(frozen=True)
class _Client:
    addresses: tuple[IPAddress, ...]
    rates: dict[str, ClassParams | None]
    slot: int


def _host(text: str) -> IPAddress:
    try:
        net = ipaddress.ip_network(str(text).strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"bad client address {text!r}: {exc}") from None
    if net.num_addresses != 1:
        raise ValueError(f"client address {text!r} is a network; limits apply to host addresses")
    return net.network_address


def _parse(key: str, limit: ClientLimit) -> tuple[tuple[IPAddress, ...], dict[str, ClassParams | None]]:
    addresses = tuple(dict.fromkeys(_host(a) for a in limit.addresses))
    if not addresses:
        raise ValueError(f"client {key!r} has no address to shape")
    try:
        rates = {side: None if bps is None else plan.class_params(bps)
                 for side, bps in ((DOWN, limit.down_bps), (UP, limit.up_bps))}
    except ValueError as exc:
        raise ValueError(f"client {key!r}: {exc}") from None
    return addresses, rates


@dataclass
class _Batch:
    deletes: list[str] = field(default_factory=list)
    adds: list[str] = field(default_factory=list)


class Shaper:
    """The shaping state of one tunnel interface; not thread-safe (the daemon's loop owns it)."""

    def __init__(self, journal: Journal, ifname: str) -> None:
        self.ifname = tc.check_ifname(ifname)
        self.ifb = ifb.ifb_name(ifname)
        self._journal = journal
        self._clients: dict[str, _Client] = {}
        self._handles: dict[IPAddress, Handle] = {}
        self._nodes: dict[tuple[int, int], set[int]] = {}
        self._tables: dict[str, set[tuple[int, int]]] = {DOWN: set(), UP: set()}
        self._installed: set[str] = set()
        self._recorded: set[tuple[str, str]] = set()
        self._broken = False
        # The last ClientLimit seen per key and what it parsed to: a registry
        # listener re-applies every client on every pass, mostly unchanged.
        self._parsed: dict[str, tuple[ClientLimit, tuple[tuple[IPAddress, ...], dict[str, ClassParams | None]]]] = {}

    # -- the API ---------------------------------------------------------------

    def apply(self, clients: Mapping[str, ClientLimit]) -> None:
        """Make CLIENTS the whole configuration: others lose their limits, unchanged ones are left alone."""
        wanted: dict[str, tuple[tuple[IPAddress, ...], dict[str, ClassParams | None]]] = {}
        parsed = {}
        for key, limit in clients.items():
            cached = self._parsed.get(key)
            addresses, rates = cached[1] if cached and cached[0] == limit else _parse(key, limit)
            parsed[key] = (limit, (addresses, rates))
            if any(rates.values()):
                wanted[key] = (addresses, rates)
        self._check_unique(wanted)
        self._parsed = parsed
        self._sync(wanted)

    def set_client(self, key: str, limit: ClientLimit) -> None:
        """Add a client, or change one's addresses or rates; both rates None removes its limits."""
        wanted = {k: (c.addresses, c.rates) for k, c in self._clients.items()}
        addresses, rates = _parse(key, limit)
        if any(rates.values()):
            wanted[key] = (addresses, rates)
        else:
            wanted.pop(key, None)
        self._check_unique(wanted)
        self._sync(wanted)

    def remove_client(self, key: str) -> None:
        """The client is no longer limited (nothing happens if it was not)."""
        if key in self._clients:
            self._sync({k: (c.addresses, c.rates) for k, c in self._clients.items() if k != key})

    def limits(self) -> dict[str, tuple[tuple[str, ...], int | None, int | None]]:
        """key -> (addresses, down bit/s, up bit/s) as installed (for status and tests)."""
        return {key: (tuple(map(str, c.addresses)),
                      *(p.rate_bps if p else None for p in (c.rates[DOWN], c.rates[UP])))
                for key, c in self._clients.items()}

    def slot(self, key: str) -> int:
        """The client's class minor: its classes are 1:<slot in hex> on both devices."""
        return self._clients[key].slot

    def device(self, side: str) -> str:
        return self.ifname if side == DOWN else self.ifb

    # -- planning ----------------------------------------------------------------

    @staticmethod
    def _check_unique(wanted: Mapping[str, tuple[tuple[IPAddress, ...], object]]) -> None:
        owner: dict[IPAddress, str] = {}
        for key, (addresses, _) in wanted.items():
            for address in addresses:
                if address in owner:
                    raise ValueError(f"address {address} is given to both {owner[address]!r} and {key!r}")
                owner[address] = key

    def _sync(self, wanted: Mapping[str, tuple[tuple[IPAddress, ...], dict[str, ClassParams | None]]]) -> None:
        if self._broken:
            self._rebuild(wanted)
            return
        try:
            self._sync_incrementally(wanted)
        except BaseException:
            # Our picture of the kernel may be wrong now: start over next time.
            self._broken = True
            raise

    def _sync_incrementally(self, wanted: Mapping[str, tuple[tuple[IPAddress, ...],
                                                           dict[str, ClassParams | None]]]) -> None:
        batch = _Batch()
        sides_needed = {side for _, rates in wanted.values() for side, p in rates.items() if p}
        # Deletions: clients gone or changed, side by side.
        for key, old in list(self._clients.items()):
            new = wanted.get(key)
            for side in (DOWN, UP):
                if old.rates[side] is None:
                    continue
                dev = self.device(side)
                new_params = new[1][side] if new else None
                if new_params is None or new[0] != old.addresses:  # type: ignore[index]
                    for address in old.addresses:
                        batch.deletes += plan.delete_filter(dev, address.version, self._handles[address])
                if new_params is None:
                    batch.deletes += plan.delete_class(dev, old.slot)
            if new is None or new[0] != old.addresses:
                kept = set(new[0]) if new else set()
                for address in old.addresses:
                    if address not in kept:
                        self._free_handle(address)
            if new is None:
                del self._clients[key]
        # Sides to install first, before any client's class goes in.
        prologue: list[str] = []
        epilogue: list[str] = []
        for side in (DOWN, UP):
            if side in sides_needed and side not in self._installed:
                prologue += self._install(side)
                if side == UP:
                    epilogue += plan.ingress_redirect(self.ifname, self.ifb, _has_clsact(self.ifname))
        # Additions and changes.
        used = {c.slot for c in self._clients.values()}
        for key, (addresses, rates) in wanted.items():
            old_client = self._clients.get(key)
            slot = old_client.slot if old_client else _free_slot(used)
            used.add(slot)
            for address in addresses:
                self._handle(address)
            for side in (DOWN, UP):
                params = rates[side]
                if params is None:
                    continue
                dev = self.device(side)
                was = old_client.rates[side] if old_client else None
                if was is None:
                    batch.adds += plan.add_class(dev, slot, params)
                elif was != params:
                    batch.adds += plan.change_class(dev, slot, params)
                if was is None or old_client.addresses != addresses:  # type: ignore[union-attr]
                    for address in addresses:
                        batch.adds += self._tables_for(side, address)
                        batch.adds += plan.add_filter(dev, KEY[side], address, self._handles[address], slot)
            self._clients[key] = _Client(addresses, dict(rates), slot)
        tc.batch(batch.deletes + prologue + batch.adds + epilogue)
        # A side nobody is limited on any more goes away: unlimited traffic pays nothing.
        for side in (DOWN, UP):
            if side in self._installed and side not in sides_needed:
                self._uninstall(side)

    def _rebuild(self, wanted: Mapping[str, tuple[tuple[IPAddress, ...], dict[str, ClassParams | None]]]) -> None:
        for side in (UP, DOWN):
            self._uninstall(side)
        self._clients.clear()
        self._handles.clear()
        self._nodes.clear()
        self._broken = False
        self._sync(wanted)

    def _handle(self, address: IPAddress) -> Handle:
        handle = self._handles.get(address)
        if handle is None:
            htid, bucket = plan.bucket_of(address)
            nodes = self._nodes.setdefault((htid, bucket), set())
            node = next((n for n in range(1, plan.MAX_NODE + 1) if n not in nodes), None)
            if node is None:
                raise ShapingError(f"too many client addresses ending like {address}")
            nodes.add(node)
            handle = self._handles[address] = Handle(htid, bucket, node)
        return handle

    def _free_handle(self, address: IPAddress) -> None:
        handle = self._handles.pop(address, None)
        if handle is not None:
            self._nodes[(handle.htid, handle.bucket)].discard(handle.node)

    def _tables_for(self, side: str, address: IPAddress) -> list[str]:
        """The second-level hash table for ADDRESS on SIDE's device, if it is not there yet."""
        htid, _ = plan.bucket_of(address)
        if (address.version, htid) in self._tables[side]:
            return []
        self._tables[side].add((address.version, htid))
        return plan.second_level(self.device(side), KEY[side], address.version, htid)

    # -- installing a side --------------------------------------------------------

    def _record(self, kind: str, **params: str) -> None:
        marker = (kind, repr(sorted(params.items())))
        if marker not in self._recorded:
            self._journal.record(kind, **params)
            self._recorded.add(marker)

    def _install(self, side: str) -> list[str]:
        """Record SIDE's undo, make its device ready, and return the tc lines of its root."""
        if side == DOWN:
            self._record("shaping.root", ifname=self.ifname)
            remove_root(self.ifname)  # a stale root of ours (an earlier run) would refuse the add
        else:
            self._record("shaping.ifb", name=self.ifb)
            ifb.create(self.ifb)
            remove_root(self.ifb)
            self._record("shaping.ingress", ifname=self.ifname, ifb=self.ifb)
            remove_ingress(self.ifname, self.ifb)
        self._installed.add(side)
        self._tables[side] = set()
        return plan.root(self.device(side), KEY[side])

    def _uninstall(self, side: str) -> None:
        if side == DOWN:
            remove_root(self.ifname)
        else:
            remove_ingress(self.ifname, self.ifb)
            ifb.delete(self.ifb)
        self._installed.discard(side)
        self._tables[side] = set()


def _free_slot(used: Iterable[int]) -> int:
    taken = set(used)
    for slot in range(plan.FIRST_SLOT, plan.LAST_SLOT + 1):
        if slot not in taken:
            return slot
    raise ShapingError("too many limited clients on one interface (65534)")


def _has_clsact(ifname: str) -> bool:
    return any(q.get("kind") == "clsact" for q in tc.show("qdisc", "show", "dev", ifname))


# -- undo kinds: each works in a fresh process, and twice as well as once -----------


@undoer("shaping.root")
def remove_root(ifname: str) -> None:
    """Delete our root HTB on IFNAME if it is there (a missing link or another root is left alone)."""
    for qdisc in tc.show("qdisc", "show", "dev", ifname, "root"):
        if qdisc.get("root") and qdisc.get("kind") == "htb" and qdisc.get("handle") == f"{plan.ROOT_MAJOR}:":
            tc.batch([f"qdisc del dev {ifname} root"])


@undoer("shaping.ingress")
def remove_ingress(ifname: str, ifb: str) -> None:
    """Delete our redirect filter on IFNAME's ingress, and the clsact qdisc if nothing else uses it."""
    if not _has_clsact(ifname):
        return
    ours = [f for f in tc.show("filter", "show", "dev", ifname, "ingress") if f.get("pref") == plan.REDIRECT_PRIO]
    if ours:
        tc.batch([f"filter del dev {ifname} ingress prio {plan.REDIRECT_PRIO}"])
    others = [f for direction in ("ingress", "egress")
              for f in tc.show("filter", "show", "dev", ifname, direction)]
    if not others:
        tc.batch([f"qdisc del dev {ifname} clsact"])
