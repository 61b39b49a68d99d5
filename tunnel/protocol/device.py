"""The protocol state of one interface: our key, the peers, the index table.

Bytes and time in, actions out:
    receive_datagram(data, endpoint, now, under_load)  a UDP datagram arrived
    send_packet(packet, now)                          the TUN device gave us an IP packet
    tick(now)                                         timers; call at next_deadline()
    switch_endpoint(peer, endpoint, now)              send to another endpoint of the peer
    probe(peer, endpoint, now)                        try one without moving the peer
    set_private_key(key, now)                         our static key changed (or went)

Rules kept here:
- nothing here does I/O or reads a clock; `now` is the caller's monotonic
  time in seconds, and `wall_epoch` (wall time minus monotonic time, which
  the caller refreshes with sync_wall as often as it reads its clocks)
  turns it into the TAI64N wall time of an initiation;
- remote garbage becomes Drop(reason) and changes no state; a reply is sent
  only for a valid handshake message (or a cookie reply under load);
- our own misuse (bad key sizes, unknown peers) raises LocalError;
- a Device may have no private key (wireguard-go's interface before its
  first `wg set private-key`, or after `private-key /dev/null`): it keeps
  its peers and drops everything quietly under NO_PRIVATE_KEY, since no
  handshake can be made or answered without one.
"""

from __future__ import annotations

import heapq
import itertools
import os
from typing import Callable, Iterable

from . import transport
from .actions import Action, Drop, SendDatagram, WritePacket
from .allowedips import AllowedIPs
from .constants import (
    DEFAULT_MTU,
    INITIATION_MAC1_OFFSET,
    KEY_LEN,
    MESSAGE_HANDSHAKE_COOKIE,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    RESPONSE_MAC1_OFFSET,
)
from .cookie import CookieChecker
from .counters import Counters
from .crypto import clamp
from .errors import (
    NO_PRIVATE_KEY,
    NO_ROUTE,
    CookieRequired,
    LocalError,
    MalformedMessage,
    RateLimited,
    RemoteError,
    UnknownReceiver,
)
from .keypair import Keypair
from .messages import CookieReply, Initiation, Response, message_type
from .noise import StaticIdentity, consume_initiation
from .peer import Peer
from .ratelimiter import RateLimiter

Rng = Callable[[int], bytes]
JITTER_POOL = 512  # bytes: 256 jitter values per rng call


