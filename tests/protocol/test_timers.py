"""The peer timers of whitepaper 6.2-6.5 (named as the kernel's timers.c),
driven by a fake clock: each fires at its deadline and not before, and
Device.next_deadline() always names the earliest armed one."""

from __future__ import annotations

import random

import pytest

from tunnel.protocol.constants import (
    KEEPALIVE_SIZE,
    KEEPALIVE_TIMEOUT,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_TRANSPORT_DATA,
    REJECT_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)

from .pair import armed_deadlines, established_pair, make_pair

J = REKEY_TIMEOUT_JITTER_MAX


def _keepalives(net, node, since=0):
    return [f for f in net.log[since:] if f.sender is node and f.data[0] == MESSAGE_TRANSPORT_DATA
            and len(f.data) == KEEPALIVE_SIZE]


def _initiations(net, node, since=0):
    return [f for f in net.log[since:] if f.sender is node and f.data[0] == MESSAGE_HANDSHAKE_INITIATION]


def _times(net, flights):
    return [f.sent_at for f in flights]


def test_passive_keepalive_after_data_received():
    net, a, b = established_pair(seed=50)
    net.advance(KEEPALIVE_TIMEOUT * 2)  # the keepalives of the set-up are done
    t0 = net.now
    mark = len(net.log)
    a.ping(b)
    net.advance(KEEPALIVE_TIMEOUT - 0.01)
    assert _keepalives(net, b, mark) == []
    net.advance(0.02)
    ka = _keepalives(net, b, mark)
    assert len(ka) == 1 and ka[0].sent_at == pytest.approx(t0 + KEEPALIVE_TIMEOUT)
    # one only: it was not data, so a does not answer it, and nothing more follows
    net.advance(100)
    assert len(_keepalives(net, b, mark)) == 1 and _keepalives(net, a, mark) == []


def test_no_passive_keepalive_when_data_was_sent_back():
    net, a, b = established_pair(seed=51)
    net.advance(KEEPALIVE_TIMEOUT * 2)
    mark = len(net.log)
    a.ping(b)
    net.advance(3)
    b.ping(a)  # data back: it carries the acknowledgement
    net.advance(KEEPALIVE_TIMEOUT - 3 - 0.01)
    assert _keepalives(net, b, mark) == []
    # a received data at t+3, sent nothing: a answers with a keepalive at t+13
    net.advance(3.02)
    assert len(_keepalives(net, a, mark)) == 1 and _keepalives(net, b, mark) == []


def test_persistent_keepalive_interval():
    # (all before REKEY_AFTER_TIME, so no rekey adds packets of its own)
    net, a, b = make_pair(seed=52, keepalive_a=15)
    a.initiate(b)
    start = net.now
    mark = len(net.log)
    net.advance(15 * 4 + 1)
    times = _times(net, _keepalives(net, a, mark))
    assert times == pytest.approx([start + 15 * k for k in (1, 2, 3, 4)])
    # any authenticated packet, sent or received, restarts the interval: a's
    # data at t, then b's passive keepalive at t + 10, so a's next at t + 25
    net.advance(5)
    mark = len(net.log)
    t = net.now
    a.ping(b)
    net.advance(24.9)
    assert _keepalives(net, a, mark) == []
    assert _times(net, _keepalives(net, b, mark)) == pytest.approx([t + KEEPALIVE_TIMEOUT])
    net.advance(0.2)
    assert _times(net, _keepalives(net, a, mark)) == pytest.approx([t + KEEPALIVE_TIMEOUT + 15])


def test_new_handshake_when_sent_data_gets_no_reply():
    net, a, b = established_pair(seed=53)
    net.advance(30)
    net.hold = lambda f: f.sender is a  # b is gone
    mark = len(net.log)
    t0 = net.now
    a.ping(b)
    net.advance(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - 0.01)
    assert _initiations(net, a, mark) == []
    net.advance(J + 0.02)
    inits = _initiations(net, a, mark)
    assert len(inits) == 1
    assert t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT <= inits[0].sent_at <= t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + J
    assert "handshake_no_reply" in a.event_kinds()


def test_no_new_handshake_when_reply_arrives():
    net, a, b = established_pair(seed=54)
    net.advance(30)
    mark = len(net.log)
    a.ping(b)  # b answers with a keepalive after 10 s: an authenticated packet
    net.advance(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 1)
    assert _initiations(net, a, mark) == [] and len(_keepalives(net, b, mark)) == 1


def test_retransmit_with_jitter_then_give_up():
    net, a, b = make_pair(seed=55)
    pa = a.peer_of(b)
    net.hold = lambda f: f.sender is a  # b never hears us
    a.ping(b)
    a.ping(b, payload=b"second")
    assert len(pa.staged) == 2
    net.advance(REKEY_ATTEMPT_TIME + 60)
    times = _times(net, _initiations(net, a))
    gaps = [t2 - t1 for t1, t2 in zip(times, times[1:])]
    assert all(REKEY_TIMEOUT <= g <= REKEY_TIMEOUT + J for g in gaps), gaps
    assert len(set(round(g, 6) for g in gaps)) > 1  # there is jitter
    # the first plus 19 retries (as the kernel: MAX_TIMER_HANDSHAKES + 2 in all)
    assert len(times) == int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT) + 2
    assert times[-1] - times[0] >= REKEY_ATTEMPT_TIME
    gave_up = [e for e in a.events if e.kind == "handshake_gave_up"]
    assert len(gave_up) == 1 and gave_up[0].detail == 2
    assert not pa.staged and pa.t_retransmit_handshake is None
    # nothing further until someone sends again
    mark = len(net.log)
    net.advance(300)
    assert _initiations(net, a, mark) == []
    a.ping(b)
    assert len(_initiations(net, a, mark)) == 1


