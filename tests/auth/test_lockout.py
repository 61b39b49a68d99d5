"""Lockout on a fake clock: five failures in five minutes lock a user or a client for five minutes."""

import logging

from server.auth import passwords
from server.auth.accounts import Account, MemoryAccountStore
from server.auth.backend import ClientInfo
from server.auth.local import LocalBackend
from server.auth.lockout import CLIENT, USER, Lockout
from server.auth.service import LoginService
from tunnel import loginapi

from .clock import FakeClock


def test_five_failures_lock_user_and_client_for_five_minutes():
    clock = FakeClock()
    lockout = Lockout()
    for _ in range(4):
        assert lockout.failure("alice", "laptop", clock()) == []
        clock.advance(10)
    assert lockout.locked("alice", "laptop", clock()) is None
    started = lockout.failure("alice", "laptop", clock())
    assert {(lock.kind, lock.key) for lock in started} == {(USER, "alice"), (CLIENT, "laptop")}
    assert lockout.locked("alice", "phone", clock()).kind == USER  # the user, from any client
    assert lockout.locked("bob", "laptop", clock()).kind == CLIENT  # the client, for any user
    clock.advance(299)
    assert lockout.locked("alice", "phone", clock()) is not None
    clock.advance(1)
    assert lockout.locked("alice", "laptop", clock()) is None
    # After the lock, five fresh tries.
    for _ in range(4):
        assert lockout.failure("alice", "laptop", clock()) == []


def test_failures_older_than_the_window_do_not_count():
    clock = FakeClock()
    lockout = Lockout()
    for _ in range(4):
        lockout.failure("alice", "laptop", clock())
    clock.advance(301)
    assert lockout.failure("alice", "laptop", clock()) == []
    assert lockout.locked("alice", "laptop", clock()) is None


def test_success_clears_the_count():
    clock = FakeClock()
    lockout = Lockout()
    for _ in range(4):
        lockout.failure("alice", "laptop", clock())
    lockout.success("alice", "laptop")
    assert lockout.failure("alice", "laptop", clock()) == []


class CountingBackend(LocalBackend):
    """The real local backend, counting how often it is asked."""

    calls = 0

    def authenticate(self, request, now):
        self.calls += 1
        return super().authenticate(request, now)


def test_service_refuses_locked_logins_without_asking_the_backend_and_logs_no_secret(caplog):
    clock = FakeClock()
    store = MemoryAccountStore()
    store.add(Account("alice", passwords.hash_password("wonderland!", log2_n=12), ("staff",)))  # quick scrypt
    backend = CountingBackend(store)
    service = LoginService(backend, clock=clock, send_accounting=False)
    laptop = ClientInfo("laptop", "S0VZ", "10.8.0.2")
    caplog.set_level(logging.INFO, logger="tunnel.auth")
    try:
        for i in range(5):
            result = service.login(laptop, "alice", f"guess-{i}-secret")
            assert result.error == loginapi.BAD_CREDENTIALS
        assert backend.calls == 5
        locked = service.login(laptop, "alice", "wonderland!")
        assert (locked.ok, locked.error, locked.retry_after) == (False, loginapi.LOCKED, 300)
        assert backend.calls == 5
        clock.advance(300)
        assert service.login(laptop, "alice", "wonderland!").ok
    finally:
        service.close()
    text = caplog.text
    assert "guess-0-secret" not in text and "wonderland!" not in text
    assert "login failed: user 'alice' client laptop address 10.8.0.2: wrong password" in text
    assert "locked: user 'alice' for 300 s after 5 failed logins" in text
    assert "locked: client 'laptop'" in text
    assert "login refused: user 'alice' client laptop address 10.8.0.2: locked" in text
    assert "login: user 'alice' client laptop address 10.8.0.2 groups staff" in text
