"""Disjoint intervals and boxes: the shapes nftables interval sets accept.

Rules kept here:
- the kernel's concatenated interval sets (nft_set_pipapo) refuse elements
  that partly overlap, and one-field interval sets refuse overlaps without
  auto-merge: everything handed to the compiler is made disjoint here;
- a box is (addr_lo, addr_hi, port_lo, port_hi), all inclusive integers;
  `disjoint_boxes` covers exactly the union of its input (the reference
  test checks it point by point) with few boxes: it sweeps one axis,
  merging neighbouring segments that cover the same intervals of the
  other; small inputs try both axes and keep the shorter answer, big ones
  sweep along the axis with more distinct intervals.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

SMALL = 64  # up to this many boxes, both sweeps are tried and the shorter answer kept
Interval = tuple[int, int]
Box = tuple[int, int, int, int]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint, non-touching intervals covering the same integers."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def disjoint_boxes(boxes: Iterable[Box]) -> list[Box]:
    """Pairwise disjoint boxes whose union is the union of BOXES.

    Sweeping along the ports suits "many hosts, one port" and sweeping
    along the addresses "one host, many ports"; both are tried and the
    shorter answer kept.
    """
    boxes = list(boxes)
    if not boxes:
        return []
    along_ports = lambda: _sweep(boxes)  # noqa: E731
    along_addrs = lambda: [(a, b, p, q) for p, q, a, b in _sweep([(p, q, a, b) for a, b, p, q in boxes])]  # noqa: E731
    if len(boxes) <= SMALL:
        by_port = along_ports()
        by_addr = along_addrs() if len(by_port) > 1 else by_port
        return by_addr if len(by_addr) < len(by_port) else by_port
    # Big inputs: sweep along the axis with more distinct intervals, so that the intervals active
    # at each step come from the other, smaller one (typically: many hosts, a few port ranges).
    addrs = len({(b[0], b[1]) for b in boxes})
    ports = len({(b[2], b[3]) for b in boxes})
    return along_addrs() if addrs >= ports else along_ports()


def _sweep(boxes: list[Box]) -> list[Box]:
    """Disjoint boxes by sweeping the second axis (the first is merged per segment)."""
    starts: dict[int, list[Interval]] = {}
    ends: dict[int, list[Interval]] = {}
    for alo, ahi, plo, phi in boxes:
        starts.setdefault(plo, []).append((alo, ahi))
        ends.setdefault(phi + 1, []).append((alo, ahi))
    points = sorted(set(starts) | set(ends))
    active: Counter[Interval] = Counter()
    out: list[Box] = []
    run_key: tuple[Interval, ...] = ()
    run_start = 0
    for i, p in enumerate(points):
        for iv in ends.get(p, ()):
            active[iv] -= 1
            if not active[iv]:
                del active[iv]
        for iv in starts.get(p, ()):
            active[iv] += 1
        key = tuple(merge_intervals(active)) if active else ()
        if key != run_key:
            # The run of port segments covering run_key ends just before p.
            out.extend((alo, ahi, run_start, p - 1) for alo, ahi in run_key)
            run_key, run_start = key, p
    # The last point is one past the highest port end: nothing is active after it.
    assert not run_key
    return out


def host_bits(lo: int, hi: int) -> int | None:
    """If [lo, hi] is exactly one CIDR block, its number of host bits (32 - prefix for IPv4); else None."""
    size = hi - lo + 1
    if size & (size - 1) or lo % size:
        return None
    return size.bit_length() - 1  # host bits
