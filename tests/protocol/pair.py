"""Two or more Devices wired together in memory, for the protocol tests.

Rules this helper keeps:
- one fake clock (`Network.now`) moves only when a test moves it; every call
  into a Device passes it, so nothing depends on real time;
- every random byte (keys, indices, ephemerals, jitter, the network's own
  losses and reordering) comes from generators seeded by the test, so a
  failing run replays exactly;
- a SendDatagram is delivered to the node whose endpoint equals its
  destination, stamped with the sender node's endpoint *at send time* (so a
  node can roam by changing `endpoint`); a datagram to no node is kept in
  `undeliverable`;
- everything a node's Device returns is recorded on that node (written
  packets, drops, events, datagrams sent), so tests assert on outcomes;
- the network may drop, duplicate, reorder or hold datagrams, but only when a
  test asks (`loss`, `duplicate`, `reorder`, `hold`); by default delivery is
  in order, exactly once, at the current time.

Also here: builders of valid IPv4/IPv6 packets, and `snapshot()`, a plain
value describing every piece of session state of a Device (for "nothing
changed" assertions).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from tunnel.protocol import Device, Drop, Event, SendDatagram, WritePacket
from tunnel.protocol.peer import Peer

from ..helpers.packets import ipv4_header_ok, ipv4_packet, ipv6_packet  # noqa: F401 (re-exported for the tests)

# Wall time at monotonic 0, as a daemon would sample it once (any fixed value).
WALL_EPOCH = 1_700_000_000.0


def seeded_rng(seed: int | str) -> Callable[[int], bytes]:
    """An `rng(n) -> n bytes` for a Device, deterministic for `seed`."""
    r = random.Random(seed)
    return r.randbytes


# ---------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    """One Device on the fake network and everything it has returned."""

    name: str
    device: Device
    endpoint: tuple
    address4: str
    address6: str
    net: "Network"
    written: list[bytes] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    sent: list[SendDatagram] = field(default_factory=list)
    received: list[tuple[tuple, bytes]] = field(default_factory=list)  # (source, datagram) given to it

    def __repr__(self) -> str:
        return f"Node({self.name})"

    def peer_of(self, other: "Node") -> Peer:
        return self.device.peers[other.device.public_key]

    def drop_reasons(self) -> list[str]:
        return [d.reason for d in self.drops]

    def event_kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def clear(self) -> None:
        for lst in (self.written, self.drops, self.events, self.sent, self.received):
            lst.clear()

    # calls into the device, at the network's clock, with delivery afterwards
    def send(self, packet: bytes, deliver: bool = True) -> list:
        out = self.device.send_packet(packet, self.net.now)
        self.net.handle(self, out)
        if deliver:
            self.net.deliver()
        return out

    def ping(self, other: "Node", v6: bool = False, payload: bytes = b"ping", deliver: bool = True) -> bytes:
        """Send a valid packet from this node's tunnel address to `other`'s; returns it."""
        if v6:
            packet = ipv6_packet(self.address6, other.address6, payload)
        else:
            packet = ipv4_packet(self.address4, other.address4, payload)
        self.send(packet, deliver)
        return packet

    def initiate(self, other: "Node", deliver: bool = True) -> list:
        out = self.device.initiate(self.peer_of(other), self.net.now)
        self.net.handle(self, out)
        if deliver:
            self.net.deliver()
        return out

    def keepalive(self, other: "Node", deliver: bool = True) -> list:
        out = self.device.send_keepalive(self.peer_of(other), self.net.now)
        self.net.handle(self, out)
        if deliver:
            self.net.deliver()
        return out

    def inject(self, data: bytes, source: tuple, under_load: bool = False) -> list:
        """Hand this node a datagram as if from `source`; its replies are delivered."""
        self.received.append((source, data))
        out = self.device.receive_datagram(data, source, self.net.now, under_load)
        self.net.handle(self, out)
        return out


@dataclass
class InFlight:
    source: tuple
    destination: tuple
    data: bytes
    sender: Node
    sent_at: float = 0.0  # the network clock when the sender produced it


class Network:
    """A fake clock and a fake UDP network between Nodes."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.now = 0.0
        self.nodes: list[Node] = []
        self.queue: list[InFlight] = []
        self.log: list[InFlight] = []  # every datagram ever sent, for replays
        self.undeliverable: list[InFlight] = []
        self.held: list[InFlight] = []
        self._rng = random.Random(f"net-{seed}")
        # impairments, all off by default
        self.loss = 0.0
        self.duplicate = 0.0
        self.reorder = False
        # hold(datagram) -> True keeps it out of delivery (in `held`) until released
        self.hold: Callable[[InFlight], bool] | None = None
        # which receiving nodes are "under load" (their cookie mechanism engages)
        self.under_load: set[str] = set()

    # --- topology --------------------------------------------------------

    def add_node(self, name: str, index: int, mtu: int = 1420) -> Node:
        rng = seeded_rng(f"{self.seed}-{name}")
        device = Device(rng(32), wall_epoch=WALL_EPOCH, mtu=mtu, rng=rng)
        node = Node(
            name=name, device=device, endpoint=(f"192.0.2.{index}", 51820),
            address4=f"10.0.0.{index}", address6=f"fd00::{index:x}", net=self,
        )
        self.nodes.append(node)
        return node

    def connect(
        self, a: Node, b: Node, psk: bytes | None = None, keepalive_a: int = 0, keepalive_b: int = 0,
        endpoint_a: bool = True, endpoint_b: bool = True,
    ) -> tuple[Peer, Peer]:
        """Make each node a peer of the other, routing the other's /32 and /128."""
        pa = a.device.add_peer(
            b.device.public_key, preshared_key=psk,
            allowed_ips=[f"{b.address4}/32", f"{b.address6}/128"],
            endpoint=b.endpoint if endpoint_a else None, persistent_keepalive=keepalive_a, name=b.name,
        )
        pb = b.device.add_peer(
            a.device.public_key, preshared_key=psk,
            allowed_ips=[f"{a.address4}/32", f"{a.address6}/128"],
            endpoint=a.endpoint if endpoint_b else None, persistent_keepalive=keepalive_b, name=a.name,
        )
        return pa, pb

    def node_at(self, endpoint: tuple) -> Node | None:
        for n in self.nodes:
            if n.endpoint == endpoint:
                return n
        return None

    # --- delivery --------------------------------------------------------

    def handle(self, node: Node, actions: list) -> None:
        """Record a node's actions and queue its datagrams."""
        for a in actions:
            if type(a) is SendDatagram:
                node.sent.append(a)
                f = InFlight(node.endpoint, a.endpoint, a.data, node, self.now)
                self.log.append(f)
                self._enqueue(f)
            elif type(a) is WritePacket:
                node.written.append(a.data)
            elif type(a) is Drop:
                node.drops.append(a)
            elif type(a) is Event:
                node.events.append(a)
            else:  # pragma: no cover - the core returned something unknown
                raise AssertionError(f"unknown action {a!r}")

    def _enqueue(self, f: InFlight) -> None:
        if self.hold is not None and self.hold(f):
            self.held.append(f)
            return
        if self.loss and self._rng.random() < self.loss:
            return
        self.queue.append(f)
        if self.duplicate and self._rng.random() < self.duplicate:
            self.queue.append(f)

    def deliver(self, limit: int = 10_000) -> int:
        """Deliver queued datagrams (and what they provoke) until none is left."""
        n = 0
        while self.queue:
            if self.reorder and len(self.queue) > 1:
                i = self._rng.randrange(len(self.queue))
                f = self.queue.pop(i)
            else:
                f = self.queue.pop(0)
            self.deliver_one(f)
            n += 1
            if n > limit:
                raise AssertionError("datagram storm: delivery did not settle")
        return n

    def deliver_one(self, f: InFlight) -> None:
        dst = self.node_at(f.destination)
        if dst is None:
            self.undeliverable.append(f)
            return
        dst.inject(f.data, f.source, dst.name in self.under_load)

    def release_held(self) -> None:
        held, self.held = self.held, []
        self.queue.extend(held)
        self.deliver()

    def replay(self, f: InFlight, source: tuple | None = None, under_load: bool = False) -> list:
        """Deliver a copy of a logged datagram again (an attacker's replay)."""
        dst = self.node_at(f.destination)
        assert dst is not None
        return dst.inject(f.data, source or f.source, under_load)

    # --- time ------------------------------------------------------------

    def next_deadline(self) -> float | None:
        ds = [d for d in (n.device.next_deadline() for n in self.nodes) if d is not None]
        return min(ds) if ds else None

    def tick(self) -> None:
        """Run every node's due timers at the current time, then deliver."""
        for node in self.nodes:
            self.handle(node, node.device.tick(self.now))
        self.deliver()

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing each timer at its own deadline on the way."""
        self.advance_to(self.now + seconds)

    def advance_to(self, when: float) -> None:
        assert when >= self.now
        while True:
            d = self.next_deadline()
            if d is None or d > when:
                break
            self.now = max(self.now, d)
            self.tick()
        self.now = when

    def set_time(self, when: float) -> None:
        """Jump the clock without running timers (a caller that has not ticked yet)."""
        assert when >= self.now
        self.now = when

    def datagrams(self, sender: Node | None = None, kind: int | None = None) -> list[InFlight]:
        """Logged datagrams, optionally by sender and message type."""
        return [
            f for f in self.log
            if (sender is None or f.sender is sender) and (kind is None or f.data[0] == kind)
        ]


def make_pair(seed: int = 0, psk: bytes | None = None, mtu: int = 1420, **kw) -> tuple[Network, Node, Node]:
    """A network with nodes a (10.0.0.1, fd00::1) and b (10.0.0.2, fd00::2), peers of each other."""
    net = Network(seed)
    a = net.add_node("a", 1, mtu)
    b = net.add_node("b", 2, mtu)
    net.connect(a, b, psk, **kw)
    return net, a, b


def established_pair(seed: int = 0, psk: bytes | None = None, **kw) -> tuple[Network, Node, Node]:
    """make_pair, after a's handshake to b and one packet each way (both on `current`)."""
    net, a, b = make_pair(seed, psk, **kw)
    a.ping(b)
    b.ping(a)
    assert len(a.written) == 1 and len(b.written) == 1, (a.drops, b.drops)
    a.clear()
    b.clear()
    return net, a, b