def test_keys_zeroed_after_three_reject_after_time():
    net, a, b = established_pair(seed=56)
    pa = a.peer_of(b)
    created = pa.current.created
    net.advance(3 * REJECT_AFTER_TIME - 1 - net.now + created)
    assert pa.current is not None and a.device.indices
    net.advance(2)
    assert pa.current is pa.previous is pa.next is None
    assert a.device.indices == {} and b.device.indices == {}
    assert "keys_zeroed" in a.event_kinds() and "keys_zeroed" in b.event_kinds()
    assert a.device.next_deadline() is None and b.device.next_deadline() is None
    # a new packet starts over with a fresh handshake
    p = a.ping(b)
    assert b.written[-1] == p


def test_zeroing_rearmed_by_each_new_session():
    net, a, b = established_pair(seed=57)
    pa = a.peer_of(b)
    net.advance(REJECT_AFTER_TIME + 1)
    a.ping(b)  # a new session at 181
    second = pa.current.created
    net.advance(3 * REJECT_AFTER_TIME - net.now + 10)  # past 540 from the first
    assert pa.current is not None and pa.current.created == second
    net.advance(second + 3 * REJECT_AFTER_TIME - net.now + 1)
    assert pa.current is None and a.device.indices == {}


def _check_deadline(node):
    armed = armed_deadlines(node.device)
    assert node.device.next_deadline() == (min(armed) if armed else None)


def test_next_deadline_is_earliest_armed_timer():
    """A seeded random walk of traffic, losses and time; checked after every step."""
    for seed in range(4):
        rnd = random.Random(seed)
        net, a, b = make_pair(seed=60 + seed, keepalive_b=rnd.choice([0, 7, 25]))
        net.loss = 0.1
        for _ in range(250):
            r = rnd.random()
            if r < 0.3:
                a.ping(b)
            elif r < 0.5:
                b.ping(a, v6=True)
            elif r < 0.55:
                a.keepalive(b)
            else:
                d = rnd.choice([0.5, 2, 5, 11, 30, 200])
                # walk the clock one deadline at a time, checking at each
                target = net.now + d
                while True:
                    nd = net.next_deadline()
                    if nd is None or nd > target:
                        break
                    net.now = max(net.now, nd)
                    net.tick()
                    _check_deadline(a)
                    _check_deadline(b)
                net.now = target
            _check_deadline(a)
            _check_deadline(b)


def test_tick_before_deadline_does_nothing():
    net, a, b = established_pair(seed=58)
    d = a.device.next_deadline()
    assert d is not None
    assert a.device.tick(d - 0.001) == []
    assert a.device.next_deadline() == d


def test_set_persistent_keepalive_at_runtime():
    net, a, b = established_pair(seed=59)
    net.advance(20)
    pa = a.peer_of(b)
    mark = len(net.log)
    out = a.device.set_persistent_keepalive(pa, 7, net.now)
    net.handle(a, out)
    net.deliver()
    t = net.now
    assert len(_keepalives(net, a, mark)) == 1  # enabling sends one at once, as wg does
    net.advance(7 * 3 + 0.5)
    assert _times(net, _keepalives(net, a, mark))[1:] == pytest.approx([t + 7, t + 14, t + 21])
    a.device.set_persistent_keepalive(pa, 0, net.now)
    _check_deadline(a)
    mark = len(net.log)
    net.advance(60)
    assert _keepalives(net, a, mark) == []


def test_request_and_response_traffic_draws_no_randomness_per_packet():
    """Each packet sent after one received re-arms the new-handshake timer with jitter; the jitter
    comes from a pool the device's rng (os.urandom: a system call) fills 256 values at a time."""
    net, a, b = established_pair(seed=57)
    calls = []
    for node in (a, b):
        rng = node.device.rng
        node.device.rng = lambda n, rng=rng: calls.append(n) or rng(n)
    t_before = a.peer_of(b).t_new_handshake
    for _ in range(50):
        a.ping(b)
        b.ping(a)
        net.advance(0.01)
    pa = a.peer_of(b)
    assert pa.t_new_handshake is None  # b's last packet cleared it
    a.ping(b)
    now = net.now
    assert len(calls) <= 1, calls  # 101 sends: at most one refill of the device's jitter pool
    assert len(a.written) == 50 and len(b.written) == 51
    # Armed again by a's last send, with a jitter inside the whitepaper's bound.
    base = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
    assert base <= pa.t_new_handshake < base + J and pa.t_new_handshake != t_before
    values = [a.device.jitter() for _ in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values) and len(set(values)) > 950
