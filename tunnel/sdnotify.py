"""systemd's readiness protocol (sd_notify) without libsystemd.

systemd passes NOTIFY_SOCKET, an AF_UNIX datagram socket (a path, or an
abstract name written with a leading '@'); a unit of Type=notify is
"started" when "READY=1" arrives there.

Rules kept here:
- no NOTIFY_SOCKET (not run by systemd): nothing happens, False returned;
- a failure to notify is logged, never raised: the daemon keeps running.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("tunnel")


def notify(state: str) -> bool:
    """Send STATE (e.g. "READY=1\\nSTATUS=up") to systemd; True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)
        return False
    return True
