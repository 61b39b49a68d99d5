"""Transport data (whitepaper 5.4.6): IP packets sealed into transport
messages and opened back, in caller buffers, a batch at a time.

This is the one transport path. The data plane calls `seal` and `open_batch`
for every packet it moves, and so do Peer.send_staged and
Device.receive_datagram; nothing else encrypts, decrypts or checks replay.
The shape is boringtun's encapsulate/decapsulate, made batch-wide: the caller
hands buffers and callbacks, the core decides and writes.

Rules kept here:
- the caller owns the buffers: `seal` writes datagrams back to back into
  `buf`, `open_batch` writes each plaintext into `out`; nothing is allocated
  per packet but the AEAD's 12-byte nonce;
- per packet: one AEAD call, a few pack_into and the caller's own callback
  (`write` puts a plaintext in place, `deliver` takes an opened packet): the
  packet surgery of offloads stays with the caller, and there is no other
  function layer on the way;
- counters, key expiry, the replay window, padding, the message-size filter,
  the inner packet checks and the source check are decided here, and every
  drop is counted here under its reason from errors.py;
- per-peer bookkeeping (timers, roaming, rekey) runs once per batch, through
  Peer.note_sent / Peer.note_received, whose actions go to `actions`;
- remote garbage changes no state: the replay window moves only after a
  packet authenticated, and nothing about a peer changes before that.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from cryptography.exceptions import InvalidTag

from .actions import Action, Drop
from .constants import (
    AEAD_TAG_LEN,
    COOKIE_REPLY_SIZE,
    HANDSHAKE_INITIATION_SIZE,
    HANDSHAKE_RESPONSE_SIZE,
    MESSAGE_HANDSHAKE_COOKIE,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    PADDING_MULTIPLE,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from .errors import (
    AuthenticationFailed,
    DisallowedSource,
    ExpiredKey,
    InvalidInnerPacket,
    MalformedMessage,
    Replayed,
    UnknownReceiver,
)
from .keypair import Keypair

if TYPE_CHECKING:
    from .device import Device
    from .peer import Peer

# write(i, buf, at) -> length: put plaintext packet i at buf[at:], return its length.
Write = Callable[[int, memoryview, int], int]
# deliver(packet): an authenticated IP packet (a view into the caller's `out` buffer, valid until the next one).
Deliver = Callable[[memoryview], None]
# handshake(datagram, source): a handshake message of exactly the right size, for the caller's queue.
Handshake = Callable[[bytes, tuple], None]

# The per-datagram overhead: header in front, tag behind.
OVERHEAD = TRANSPORT_HEADER_SIZE + AEAD_TAG_LEN

_HEADER = struct.Struct("<IIQ")  # type (with 3 zero bytes), receiver, counter
_NONCE = struct.Struct("<IQ")  # 4 zero bytes, the counter
_RECEIVER_COUNTER = struct.Struct("<IQ")  # at offset 4
_ZEROS = bytes(PADDING_MULTIPLE)

# Handshake messages by type: the only size each may have (whitepaper 5.4).
HANDSHAKE_SIZES = {
    MESSAGE_HANDSHAKE_INITIATION: HANDSHAKE_INITIATION_SIZE,
    MESSAGE_HANDSHAKE_RESPONSE: HANDSHAKE_RESPONSE_SIZE,
    MESSAGE_HANDSHAKE_COOKIE: COOKIE_REPLY_SIZE,
}

MALFORMED = MalformedMessage.reason
UNKNOWN_RECEIVER = UnknownReceiver.reason
EXPIRED_KEY = ExpiredKey.reason
REPLAYED = Replayed.reason
AUTHENTICATION = AuthenticationFailed.reason
INVALID_INNER = InvalidInnerPacket.reason
DISALLOWED_SOURCE = DisallowedSource.reason


def padded_length(n: int, mtu: int) -> int:
    """The plaintext length after padding (whitepaper 5.4.6): a multiple of 16, never past the MTU."""
    padded = n + (-n % PADDING_MULTIPLE)
    if padded > mtu:
        padded = n if n > mtu else mtu
    return padded


def datagram_size(n: int, mtu: int) -> int:
    """The size of the transport message that carries an n-byte packet."""
    return padded_length(n, mtu) + OVERHEAD


def seal(device: "Device", peer: "Peer", write: Write, first: int, count: int, buf: memoryview,
         pos: int, now: float, actions: list[Action], sizes: list[int] | None = None) -> int:
    """Seal packets first..first+count-1 for `peer` into transport messages, back to back in buf from pos.

    For each packet, write(i, buf, at) puts its plaintext at buf[at:] (room
    for its padding and tag must follow); the message is built around it in
    place. Returns the end position. When the peer has no usable session or
    no endpoint, nothing is sealed (the end is `pos`): the packets are staged
    and a handshake started, as the whitepaper asks, with buf[pos:] used as
    scratch. `sizes`, when given, gets the size of each message.
    """
    kp = peer.current
    if kp is None or peer.endpoint is None or not kp.can_send(now, count):
        for i in range(first, first + count):
            n = write(i, buf, pos)
            peer.staged.append(bytes(buf[pos:pos + n]))
        peer.send_staged(now, actions)
        return pos
    aead = kp.send_aead
    remote = kp.remote_index
    counter = kp.send_counter
    mtu = device.mtu
    pack_header = _HEADER.pack_into
    nonce = _NONCE.pack
    start_pos = pos
    data = False
    for i in range(first, first + count):
        start = pos + TRANSPORT_HEADER_SIZE
        n = write(i, buf, start)
        if n:
            data = True
        padded = n + (-n % PADDING_MULTIPLE)
        if padded > mtu:
            padded = n if n > mtu else mtu
        end = start + padded
        if padded != n:
            buf[start + n:end] = _ZEROS[:padded - n]
        pack_header(buf, pos, MESSAGE_TRANSPORT_DATA, remote, counter)
        aead.encrypt_into(nonce(0, counter), buf[start:end], None, buf[start:end + AEAD_TAG_LEN])
        counter += 1
        if sizes is not None:
            sizes.append(end + AEAD_TAG_LEN - pos)
        pos = end + AEAD_TAG_LEN
    kp.send_counter = counter
    counters = device.counters
    counters.tx_packets += count
    nbytes = pos - start_pos
    counters.tx_bytes += nbytes
    peer.note_sent(now, nbytes, data, actions)
    return pos


def open_batch(device: "Device", buf: memoryview, start: int, end: int, seg: int, source: tuple,
               out: memoryview, deliver: Deliver, handshake: Handshake, now: float,
               actions: list[Action], drops: list[Action] | None = None) -> None:
    """Open the datagrams in buf[start:end], `seg` bytes each but the last (a GRO train), from `source`.

    Transport messages are checked and decrypted into `out` (room for the
    largest plaintext); each authenticated IP packet whose source the
    sending peer may use goes to deliver(packet). Handshake messages of
    their exact size go to handshake(datagram, source) - the caller queues
    them; everything else is dropped here and counted under its reason (and
    also returned as a Drop in `drops` when given, for the general path).
    """
    counters = device.counters
    dropped = counters.drops
    indices = device.indices
    lookup = device.allowed_ips.lookup
    nonce = _NONCE.pack
    unpack = _RECEIVER_COUNTER.unpack_from
    seen: dict[Keypair, list] = {}
    last_kp = None
    last_receiver = -1
    off = start
    if seg <= 0:
        seg = end - start
    if end <= start:  # an empty datagram
        dropped[MALFORMED] += 1
        if drops is not None:
            drops.append(Drop(MALFORMED))
        return
    while off < end:
        d = off
        dlen = seg if off + seg <= end else end - off
        off += dlen
        kind = buf[d]
        if kind != MESSAGE_TRANSPORT_DATA or dlen < TRANSPORT_MIN_SIZE or buf[d + 1] or buf[d + 2] or buf[d + 3]:
            if HANDSHAKE_SIZES.get(kind) == dlen and not (buf[d + 1] or buf[d + 2] or buf[d + 3]):
                handshake(bytes(buf[d:d + dlen]), source)
            else:
                dropped[MALFORMED] += 1
                if drops is not None:
                    drops.append(Drop(MALFORMED))
            continue
        receiver, counter = unpack(buf, d + 4)
        if receiver == last_receiver:
            kp = last_kp
        else:
            kp = indices.get(receiver)
            if type(kp) is not Keypair:
                reason = UNKNOWN_RECEIVER
            elif not kp.can_receive(now):
                reason = EXPIRED_KEY
            else:
                last_kp, last_receiver = kp, receiver
                reason = None
            if reason is not None:
                dropped[reason] += 1
                if drops is not None:
                    drops.append(Drop(reason))
                continue
        replay = kp.replay
        if not replay.check(counter):
            dropped[REPLAYED] += 1
            if drops is not None:
                drops.append(Drop(REPLAYED, kp.peer))
            continue
        plen = dlen - OVERHEAD
        try:
            kp.recv_aead.decrypt_into(nonce(0, counter), buf[d + TRANSPORT_HEADER_SIZE:d + dlen], None, out[:plen])
        except InvalidTag:
            dropped[AUTHENTICATION] += 1
            if drops is not None:
                drops.append(Drop(AUTHENTICATION, kp.peer))
            continue
        if not replay.update(counter):  # check and update run back to back: kept as the rule's guard
            dropped[REPLAYED] += 1
            if drops is not None:
                drops.append(Drop(REPLAYED, kp.peer))
            continue
        entry = seen.get(kp)
        if entry is None:
            entry = seen[kp] = [0, False]
        entry[0] += dlen
        counters.rx_packets += 1
        if plen == 0:
            continue  # a keepalive
        entry[1] = True
        version = out[0] >> 4
        if version == 4 and plen >= 20:
            ilen = (out[2] << 8) | out[3]
            src = out[12:16]
            ok = 20 <= ilen <= plen
        elif version == 6 and plen >= 40:
            ilen = ((out[4] << 8) | out[5]) + 40
            src = out[8:24]
            ok = ilen <= plen
        else:
            ok = False
        peer = kp.peer
        if not ok:
            reason = INVALID_INNER
        elif lookup(src) is not peer:
            reason = DISALLOWED_SOURCE
        else:
            deliver(out[:ilen])
            continue
        dropped[reason] += 1
        if drops is not None:
            drops.append(Drop(reason, peer))
    for kp, (nbytes, data) in seen.items():
        counters.rx_bytes += nbytes
        kp.peer.note_received(kp, now, source, nbytes, data, actions)
