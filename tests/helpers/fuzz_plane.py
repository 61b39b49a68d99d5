"""The data-plane fuzz, shared by tests/dataplane/test_fuzz.py and bench/fuzz_dataplane.py.

A DataPlane over in-memory fakes is put around a Device that holds a live
session (tests/helpers/fuzzing.settled_target); random and mutated
datagrams go into its UDP side, alone and as GRO trains, in bursts that
sometimes push the handshake queue past "under load". Whatever comes in,
the invariant is h11's: handled or dropped as remote garbage. Nothing may
be written to the TUN, nothing sent but cookie replies to the source, and
the session state must not change.
"""

from __future__ import annotations

import random
import time

from tunnel.dataplane import DataPlane
from tunnel.dataplane.fakes import MemoryNet, MemoryTun
from tunnel.protocol.constants import COOKIE_REPLY_SIZE

from ..protocol.pair import snapshot
from .fuzzing import mutate, random_datagram, settled_target


class FuzzFailure(AssertionError):
    pass


def run(count: int, seed: int = 1, snapshot_every: int = 5000, check=True) -> dict:
    """Send `count` datagrams; returns {'reasons': drops by reason, 'cookie_replies': n, 'seconds': t}."""
    net, a, b, corpus = settled_target(seed)
    device = b.device
    now = net.now
    mem = MemoryNet()
    tun = MemoryTun(vnet_hdr=True)
    bind = mem.bind(*b.endpoint, filter=False)  # the core's own checks, on everything
    plane = DataPlane(device, tun, bind, clock=lambda: now, on_event=lambda ev: None)
    before = snapshot(device)
    drops_before = dict(device.counters.drops)
    indices = list(device.indices) or [1]
    sources = [a.endpoint, ("203.0.113.1", 1), ("2001:db8::1", 51820)]
    rnd = random.Random(seed)
    sent = 0
    started = time.perf_counter()
    try:
        while sent < count:
            # A burst: sometimes big enough to put the loop under load.
            burst = min(count - sent, rnd.choice([1, 8, 64, 500]))
            for _ in range(burst):
                data = mutate(rnd, rnd.choice(corpus)) if rnd.random() < 0.5 else random_datagram(rnd, indices)
                source = rnd.choice(sources)
                if len(data) >= 2 and rnd.random() < 0.1:
                    # a GRO train of copies (the kernel coalesces equal sizes; the last may be cut short)
                    k = rnd.randint(2, 5)
                    train = data * k
                    cut = rnd.randrange(0, len(data))
                    bind.inject_train(train[:len(train) - cut] if cut else train, len(data), source)
                else:
                    bind.inject(data, source)
            sent += burst
            while bind.ready_fds() or plane.handshakes:
                plane.service(bind.ready_fds(), now)
            if check:
                if tun.written:
                    raise FuzzFailure(f"a packet was written to the TUN after {sent} datagrams")
                for dst, d in bind.take_sent():
                    if len(d) != COOKIE_REPLY_SIZE or d[:4] != b"\x03\0\0\0" or dst not in sources:
                        raise FuzzFailure(f"sent {d.hex()} to {dst} after {sent} datagrams")
                if sent % snapshot_every < burst and snapshot(device) != before:
                    raise FuzzFailure(f"session state changed after {sent} datagrams")
        seconds = time.perf_counter() - started
        if check and snapshot(device) != before:
            raise FuzzFailure("session state changed")
        reasons = {k: v - drops_before.get(k, 0) for k, v in device.counters.drops.items()
                   if v - drops_before.get(k, 0)}
        result = {"reasons": reasons, "cookie_replies": device.counters.cookie_replies, "seconds": seconds,
                  "net": net, "a": a, "b": b}
    finally:
        plane.close()
        tun.close()
        bind.close()
    return result
