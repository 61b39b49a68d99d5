"""Fuzzing the data plane's receive path (the one production runs) over in-memory fakes.

TUNNEL_FUZZ_COUNT sets how many datagrams (default 200000; CI keeps it);
bench/fuzz_dataplane.py runs the same at 10^6 and prints datagrams per second.
"""

from __future__ import annotations

import os

from ..helpers.fuzz_plane import run

COUNT = int(os.environ.get("TUNNEL_FUZZ_COUNT", "200000"))
SEED = int(os.environ.get("TUNNEL_FUZZ_SEED", "1"))


def test_fuzz_dataplane_receive_path():
    result = run(COUNT, SEED)
    reasons = result["reasons"]
    if COUNT >= 20000:
        # It reached past the framing into every kind of verification.
        for reason in ("malformed", "invalid_mac1", "unknown_receiver", "authentication", "replayed",
                       "replayed_timestamp", "cookie_required"):
            assert reasons.get(reason, 0) > 0, (reason, reasons)
        assert result["cookie_replies"] > 0
    # And the session still works.
    a, b = result["a"], result["b"]
    p = a.ping(b, payload=b"still alive")
    assert b.written[-1] == p
