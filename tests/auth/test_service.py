"""The login service around a backend that does not answer: its own timeout, one login per user at a time."""

from __future__ import annotations

import socket
import threading

from server.auth.backend import ClientInfo
from server.auth.radius import RadiusBackend, RadiusConfig
from server.auth.service import LoginService
from tunnel import loginapi

from .clock import FakeClock

LAPTOP = ClientInfo("laptop", "bGFwdG9wLWtleQ==", "10.8.0.2")
PHONE = ClientInfo("phone", "cGhvbmUta2V5", "10.8.0.3")


def test_a_silent_backend_is_cut_by_the_service_timeout_and_logins_do_not_pile_up():
    # A UDP socket that receives the Access-Request and never answers.
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    black_hole.bind(("127.0.0.1", 0))
    black_hole.settimeout(10)
    backend = RadiusBackend(RadiusConfig(host="127.0.0.1", auth_port=black_hole.getsockname()[1], secret=b"x",
                                         timeout=5, tries=2))
    service = LoginService(backend, clock=FakeClock(), auth_timeout=1.0, send_accounting=False)
    results = {}
    try:
        first = threading.Thread(target=lambda: results.update(first=service.login(LAPTOP, "alice", "pw-pw-pw")))
        first.start()
        black_hole.recvfrom(4096)  # alice's request is with the "server" now
        busy_user = service.login(PHONE, "alice", "pw-pw-pw")
        busy_client = service.login(LAPTOP, "bob", "pw-pw-pw")
        assert (busy_user.error, busy_client.error) == (loginapi.BUSY, loginapi.BUSY)
        first.join(30)
        assert not first.is_alive()
        assert (results["first"].ok, results["first"].error) == (False, loginapi.UNAVAILABLE)
        # Once it is decided, the user may try again (and it is not counted as a failure).
        assert service.lockout.store.count_failures("user", "alice", 0) == 0
    finally:
        service.close()
        black_hole.close()