def packet_destination(packet: bytes | memoryview) -> bytes | None:
    """The destination address of an IPv4/IPv6 packet, or None if it is neither."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return bytes(packet[16:20])
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return bytes(packet[24:40])
    return None


class Device:
    def __init__(
        self,
        private_key: bytes | None,
        *,
        wall_epoch: float,
        mtu: int = DEFAULT_MTU,
        rng: Rng = os.urandom,
        counters: Counters | None = None,
    ):
        self.wall_epoch = wall_epoch
        self.mtu = mtu
        self.rng = rng
        # Timer jitter: drawn from rng JITTER_POOL bytes at a time, not once per data packet sent
        # (request/response traffic re-arms the new-handshake timer on every send; os.urandom is
        # a system call).
        self._jitter_pool = rng(JITTER_POOL)
        self._jitter_pos = 0
        # Our static key pair and the mac1/cookie keys derived from its public
        # half; all None while the device has no private key.
        self.identity: StaticIdentity | None = None
        self.public_key: bytes | None = None
        self.cookie_checker: CookieChecker | None = None
        self._take_identity(private_key)
        self.ratelimiter = RateLimiter()
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips = AllowedIPs()
        # local index -> Peer (a handshake in progress) or Keypair (a session)
        self.indices: dict[int, Peer | Keypair] = {}
        self._heap: list[tuple[float, int, Peer]] = []
        self._seq = itertools.count()
        # Shared with the data plane, which counts its I/O into the same object.
        self.counters = counters if counters is not None else Counters()

    @property
    def drops(self):
        """Drops by reason (the counters' Counter)."""
        return self.counters.drops

    def __repr__(self) -> str:
        return f"Device(peers={len(self.peers)}{'' if self.identity else ', no key'})"

    @property
    def private_key(self) -> bytes | None:
        """Our static private key as X25519 uses it (clamped, as wg shows it), or None."""
        return None if self.identity is None else clamp(self.identity.private.raw)

    def jitter(self) -> float:
        """A uniform value in [0, 1) for timer jitter (16 bits of rng)."""
        pos = self._jitter_pos
        if pos >= len(self._jitter_pool):
            self._jitter_pool = self.rng(JITTER_POOL)
            pos = 0
        self._jitter_pos = pos + 2
        return int.from_bytes(self._jitter_pool[pos:pos + 2], "little") / 65536

    def _take_identity(self, private_key: bytes | None) -> None:
        if private_key is None:
            self.identity = self.public_key = self.cookie_checker = None
            return
        if len(private_key) != KEY_LEN:
            raise LocalError("a private key is 32 bytes")
        self.identity = StaticIdentity(private_key)
        self.public_key = self.identity.public
        self.cookie_checker = CookieChecker(self.public_key, self.rng)

    def set_private_key(self, private_key: bytes | None, now: float) -> list[Peer]:
        """Take a new static private key (None: have none from now on); returns the peers removed.

        As the kernel's and wireguard-go's: a peer whose public key is our
        new public key is removed; every other peer's handshake in progress
        ends, its static-static DH is computed again at its next handshake,
        and its current and next sessions may no longer send (they still
        receive what is in flight), so the next packet to it starts a
        handshake with the new key at once. A key equal to the one we have
        changes nothing.
        """
        if private_key is not None:
            if len(private_key) != KEY_LEN:
                raise LocalError("a private key is 32 bytes")
            if self.identity is not None and clamp(private_key) == self.private_key:
                return []
        elif self.identity is None:
            return []
        self._take_identity(private_key)
        removed = []
        if self.public_key is not None and self.public_key in self.peers:
            removed.append(self.remove_peer(self.public_key))
        for peer in self.peers.values():
            peer.set_identity(self.identity, now)
        return removed

    def wall(self, now: float) -> float:
        """The wall time (Unix seconds) at the caller's monotonic `now`."""
        return now + self.wall_epoch

    def sync_wall(self, wall: float, now: float) -> None:
        """The caller's wall clock read at its monotonic `now`.

        Initiation timestamps (TAI64N) come from the latest of these, so a
        wall clock that NTP corrects after start-up is followed at once: a
        peer that once saw a newer timestamp would refuse stale ones forever.
        """
        self.wall_epoch = wall - now

    # ------------------------------------------------------------------
    # configuration
    # ------------------------------------------------------------------

    def add_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        allowed_ips: Iterable[str] = (),
        endpoint: tuple | None = None,
        persistent_keepalive: int = 0,
        name: str | None = None,
    ) -> Peer:
        if len(public_key) != KEY_LEN:
            raise LocalError("a public key is 32 bytes")
        if self.public_key is not None and public_key == self.public_key:
            raise LocalError("a peer cannot have our own public key")
        if public_key in self.peers:
            raise LocalError("peer already exists")
        peer = Peer(self, self.identity, public_key, preshared_key, endpoint, persistent_keepalive, name)
        self.peers[public_key] = peer
        for net in allowed_ips:
            self.allowed_ips.insert(net, peer)
        return peer

    def remove_peer(self, public_key: bytes) -> Peer:
        """Remove a peer at once: its sessions end and its indices are freed."""
        peer = self.peers.pop(public_key, None)
        if peer is None:
            raise LocalError("no such peer")
        self.allowed_ips.remove_value(peer)
        peer.zero_keys()
        peer.staged.clear()
        peer.removed = True
        return peer

    def set_persistent_keepalive(self, peer: Peer, interval: int, now: float) -> list[Action]:
        """Change the interval; as wg does, a newly enabled one sends a keepalive at once."""
        out: list[Action] = []
        was = peer.persistent_keepalive
        peer.persistent_keepalive = interval
        if interval and not was:
            peer.send_keepalive(now, out)
        elif not interval:
            peer.t_persistent_keepalive = None
        return out

    # ------------------------------------------------------------------
    # indices
    # ------------------------------------------------------------------

    def _allocate_index(self, owner: Peer) -> int:
        while True:
            index = int.from_bytes(self.rng(4), "little")
            if index and index not in self.indices:
                self.indices[index] = owner
                return index

    def _replace_index(self, index: int, owner: Peer | Keypair) -> None:
        self.indices[index] = owner

    def _release_index(self, index: int, owner: Peer | Keypair) -> None:
        if self.indices.get(index) is owner:
            del self.indices[index]

    # ------------------------------------------------------------------
    # timers
    # ------------------------------------------------------------------

    def _schedule(self, peer: Peer, when: float) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), peer))

    def next_deadline(self) -> float | None:
        """When tick() next has work to do (None: no timer armed)."""
        # The heap keeps entries of timers since disarmed or pushed later
        # (a keepalive cancelled by a sent packet): drop those at the top, so
        # the caller does not wake for nothing, and re-file the peer's real one.
        heap = self._heap
        while heap:
            when, _, peer = heap[0]
            if not peer.removed:
                real = peer.next_deadline()
                if real is not None and real <= when:
                    return when
            heapq.heappop(heap)
            if peer.removed:
                continue
            if peer.scheduled == when:
                peer.scheduled = float("inf")
            if real is not None and real < peer.scheduled:
                peer.scheduled = real
                self._schedule(peer, real)
        return None

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        due: list[Peer] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, peer = heapq.heappop(self._heap)
            if not peer.removed and peer not in due:
                due.append(peer)
        for peer in due:
            peer.scheduled = float("inf")
            peer.run_timers(now, out)
            nd = peer.next_deadline()
            if nd is not None and nd < peer.scheduled:
                peer.scheduled = nd
                self._schedule(peer, nd)
        return out

    # ------------------------------------------------------------------
    # from the tunnel device
    # ------------------------------------------------------------------

    def route(self, packet: bytes | memoryview) -> Peer | None:
        """The peer a packet's destination routes to (cryptokey routing), or None."""
        dst = packet_destination(packet)
        return None if dst is None else self.allowed_ips.lookup(dst)

    def send_packet(self, packet: bytes, now: float) -> list[Action]:
        """An IP packet read from the TUN device: encrypt it to the peer its destination routes to."""
        out: list[Action] = []
        peer = self.route(packet)
        if peer is None:
            self.drop(NO_ROUTE, None, out)
            return out
        peer.send_packet(bytes(packet), now, out)
        return out

    def send_keepalive(self, peer: Peer, now: float) -> list[Action]:
        out: list[Action] = []
        peer.send_keepalive(now, out)
        return out

    def initiate(self, peer: Peer, now: float) -> list[Action]:
        """Start a handshake now (as `wg set` with a new endpoint, or at start-up)."""
        out: list[Action] = []
        peer.send_initiation(now, out)
        return out

    def switch_endpoint(self, peer: Peer, endpoint: tuple, now: float) -> list[Action]:
        """Move PEER to ENDPOINT (another gateway with its key) and start a handshake there now."""
        out: list[Action] = []
        peer.switch_endpoint(endpoint, now, out)
        return out

    def probe(self, peer: Peer, endpoint: tuple, now: float) -> list[Action]:
        """An initiation to ENDPOINT without moving PEER: an authenticated answer from there roams it.

        Nothing is sent while a handshake of ours is in flight ([] returned).
        """
        out: list[Action] = []
        peer.send_probe(endpoint, now, out)
        return out

    # ------------------------------------------------------------------
    # from the network
    # ------------------------------------------------------------------

    def receive_datagram(
        self, data: bytes, endpoint: tuple, now: float, under_load: bool = False
    ) -> list[Action]:
        out: list[Action] = []
        try:
            kind = message_type(data)
            if self.identity is None and kind != MESSAGE_TRANSPORT_DATA:
                # No key: no handshake can be answered, nor a cookie reply checked.
                self.drop(NO_PRIVATE_KEY, None, out)
                return out
            if kind == MESSAGE_TRANSPORT_DATA:
                self._receive_transport(data, endpoint, now, out)
            elif kind == MESSAGE_HANDSHAKE_INITIATION:
                self._receive_initiation(bytes(data), endpoint, now, under_load, out)
            elif kind == MESSAGE_HANDSHAKE_RESPONSE:
                self._receive_response(bytes(data), endpoint, now, under_load, out)
            elif kind == MESSAGE_HANDSHAKE_COOKIE:
                self._receive_cookie(bytes(data), now)
            else:
                raise MalformedMessage("unknown message type")
        except RemoteError as exc:
            self.drop(exc.reason, None, out)
        return out

    def _receive_initiation(self, data: bytes, endpoint: tuple, now: float, under_load: bool, out: list[Action]) -> None:
        msg = Initiation.unpack(data)
        self._check_macs(data, INITIATION_MAC1_OFFSET, msg.sender, endpoint, now, under_load, out)
        hs = consume_initiation(self.identity, msg, self._handshake_of, now)
        peer = self.peers[hs.remote_static]
        peer.set_endpoint(endpoint, out)
        peer.send_response(now, out)
        peer._timers_any_authenticated_packet_received()
        peer._timers_any_authenticated_packet_traversal(now)

    def _check_macs(self, data: bytes, mac1_offset: int, sender: int, endpoint: tuple, now: float,
                    under_load: bool, out: list[Action]) -> None:
        """mac1 always; under load a valid mac2 too (else answer with a cookie reply and stop) and the source's rate."""
        try:
            self.cookie_checker.validate(data, mac1_offset, endpoint, now, under_load)
        except CookieRequired:
            out.append(SendDatagram(endpoint, self.cookie_checker.create_reply(data, mac1_offset, sender, endpoint, now)))
            self.counters.cookie_replies += 1
            raise
        # A valid mac2 proves the address, not good manners: limit each source before any X25519.
        if under_load and not self.ratelimiter.allow(endpoint, now):
            raise RateLimited("handshake messages from this source over its limit")

    def _handshake_of(self, public_key: bytes):
        peer = self.peers.get(public_key)
        return peer.handshake if peer is not None else None

    def _receive_response(self, data: bytes, endpoint: tuple, now: float, under_load: bool, out: list[Action]) -> None:
        msg = Response.unpack(data)
        self._check_macs(data, RESPONSE_MAC1_OFFSET, msg.sender, endpoint, now, under_load, out)
        owner = self.indices.get(msg.receiver)
        if not isinstance(owner, Peer):
            raise UnknownReceiver("response to no initiation of ours")
        peer = owner
        peer.handshake.consume_response(msg)
        peer.set_endpoint(endpoint, out)
        peer.complete_as_initiator(now, out)
        peer._timers_any_authenticated_packet_received()
        peer._timers_any_authenticated_packet_traversal(now)

    def _receive_cookie(self, data: bytes, now: float) -> None:
        msg = CookieReply.unpack(data)
        owner = self.indices.get(msg.receiver)
        if owner is None:
            raise UnknownReceiver("cookie reply for an unknown index")
        peer = owner if isinstance(owner, Peer) else owner.peer
        peer.cookie.consume_reply(msg, now)

    def _receive_transport(self, data: bytes, endpoint: tuple, now: float, out: list[Action]) -> None:
        """One transport message, through the same batch call the data plane uses."""
        view = memoryview(bytes(data))
        plain = memoryview(bytearray(max(0, len(view) - transport.OVERHEAD)))
        owner = self.indices.get(int.from_bytes(view[4:8], "little")) if len(view) >= 8 else None
        peer = owner.peer if type(owner) is Keypair else None

        def deliver(packet: memoryview) -> None:
            out.append(WritePacket(bytes(packet), peer))

        def handshake(datagram: bytes, source: tuple) -> None:  # pragma: no cover - type 4 only here
            raise AssertionError("a handshake message on the transport path")

        transport.open_batch(self, view, 0, len(view), len(view), endpoint, plain, deliver, handshake, now, out,
                             drops=out)

    # ------------------------------------------------------------------

    def drop(self, reason: str, peer: Peer | None, out: list[Action]) -> None:
        """Count a drop under its reason and report it to the caller."""
        self.counters.drops[reason] += 1
        out.append(Drop(reason, peer))
