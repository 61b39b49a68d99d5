"""The loop's life around the data: it ends when its TUN's interface is deleted, and runs periodic work.

A TUN whose interface is gone (`ip link del`, or the namespace it was moved
to was deleted) is readable and reads EBADFD on Linux; the fakes' MemoryTun
does the same after `delete()`. The namespace tests show the real one.
"""

from __future__ import annotations

import threading

from ..helpers.packets import ipv4_packet
from ..helpers.planes import PlanePair, vnet_plain


def test_a_deleted_tun_ends_the_loop_and_says_so():
    pair = PlanePair()
    a, b = pair.sides
    try:
        a.tun.inject(vnet_plain(ipv4_packet(a.address4, b.address4, b"before")))
        pair.settle()
        assert len(b.packets()) == 1 and not a.plane.tun_gone
        a.tun.delete()
        a.plane.service([a.tun.fd], pair.clock.now)
        assert a.plane.tun_gone and a.plane._stop
        # The other side's loop goes on as before.
        assert not b.plane.tun_gone
    finally:
        pair.close()


def test_run_returns_when_the_tun_is_deleted():
    pair = PlanePair()
    a, _ = pair.sides
    try:
        thread = threading.Thread(target=a.plane.run, daemon=True)
        thread.start()
        a.tun.delete()
        thread.join(10)
        assert not thread.is_alive() and a.plane.tun_gone
    finally:
        pair.close()


def test_periodic_work_runs_in_the_loop_at_its_interval():
    pair = PlanePair()
    a, _ = pair.sides
    try:
        calls: list[float] = []
        a.plane.every(1.0, calls.append)
        start = pair.clock.now
        for step in range(1, 36):  # 3.5 s in turns of 0.1 s
            pair.clock.now = start + step / 10
            a.plane.service([], pair.clock.now)
        assert [round(t - start, 1) for t in calls] == [1.0, 2.0, 3.0]
    finally:
        pair.close()
