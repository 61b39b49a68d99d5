"""Fuzzing a Device that holds an established session (h11's invariant:
"handled or dropped as remote garbage, nothing else").

Into the device go random datagrams and mutations (bit flips, truncations,
extensions, type changes, splices) of every datagram it has already been
sent: initiations, responses, cookie replies, transport data and keepalives.
For each one the device must return only Drop actions (or nothing), or,
when under load, a 64-byte cookie reply; never raise, never write a packet,
never log an event. Its whole session state (keypairs, counters, replay
windows, endpoint, handshake, cookies, timers, index table) must be exactly
as before.

TUNNEL_FUZZ_COUNT sets how many datagrams (default 200000; CI keeps it).
The seed is fixed per run; TUNNEL_FUZZ_SEED picks another.
"""

from __future__ import annotations

import os
import random
import struct

from tunnel.protocol import Drop, SendDatagram
from tunnel.protocol.constants import (
    COOKIE_REPLY_SIZE,
    HANDSHAKE_INITIATION_SIZE,
    HANDSHAKE_RESPONSE_SIZE,
    KEEPALIVE_SIZE,
    MESSAGE_HANDSHAKE_COOKIE,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    REKEY_TIMEOUT,
)

from .pair import established_pair, snapshot

COUNT = int(os.environ.get("TUNNEL_FUZZ_COUNT", "200000"))
SEED = int(os.environ.get("TUNNEL_FUZZ_SEED", "1"))
SNAPSHOT_EVERY = 2000


def _settled_target():
    """(net, a, b, corpus): b has a live session with a and has been sent one
    of each message kind by a; `corpus` holds those datagrams."""
    net, a, b = established_pair(seed=SEED)
    # b initiates too (so a sends b a response), first while a is under load
    # (so a sends b a cookie reply), then its retransmission with mac2 succeeds.
    net.advance(REKEY_TIMEOUT + 1)
    net.under_load.add("a")
    b.initiate(a)
    net.advance(REKEY_TIMEOUT + 1)
    net.under_load.clear()
    a.ping(b, payload=b"data")
    a.ping(b, v6=True, payload=b"six" * 100)
    a.keepalive(b)
    net.advance(REKEY_TIMEOUT + 1)
    a.peer_of(b).last_sent_initiation = None
    a.initiate(b)  # a fresh initiation from a, consumed by b
    a.ping(b, payload=b"after")
    net.advance(30)  # every pending timer run; then the clock stands still
    corpus = [f.data for f in net.log if f.destination == b.endpoint]
    kinds = {d[0] for d in corpus}
    assert kinds == {1, 2, 3, 4}, kinds
    assert any(len(d) == KEEPALIVE_SIZE for d in corpus)
    assert b.peer_of(a).current is not None
    return net, a, b, corpus


def _mutate(rnd: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rnd.randrange(8)
    if op == 0:  # a few bit flips
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
    elif op == 1:  # flips confined to the tail (mac2 / tag region)
        i = rnd.randrange(max(0, len(b) - 32), len(b))
        b[i] ^= 1 << rnd.randrange(8)
    elif op == 2:  # truncation
        del b[rnd.randrange(len(b)):]
    elif op == 3:  # extension
        b += rnd.randbytes(rnd.choice([1, 15, 16, 17, 64, rnd.randrange(1, 200)]))
    elif op == 4:  # type change (keeping the rest)
        b[0] = rnd.choice([0, 1, 2, 3, 4, 5, 255])
    elif op == 5:  # reserved bytes
        b[rnd.randrange(1, 4)] = rnd.randrange(1, 256)
    elif op == 6:  # overwrite a random span
        i = rnd.randrange(len(b))
        n = rnd.randint(1, 16)
        b[i:i + n] = rnd.randbytes(len(b[i:i + n]))
    else:  # counter / index fields of a transport header
        if len(b) >= 16:
            field = rnd.choice([(4, 4), (8, 8)])
            b[field[0]:field[0] + field[1]] = rnd.randbytes(field[1])
        else:
            b[0] ^= 0x80
    if bytes(b) == data:
        b.append(0)
    return bytes(b)


def _random(rnd: random.Random, indices: list[int]) -> bytes:
    size = rnd.choice([
        rnd.randrange(0, 40), rnd.randrange(0, 1500), HANDSHAKE_INITIATION_SIZE,
        HANDSHAKE_RESPONSE_SIZE, COOKIE_REPLY_SIZE, KEEPALIVE_SIZE, rnd.randrange(32, 200),
    ])
    b = bytearray(rnd.randbytes(size))
    if size >= 4 and rnd.random() < 0.7:
        b[0:4] = struct.pack("<I", rnd.choice([
            MESSAGE_HANDSHAKE_INITIATION, MESSAGE_HANDSHAKE_RESPONSE,
            MESSAGE_HANDSHAKE_COOKIE, MESSAGE_TRANSPORT_DATA,
        ]))
        if size >= 8 and rnd.random() < 0.6:
            # a receiver index the device actually uses: reaches the AEAD
            b[4:8] = struct.pack("<I", rnd.choice(indices))
    return bytes(b)


def _is_cookie_reply(action) -> bool:
    return (
        type(action) is SendDatagram and len(action.data) == COOKIE_REPLY_SIZE
        and action.data[:4] == b"\x03\0\0\0"
    )


def test_fuzz_established_device():
    net, a, b, corpus = _settled_target()
    device = b.device
    now = net.now
    before = snapshot(device)
    indices = list(device.indices) or [1]
    endpoints = [a.endpoint, ("203.0.113.1", 1), ("2001:db8::1", 51820)]
    rnd = random.Random(SEED)
    reasons: dict[str, int] = {}
    cookie_replies = 0
    for n in range(COUNT):
        if rnd.random() < 0.5:
            data = _mutate(rnd, rnd.choice(corpus))
        else:
            data = _random(rnd, indices)
        under_load = rnd.random() < 0.25
        endpoint = rnd.choice(endpoints)
        try:
            out = device.receive_datagram(data, endpoint, now, under_load)
        except Exception as exc:  # report the input that broke it
            raise AssertionError(f"datagram {n} ({data.hex()}) from {endpoint} raised {exc!r}") from exc
        for action in out:
            if type(action) is Drop:
                reasons[action.reason] = reasons.get(action.reason, 0) + 1
            elif under_load and _is_cookie_reply(action) and action.endpoint == endpoint:
                cookie_replies += 1
            else:
                raise AssertionError(f"datagram {n} ({data.hex()}) produced {action!r}")
        if n % SNAPSHOT_EVERY == 0:
            assert snapshot(device) == before, f"session state changed by datagram {n} ({data.hex()})"
    assert snapshot(device) == before
    # the run reached past the framing checks into every kind of verification
    if COUNT >= 20000:
        for reason in ("malformed", "invalid_mac1", "unknown_receiver", "authentication",
                       "replayed", "replayed_timestamp", "cookie_required"):
            assert reasons.get(reason, 0) > 0, (reason, reasons)
        assert cookie_replies > 0
    # and the session still works afterwards
    p = a.ping(b, payload=b"still alive")
    assert b.written[-1] == p


def test_replaying_the_whole_corpus_changes_nothing():
    """Every datagram b ever got, unchanged, again: all refused as replays."""
    net, a, b, corpus = _settled_target()
    before = snapshot(b.device)
    for data in corpus:
        for under_load in (False, True):
            out = b.device.receive_datagram(data, a.endpoint, net.now, under_load)
            assert all(type(x) is Drop or (under_load and _is_cookie_reply(x)) for x in out), out
    assert snapshot(b.device) == before