# ---------------------------------------------------------------------------
# state snapshots
# ---------------------------------------------------------------------------


def _keypair_state(kp) -> tuple | None:
    if kp is None:
        return None
    return (
        kp.local_index, kp.remote_index, kp.initiator, kp.created, kp.send_counter, kp.valid,
        kp.replay._last, tuple(kp.replay._ring), kp.send_aead is not None, kp.recv_aead is not None,
    )


def peer_snapshot(p: Peer) -> tuple:
    hs = p.handshake
    ck = p.cookie
    return (
        p.endpoint,
        _keypair_state(p.current), _keypair_state(p.previous), _keypair_state(p.next),
        tuple(p.staged),
        (hs.state, hs.hash, hs.chaining_key, hs.ephemeral_private, hs.remote_ephemeral,
         hs.local_index, hs.remote_index, hs.latest_timestamp, hs.last_initiation_consumption,
         hs.last_sent_timestamp),
        (ck._cookie, ck._cookie_born, ck._last_mac1),
        (p.t_retransmit_handshake, p.t_send_keepalive, p.t_new_handshake,
         p.t_zero_key_material, p.t_persistent_keepalive),
        p.handshake_attempts, p.last_sent_initiation, p.need_another_keepalive,
        p.sent_lastminute_handshake, p.rx_bytes, p.tx_bytes, p.last_handshake, p.handshakes_completed,
    )


def snapshot(device: Device) -> tuple:
    """Every piece of per-session state of `device`, as a comparable value."""
    return (
        tuple(sorted((k.hex(), peer_snapshot(p)) for k, p in device.peers.items())),
        tuple(sorted((i, type(o).__name__, id(o)) for i, o in device.indices.items())),
        device.next_deadline(),
    )


def armed_deadlines(device: Device) -> list[float]:
    """Every armed timer of every peer."""
    out = []
    for p in device.peers.values():
        for d in (p.t_retransmit_handshake, p.t_send_keepalive, p.t_new_handshake,
                  p.t_zero_key_material, p.t_persistent_keepalive):
            if d is not None:
                out.append(d)
    return out
