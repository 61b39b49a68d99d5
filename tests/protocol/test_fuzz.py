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

from tunnel.protocol import Drop

from ..helpers.fuzzing import is_cookie_reply, mutate, random_datagram, settled_target
from .pair import snapshot

COUNT = int(os.environ.get("TUNNEL_FUZZ_COUNT", "200000"))
SEED = int(os.environ.get("TUNNEL_FUZZ_SEED", "1"))
SNAPSHOT_EVERY = 2000


def test_fuzz_established_device():
    net, a, b, corpus = settled_target(SEED)
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
            data = mutate(rnd, rnd.choice(corpus))
        else:
            data = random_datagram(rnd, indices)
        under_load = rnd.random() < 0.25
        endpoint = rnd.choice(endpoints)
        try:
            out = device.receive_datagram(data, endpoint, now, under_load)
        except Exception as exc:  # report the input that broke it
            raise AssertionError(f"datagram {n} ({data.hex()}) from {endpoint} raised {exc!r}") from exc
        for action in out:
            if type(action) is Drop:
                reasons[action.reason] = reasons.get(action.reason, 0) + 1
            elif under_load and is_cookie_reply(action) and action.endpoint == endpoint:
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
    net, a, b, corpus = settled_target(SEED)
    before = snapshot(b.device)
    for data in corpus:
        for under_load in (False, True):
            out = b.device.receive_datagram(data, a.endpoint, net.now, under_load)
            assert all(type(x) is Drop or (under_load and is_cookie_reply(x)) for x in out), out
    assert snapshot(b.device) == before
