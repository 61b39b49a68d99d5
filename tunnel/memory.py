"""Giving back to the system the memory a daemon used only while it came up.

Bringing up thousands of peers builds large short-lived things (the parsed
config, netlink batches, the registry's rows, the policy's text). Python
frees them, but glibc's malloc keeps the freed pages in its heaps, so the
idle daemon's RSS would stay at the bring-up's peak: ~3.5 MB with 10,000
clients, a third of a kilobyte per client. `give_back()` asks malloc to
return what is free (malloc_trim: ~7 ms for a 100 MB heap, without the GIL,
so the data plane's thread runs meanwhile; no gc.collect, which would hold
the GIL for tens of milliseconds over a server's objects). It is called once
the daemon is up and after each full reconcile pass. Where malloc_trim does
not exist (musl, another libc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_trim = None
_looked = False


def give_back() -> bool:
    """Hand free heap pages back to the system; True if malloc_trim ran."""
    global _trim, _looked
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
