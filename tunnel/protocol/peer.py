"""One peer: its handshake, its three keypairs, its staged packets and its timers.

Timers (whitepaper 6.2-6.5, named as the kernel's timers.c); each is a
deadline on the caller's monotonic clock, or None when not armed:

  retransmit_handshake  armed when we send an initiation, REKEY_TIMEOUT + jitter
                        later: send another; after REKEY_ATTEMPT_TIME of tries
                        give up and drop the staged packets.
  send_keepalive        armed (if not already) when a data packet arrives; after
                        KEEPALIVE_TIMEOUT with nothing sent back, send a keepalive.
                        Disarmed by any authenticated packet we send.
  new_handshake         armed (if not already) when we send a data packet; after
                        KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter with nothing
                        authenticated received, start a new handshake. Disarmed by
                        any authenticated packet received.
  zero_key_material     armed when a session is derived; 3 x REJECT_AFTER_TIME
                        later every key of this peer is dropped.
  persistent_keepalive  re-armed by every authenticated packet sent or received
                        when configured; fires: send a keepalive.

Checks made as packets pass rather than by timers:
  sending: if the current keypair has sent REKEY_AFTER_MESSAGES, or we
  initiated it and it is older than REKEY_AFTER_TIME, start a handshake.
  receiving: if we initiated the current keypair and it is older than
  REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT, start one (once).
  A keypair older than REJECT_AFTER_TIME or past REJECT_AFTER_MESSAGES is
  never used; a responder uses a new keypair only after data arrived on it.

Initiations are never sent more often than once per REKEY_TIMEOUT, except
the one a caller's endpoint switch starts (a new destination) and probes
(sent to another endpoint, they leave this peer's timers alone).

Several endpoints (tunnel/failover.py decides, this file only obeys):
  switch_endpoint  send to another endpoint from now on: it holds none of our
                   sessions (another gateway with the same key), so the
                   current one is kept for receiving only (as `previous`), what
                   is sent meanwhile is staged, and a handshake starts at once;
  send_probe       an initiation to another endpoint, the endpoint, sessions
                   and timers untouched; its authenticated response roams the
                   peer there like any other (Device._receive_response);
  awaiting_reply   data or an initiation of ours still has no answer (the
                   new_handshake or retransmit_handshake timer is armed).
"""

from __future__ import annotations

import collections
import functools
import math
import operator
from typing import TYPE_CHECKING

from . import transport
from .actions import Action, Event, SendDatagram
from .constants import (
    HANDSHAKE_INITIATION_SIZE,
    INITIATION_MAC1_OFFSET,
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    PADDING_MULTIPLE,
    REJECT_AFTER_TIME,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    RESPONSE_MAC1_OFFSET,
)
from .cookie import CookieGenerator
from .errors import INVALID_PEER_KEY, NO_ENDPOINT, NO_PRIVATE_KEY
from .keypair import Keypair
from .noise import Handshake, StaticIdentity

if TYPE_CHECKING:
    from .device import Device

MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
_NEVER = math.inf
# x is not None, in C: next_deadline's filter.
_is_set = functools.partial(operator.is_not, None)


