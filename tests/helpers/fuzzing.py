"""Fuzz inputs shared by the protocol fuzz test, the data-plane fuzz test and
bench/fuzz_dataplane.py: a device with a live session, the datagrams it has
been sent (one of each message kind), and mutations of them.
"""

from __future__ import annotations

import random
import struct

from tunnel.protocol import SendDatagram
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

from ..protocol.pair import established_pair


def settled_target(seed: int = 1):
    """(net, a, b, corpus): b has a live session with a and has been sent one
    of each message kind by a; `corpus` holds those datagrams."""
    net, a, b = established_pair(seed=seed)
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


def mutate(rnd: random.Random, data: bytes) -> bytes:
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


def random_datagram(rnd: random.Random, indices: list[int]) -> bytes:
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


def is_cookie_reply(action) -> bool:
    return (
        type(action) is SendDatagram and len(action.data) == COOKIE_REPLY_SIZE
        and action.data[:4] == b"\x03\0\0\0"
    )
