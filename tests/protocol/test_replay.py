"""The replay window against the numbered cases WireGuard's own filters are
tested with, plus bulk runs, big jumps, ring wrap-around and a naive model.

The numbered table follows the idea of wireguard-go's replay/replay_test.go
(itself ported from the kernel's counter selftest): one window, fed the
counters in order, each with the verdict it must get.
"""

from __future__ import annotations

import random

import pytest

from tunnel.protocol.constants import COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES
from tunnel.protocol.replay import ReplayWindow

W = COUNTER_WINDOW_SIZE  # 8128
LIM = W + 1  # the first counter that pushes 0 out of the window
R = REJECT_AFTER_MESSAGES

# (case, counter, accepted) -- applied in order to one fresh window.
SEQUENCE = [
    (1, 0, True),
    (2, 1, True),
    (3, 1, False),  # replay
    (4, 9, True),  # jump ahead
    (5, 8, True),  # late but fresh
    (6, 7, True),
    (7, 7, False),
    (8, LIM, True),  # window now ends at LIM; 0 has just fallen out
    (9, LIM - 1, True),
    (10, LIM - 1, False),
    (11, LIM - 2, True),
    (12, 2, True),  # oldest counter still inside the window
    (13, 2, False),
    (14, LIM + 16, True),
    (15, 3, False),  # now too old
    (16, LIM + 16, False),
    (17, LIM * 4, True),  # jump of several windows clears everything
    (18, LIM * 4 - (LIM - 1), True),  # exactly W behind: the oldest allowed
    (19, 10, False),
    (20, LIM * 4 - LIM, False),  # W + 1 behind
    (21, LIM * 4 - (LIM + 1), False),
    (22, LIM * 4 - (LIM - 2), True),
    (23, LIM * 4 + 1 - LIM, False),  # already seen as case 18
    (24, 0, False),
    (25, R, False),  # the limit itself is never accepted
    (26, R - 1, True),
    (27, R, False),
    (28, R - 1, False),
    (29, R - 2, True),
    (30, R + 1, False),
    (31, R + 2, False),
    (32, R - 2, False),
    (33, R - 3, True),
    (34, 0, False),
]


@pytest.mark.parametrize(
    "case,counter,accepted", SEQUENCE, ids=[f"case{c:02d}" for c, _, _ in SEQUENCE]
)
def test_numbered_case(case, counter, accepted):
    window = ReplayWindow()
    for earlier_case, earlier_counter, earlier_accepted in SEQUENCE[: case - 1]:
        assert window.update(earlier_counter) is earlier_accepted, f"case {earlier_case}"
    # check() predicts update() and leaves the window untouched.
    assert window.check(counter) is accepted
    assert window.check(counter) is accepted
    assert window.update(counter) is accepted
    # Whatever the verdict, the counter is never accepted a second time.
    assert window.check(counter) is False
    assert window.update(counter) is False


def _feed(window, counters):
    return [window.update(c) for c in counters]


def test_bulk_ascending_then_zero():
    window = ReplayWindow()
    assert all(_feed(window, range(1, W + 1)))
    assert window.update(0) is True  # exactly W behind
    assert window.update(0) is False


def test_bulk_ascending_pushes_zero_out():
    window = ReplayWindow()
    assert all(_feed(window, range(2, W + 2)))
    assert window.update(1) is True
    assert window.update(0) is False  # W + 1 behind


def test_bulk_descending_whole_window():
    window = ReplayWindow()
    assert all(_feed(window, range(W + 1, 0, -1)))
    assert not any(_feed(window, range(W + 1, 0, -1)))


def test_bulk_descending_then_too_old():
    window = ReplayWindow()
    assert all(_feed(window, range(W + 2, 1, -1)))
    assert window.update(0) is False


def test_bulk_descending_then_forward():
    window = ReplayWindow()
    assert all(_feed(window, range(W, 0, -1)))
    assert window.update(W + 1) is True
    assert window.update(0) is False


def test_bulk_descending_zero_then_forward():
    window = ReplayWindow()
    assert all(_feed(window, range(W, 0, -1)))
    assert window.update(0) is True
    assert window.update(W + 1) is True


@pytest.mark.parametrize("jump", [W, W + 1, 8192, 8192 + 63, 8192 + 64, 10**6, 2**40])
def test_big_jump_forgets_the_past_and_keeps_the_window(jump):
    window = ReplayWindow()
    assert all(_feed(window, range(100)))
    assert window.update(jump) is True
    # Everything within the window behind the new highest is fresh again
    # except counters we really saw.
    for behind in (1, 63, 64, 65, W - 1, W):
        c = jump - behind
        assert window.check(c) is (c >= 100), behind
    if jump - W - 1 >= 0:
        assert window.check(jump - W - 1) is False


def test_ring_wrap_keeps_window_exact():
    # Walk several times around the 128-block ring with small reordering and
    # check the oldest edge of the window at each step.
    window = ReplayWindow()
    top = 0
    for top in range(0, 5 * 8192, 37):
        assert window.update(top) is True
        if top >= W:
            assert window.check(top - W) is ((top - W) % 37 != 0)
        if top >= W + 1:
            assert window.check(top - W - 1) is False
    assert window.update(top) is False


def test_reset_forgets_everything():
    window = ReplayWindow()
    _feed(window, [0, 1, 5, 10**6])
    window.reset()
    assert all(_feed(window, [0, 1, 5]))
    assert window.update(5) is False


def test_limit_boundaries_on_fresh_window():
    window = ReplayWindow()
    assert window.check(R) is False
    assert window.check(2**64 - 1) is False
    assert window.check(R - 1) is True
    assert window.update(R - 1) is True
    assert window.update(R - 1 - W) is True
    assert window.update(R - 2 - W) is False


def _model_run(seed, steps, spread):
    """Against the naive definition: a set of every counter seen."""
    rng = random.Random(seed)
    window = ReplayWindow()
    seen: set[int] = set()
    highest = -1
    base = 0
    for _ in range(steps):
        r = rng.random()
        if r < 0.6:
            base += rng.randrange(0, 3)
            c = base
        elif r < 0.9:
            c = max(0, base - rng.randrange(0, spread))
        elif r < 0.98:
            c = base + rng.randrange(0, spread)
        else:
            base += rng.randrange(W, 3 * 8192)
            c = base
        expected = c < R and c not in seen and (c > highest or highest - c <= W)
        assert window.check(c) is expected, (seed, c, highest)
        assert window.update(c) is expected, (seed, c, highest)
        if expected:
            seen.add(c)
            highest = max(highest, c)


@pytest.mark.parametrize("seed", range(6))
def test_against_naive_model(seed):
    _model_run(seed, 20000, spread=(200, 9000)[seed % 2])
