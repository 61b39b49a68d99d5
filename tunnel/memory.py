"""Giving back to the system the memory a daemon used only while it came up.

Bringing up thousands of peers builds large short-lived things (the parsed
config, netlink batches, the registry's rows, the policy's text). Python
frees them, but glibc's malloc keeps the freed pages in its heaps, so the
idle daemon's RSS would stay at the bring-up's peak: ~3.5 MB with 10,000
clients, a third of a kilobyte per client. `give_back()` collects cycles
and asks malloc to return what is free (malloc_trim); it is called once the
daemon is up. Where malloc_trim does not exist (musl, another libc) it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_trim = None
_looked = False


def give_back() -> bool:
    """Free unreachable cycles and hand free heap pages back; True if malloc_trim ran."""
    global _trim, _looked
    gc.collect()
    if not _looked:
        _looked = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _trim = libc.malloc_trim
            _trim.argtypes = [ctypes.c_size_t]
            _trim.restype = ctypes.c_int
        except (OSError, AttributeError):
            _trim = None
    if _trim is None:
        return False
    _trim(0)
    return True