class Peer:
    def __init__(
        self,
        device: "Device",
        identity: StaticIdentity,
        public_key: bytes,
        preshared_key: bytes | None = None,
        endpoint: tuple | None = None,
        persistent_keepalive: int = 0,
        name: str | None = None,
    ):
        self.device = device
        self.public_key = public_key
        self.name = name
        self.handshake = Handshake(identity, public_key, preshared_key)
        self.cookie = CookieGenerator(public_key)
        self.endpoint = endpoint
        self.persistent_keepalive = persistent_keepalive
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        # Made at first use (an empty deque is ~770 bytes; most of 10,000 peers never stage).
        self._staged: collections.deque[bytes] | None = None
        # timers
        self.t_retransmit_handshake: float | None = None
        self.t_send_keepalive: float | None = None
        self.t_new_handshake: float | None = None
        self.t_zero_key_material: float | None = None
        self.t_persistent_keepalive: float | None = None
        self.scheduled = _NEVER  # the earliest deadline the device's heap knows of
        self.handshake_attempts = 0
        self.last_sent_initiation: float | None = None
        self.need_another_keepalive = False
        self.sent_lastminute_handshake = False
        # statistics (read by show/metrics)
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake: float | None = None  # caller's clock
        self.handshakes_completed = 0
        self.removed = False

    def __repr__(self) -> str:
        return f"Peer({self.name or self.public_key[:4].hex()})"

    @property
    def staged(self) -> collections.deque[bytes]:
        """The packets waiting for a session (at most MAX_STAGED_PACKETS, the oldest dropped first)."""
        if self._staged is None:
            self._staged = collections.deque(maxlen=MAX_STAGED_PACKETS)
        return self._staged

    # ------------------------------------------------------------------
    # timer helpers
    # ------------------------------------------------------------------

    def _jitter(self) -> float:
        return self.device.jitter() * REKEY_TIMEOUT_JITTER_MAX

    def _arm(self, name: str, when: float) -> None:
        setattr(self, name, when)
        if when < self.scheduled:
            self.scheduled = when
            self.device._schedule(self, when)

    def next_deadline(self) -> float | None:
        return min(filter(_is_set, (self.t_retransmit_handshake, self.t_send_keepalive, self.t_new_handshake,
                                    self.t_zero_key_material, self.t_persistent_keepalive)), default=None)

    # the kernel's wg_timers_* events
    def _timers_data_sent(self, now: float) -> None:
        if self.t_new_handshake is None:
            self._arm("t_new_handshake", now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter())

    def _timers_data_received(self, now: float) -> None:
        if self.t_send_keepalive is None:
            self._arm("t_send_keepalive", now + KEEPALIVE_TIMEOUT)
        else:
            self.need_another_keepalive = True

    def _timers_any_authenticated_packet_sent(self) -> None:
        self.t_send_keepalive = None

    def _timers_any_authenticated_packet_received(self) -> None:
        self.t_new_handshake = None

    def _timers_any_authenticated_packet_traversal(self, now: float) -> None:
        if self.persistent_keepalive:
            self._arm("t_persistent_keepalive", now + self.persistent_keepalive)

    def _timers_handshake_initiated(self, now: float) -> None:
        self._arm("t_retransmit_handshake", now + REKEY_TIMEOUT + self._jitter())

    def _timers_handshake_complete(self, now: float) -> None:
        self.t_retransmit_handshake = None
        self.handshake_attempts = 0
        self.sent_lastminute_handshake = False
        self.last_handshake = now
        self.handshakes_completed += 1

    def _timers_session_derived(self, now: float) -> None:
        self._arm("t_zero_key_material", now + 3 * REJECT_AFTER_TIME)

    def run_timers(self, now: float, out: list[Action]) -> None:
        """Fire every timer whose deadline has passed (called by Device.tick)."""
        if self.t_retransmit_handshake is not None and now >= self.t_retransmit_handshake:
            self.t_retransmit_handshake = None
            if self.handshake_attempts > MAX_TIMER_HANDSHAKES:
                # whitepaper 6.4: give up after REKEY_ATTEMPT_TIME
                self.t_send_keepalive = None
                dropped = len(self._staged or ())
                self._staged = None
                if self.t_zero_key_material is None:
                    self._arm("t_zero_key_material", now + 3 * REJECT_AFTER_TIME)
                out.append(Event("handshake_gave_up", self, dropped))
            else:
                self.handshake_attempts += 1
                out.append(Event("handshake_retry", self, self.handshake_attempts))
                self.send_initiation(now, out, is_retry=True)
        if self.t_send_keepalive is not None and now >= self.t_send_keepalive:
            self.t_send_keepalive = None
            self.send_keepalive(now, out)
            if self.need_another_keepalive:
                self.need_another_keepalive = False
                self._arm("t_send_keepalive", now + KEEPALIVE_TIMEOUT)
        if self.t_new_handshake is not None and now >= self.t_new_handshake:
            self.t_new_handshake = None
            out.append(Event("handshake_no_reply", self))
            self.send_initiation(now, out, is_retry=False)
        if self.t_zero_key_material is not None and now >= self.t_zero_key_material:
            self.t_zero_key_material = None
            self.zero_keys()
            out.append(Event("keys_zeroed", self))
        if self.t_persistent_keepalive is not None and now >= self.t_persistent_keepalive:
            self.t_persistent_keepalive = None
            if self.persistent_keepalive:
                self.send_keepalive(now, out)

    # ------------------------------------------------------------------
    # keys
    # ------------------------------------------------------------------

    def _drop_keypair(self, kp: Keypair | None) -> None:
        if kp is not None:
            self.device._release_index(kp.local_index, kp)
            kp.wipe()

    def zero_keys(self) -> None:
        """Forget every session and the handshake in progress (timers.c: zero_key_material)."""
        for kp in (self.current, self.previous, self.next):
            self._drop_keypair(kp)
        self.current = self.previous = self.next = None
        self._release_handshake_index()
        self.handshake.clear()

    def set_identity(self, identity: StaticIdentity | None, now: float) -> None:
        """Our static key changed (Device.set_private_key): the kernel's expire_current_peer_keypairs.

        The handshake in progress was made with the old key and ends; the
        current and next sessions send no more (what the peer still sends on
        them is received until they expire), and the rate limit on initiations
        is lifted, so the next packet starts a handshake with the new key now.
        """
        self._release_handshake_index()
        self.handshake.set_local(identity)
        for kp in (self.current, self.next):
            if kp is not None:
                kp.send_counter = REJECT_AFTER_MESSAGES
        self.last_sent_initiation = None

    def _release_handshake_index(self) -> None:
        if self.handshake.local_index:
            self.device._release_index(self.handshake.local_index, self)

    def _add_keypair(self, kp: Keypair) -> None:
        """The kernel's add_new_keypair: an initiator uses it at once, a responder waits."""
        if kp.initiator:
            if self.next is not None:
                self._drop_keypair(self.previous)
                self.previous = self.next
                self.next = None
                self._drop_keypair(self.current)
            else:
                self._drop_keypair(self.previous)
                self.previous = self.current
            self.current = kp
        else:
            self._drop_keypair(self.next)
            self.next = kp
            self._drop_keypair(self.previous)
            self.previous = None

    def _received_with_keypair(self, kp: Keypair) -> bool:
        """Promote `next` once data arrives on it; True when it happened."""
        if kp is not self.next:
            return False
        self._drop_keypair(self.previous)
        self.previous = self.current
        self.current = kp
        self.next = None
        return True

    # ------------------------------------------------------------------
    # handshake sending
    # ------------------------------------------------------------------

    def send_initiation(self, now: float, out: list[Action], is_retry: bool = False) -> None:
        if not is_retry:
            self.handshake_attempts = 0
        if self.last_sent_initiation is not None and now - self.last_sent_initiation < REKEY_TIMEOUT:
            return
        if self.endpoint is None:
            self.device.drop(NO_ENDPOINT, self, out)
            return
        if not self.handshake.valid_peer:
            self.device.drop(NO_PRIVATE_KEY if self.handshake.local is None else INVALID_PEER_KEY, self, out)
            return
        self.last_sent_initiation = now
        self._release_handshake_index()
        index = self.device._allocate_index(self)
        msg = self.handshake.create_initiation(index, self.device.wall(now), self.device.rng)
        packet = bytearray(msg.pack())
        self.cookie.add_macs(packet, INITIATION_MAC1_OFFSET, now)
        self._timers_any_authenticated_packet_traversal(now)
        self._timers_any_authenticated_packet_sent()
        out.append(SendDatagram(self.endpoint, bytes(packet), self))
        self._timers_handshake_initiated(now)
        assert len(packet) == HANDSHAKE_INITIATION_SIZE

    def send_response(self, now: float, out: list[Action]) -> None:
        """Answer the initiation just consumed and derive the (next) keypair."""
        self.last_sent_initiation = now  # the kernel's last_sent_handshake covers both
        self._release_handshake_index()
        index = self.device._allocate_index(self)
        msg = self.handshake.create_response(index, self.device.rng)
        packet = bytearray(msg.pack())
        self.cookie.add_macs(packet, RESPONSE_MAC1_OFFSET, now)
        self._begin_session(now)
        self._timers_any_authenticated_packet_traversal(now)
        self._timers_any_authenticated_packet_sent()
        out.append(SendDatagram(self.endpoint, bytes(packet), self))

    def _begin_session(self, now: float) -> Keypair:
        keys = self.handshake.derive_session()
        kp = Keypair(keys, now, self)
        self.device._replace_index(kp.local_index, kp)
        self._add_keypair(kp)
        self._timers_session_derived(now)
        return kp

    def complete_as_initiator(self, now: float, out: list[Action]) -> None:
        """After a response was consumed: the session is usable at once."""
        self._begin_session(now)
        self._timers_handshake_complete(now)
        out.append(Event("handshake_completed", self))
        # Send what is staged, or a keepalive to confirm the session to the responder.
        self.send_keepalive(now, out)

    # ------------------------------------------------------------------
    # transport sending (sealing itself is transport.seal, the one path)
    # ------------------------------------------------------------------

    def send_packet(self, packet: bytes, now: float, out: list[Action]) -> None:
        """Stage one IP packet and send everything staged if a session allows."""
        self.staged.append(packet)
        self.send_staged(now, out)

    def send_keepalive(self, now: float, out: list[Action]) -> None:
        if not self._staged:
            self.staged.append(b"")
        self.send_staged(now, out)

    def sending_keypair(self, now: float, count: int = 1) -> Keypair | None:
        kp = self.current
        if kp is not None and kp.can_send(now, count):
            return kp
        if kp is not None:
            kp.valid = kp.valid and now - kp.created < REJECT_AFTER_TIME
        return None

    def send_staged(self, now: float, out: list[Action]) -> None:
        """Send everything staged if a session allows; otherwise start a handshake (they wait for it)."""
        if not self._staged:
            return
        if self.endpoint is None:
            self.device.drop(NO_ENDPOINT, self, out)
            self._staged = None
            return
        if self.sending_keypair(now, len(self._staged)) is None:
            self.send_initiation(now, out)
            return
        packets = list(self._staged)
        self._staged = None  # its memory goes back: most of the time nothing is staged
        room = sum(len(p) for p in packets) + len(packets) * (PADDING_MULTIPLE + transport.OVERHEAD)
        buf = memoryview(bytearray(room))

        def write(i: int, into: memoryview, at: int) -> int:
            p = packets[i]
            into[at:at + len(p)] = p
            return len(p)

        sizes: list[int] = []
        after: list[Action] = []
        transport.seal(self.device, self, write, 0, len(packets), buf, 0, now, after, sizes)
        pos = 0
        for size in sizes:
            out.append(SendDatagram(self.endpoint, bytes(buf[pos:pos + size]), self))
            pos += size
        out.extend(after)

    def note_sent(self, now: float, nbytes: int, data: bool, out: list[Action]) -> None:
        """Bookkeeping once per batch sealed with `current` (transport.seal calls it)."""
        self.tx_bytes += nbytes
        self._timers_any_authenticated_packet_traversal(now)
        self._timers_any_authenticated_packet_sent()
        if data:
            self._timers_data_sent(now)
        # keep_key_fresh (send side)
        kp = self.current
        if kp is not None and kp.valid and (
            kp.send_counter > REKEY_AFTER_MESSAGES
            or (kp.initiator and now - kp.created >= REKEY_AFTER_TIME)
        ):
            self.send_initiation(now, out)

    # ------------------------------------------------------------------
    # transport receiving
    # ------------------------------------------------------------------

    def note_received(self, kp: Keypair, now: float, endpoint: tuple, nbytes: int, data: bool, out: list[Action]) -> None:
        """Bookkeeping once per batch of authenticated transport packets on `kp` (transport.open_batch calls it)."""
        self.rx_bytes += nbytes
        self.set_endpoint(endpoint, out)
        self._timers_any_authenticated_packet_received()
        self._timers_any_authenticated_packet_traversal(now)
        if self._received_with_keypair(kp):
            self._timers_handshake_complete(now)
            out.append(Event("handshake_completed", self))
            self.send_staged(now, out)
        # keep_key_fresh (receive side)
        cur = self.current
        if (
            cur is not None and cur.valid and cur.initiator
            and now - cur.created >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
            and not self.sent_lastminute_handshake
        ):
            self.sent_lastminute_handshake = True
            self.send_initiation(now, out)
        if data:
            self._timers_data_received(now)

    # ------------------------------------------------------------------
    # several endpoints (the caller decides which; see the module docstring)
    # ------------------------------------------------------------------

    @property
    def awaiting_reply(self) -> bool:
        """Data or an initiation went out and nothing authenticated has come back since."""
        return self.t_new_handshake is not None or self.t_retransmit_handshake is not None

    def switch_endpoint(self, endpoint: tuple, now: float, out: list[Action]) -> None:
        """Send to ENDPOINT from now on, starting with a handshake (it shares none of our sessions)."""
        self.endpoint = endpoint
        # The kernel's expire_current_peer_keypairs: nothing more is sealed with
        # a session the new endpoint does not hold; late packets on it still open.
        self._drop_keypair(self.next)
        self.next = None
        if self.current is not None:
            self._drop_keypair(self.previous)
            self.previous, self.current = self.current, None
        self.last_sent_initiation = None  # the REKEY_TIMEOUT spacing was for the old destination
        self.send_initiation(now, out)

    def send_probe(self, endpoint: tuple, now: float, out: list[Action]) -> bool:
        """An initiation to ENDPOINT, leaving this peer's endpoint, sessions and timers as they are.

        Not while a handshake of ours is in flight (it would lose that one's
        state). False when nothing was sent.
        """
        if self.t_retransmit_handshake is not None or not self.handshake.valid_peer:
            return False
        self._release_handshake_index()
        index = self.device._allocate_index(self)
        msg = self.handshake.create_initiation(index, self.device.wall(now), self.device.rng)
        packet = bytearray(msg.pack())
        self.cookie.add_macs(packet, INITIATION_MAC1_OFFSET, now)
        out.append(SendDatagram(endpoint, bytes(packet), self))
        return True

    def set_endpoint(self, endpoint: tuple, out: list[Action]) -> None:
        if endpoint != self.endpoint:
            old = self.endpoint
            self.endpoint = endpoint
            if old is not None:
                out.append(Event("roamed", self, endpoint))

