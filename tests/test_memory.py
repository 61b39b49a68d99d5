"""tunnel.memory: the heap the bring-up freed goes back to the system."""

import ctypes.util

from tunnel import memory


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_freed_small_objects_are_given_back():
    assert ctypes.util.find_library("c")  # glibc on Debian: malloc_trim exists
    # Many small buffers from malloc's heap (not mmap'd one by one), then all but a few freed:
    # glibc keeps the pages until trimmed.
    blocks = [bytearray(2000) for _ in range(40_000)]
    for b in blocks:
        b[::512] = b"x" * len(b[::512])
    keep = blocks[-5:]
    del blocks
    before = _rss_kb()
    assert memory.give_back() is True
    after = _rss_kb()
    assert before - after > 20_000, (before, after)  # of ~80 MB allocated
    assert memory.give_back() is True and keep
