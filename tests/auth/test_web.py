"""The login endpoint over loopback with a plain HTTP client: API, page, limits, refusals."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlencode

import pytest

from server.auth import totp
from server.auth.page import CSP
from tunnel import loginapi

from .endpoint import running_endpoint


@pytest.fixture
def env():
    with running_endpoint() as e:
        yield e


def test_login_session_logout(env):
    assert env.api("GET", loginapi.PATH_SESSION) == (404, {"error": "no_session", "message": "not logged in",
                                                           "code": loginapi.CODE_ON_CHALLENGE})
    status, body = env.api("POST", loginapi.PATH_LOGIN, {"user": "alice", "password": "wonderland!"})
    assert status == 200
    assert body == {"ok": True, "user": "alice", "groups": ["staff", "ops"], "expires": "2027-01-15T20:00:00Z",
                    "expires_in": 43200, "idle_timeout": 1800, "client": "laptop"}
    env.clock.advance(600)
    status, body = env.api("GET", loginapi.PATH_SESSION)
    assert status == 200 and body["expires_in"] == 42600 and body["user"] == "alice"
    assert env.api("POST", loginapi.PATH_LOGOUT, {}) == (200, {"ok": True})
    assert env.api("POST", loginapi.PATH_LOGOUT, {})[0] == 404
    assert env.api("GET", loginapi.PATH_SESSION)[0] == 404


def test_bad_password_then_lockout_with_retry_after(env):
    for _ in range(5):
        status, body = env.api("POST", loginapi.PATH_LOGIN, {"user": "alice", "password": "guess-guess"})
        assert (status, body["error"]) == (401, loginapi.BAD_CREDENTIALS)
    status, headers, text = env.request("POST", loginapi.PATH_LOGIN, {"user": "alice", "password": "wonderland!"})
    assert status == 429 and headers["retry-after"] == "300"
    assert '"error": "locked"' in text and '"retry_after": 300' in text
    env.clock.advance(300)
    assert env.api("POST", loginapi.PATH_LOGIN, {"user": "alice", "password": "wonderland!"})[0] == 200


def test_totp_challenge_over_the_api(env):
    status, body = env.api("POST", loginapi.PATH_LOGIN, {"user": "bob", "password": "builder-bob"})
    assert (status, body["error"]) == (401, loginapi.CODE_REQUIRED)
    state = body["challenge"]["state"]
    code = totp.code_at(env.bob_secret, env.clock())
    status, body = env.api("POST", loginapi.PATH_LOGIN, {"user": "bob", "code": code, "state": state})
    assert status == 200 and body["groups"] == ["admins"]
    # The challenge was used; the code was used.
    status, body = env.api("POST", loginapi.PATH_LOGIN, {"user": "bob", "code": code, "state": state})
    assert (status, body["error"]) == (401, loginapi.BAD_CREDENTIALS)
    status, body = env.api("POST", loginapi.PATH_LOGIN, {"user": "bob", "password": "builder-bob", "code": code})
    assert (status, body["error"]) == (401, loginapi.BAD_CREDENTIALS)


def test_the_page_works_as_plain_forms(env):
    status, headers, text = env.request("GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store" and headers["content-security-policy"] == CSP
    assert '<label for="user">' in text and '<label for="password">' in text and "<script" not in text
    form = "application/x-www-form-urlencoded"
    status, _h, text = env.request("POST", "/login", urlencode({"user": "alice", "password": "nope-nope"}),
                                   content_type=form)
    assert status == 401 and 'role="alert"' in text and "wrong user name, password or code" in text
    assert 'value="alice"' in text  # the name is kept, the password is not
    status, _h, text = env.request("POST", "/login", urlencode({"user": "alice", "password": "wonderland!"}),
                                   content_type=form)
    assert status == 200 and 'id="expires"' in text and "2027-01-15 20:00 UTC" in text and "staff, ops" in text
    status, _h, text = env.request("GET", "/")
    assert "You are logged in as <strong>alice</strong>" in text
    status, _h, text = env.request("POST", "/logout", "", content_type=form)
    assert status == 200 and 'action="/login"' in text
    # bob's code through the challenge page
    status, _h, text = env.request("POST", "/login", urlencode({"user": "bob", "password": "builder-bob"}),
                                   content_type=form)
    assert status == 401 and 'name="challenge"' in text and 'autocomplete="one-time-code"' in text
    token = text.split('name="challenge" value="')[1].split('"')[0]
    code = totp.code_at(env.bob_secret, env.clock())
    status, _h, text = env.request("POST", "/login", urlencode({"user": "bob", "challenge": token, "code": code}),
                                   content_type=form)
    assert status == 200 and "You are logged in as <strong>bob</strong>" in text


def test_user_input_is_escaped(env):
    status, _h, text = env.request("POST", "/login", urlencode({"user": "<b>x</b>", "password": "12345678"}),
                                   content_type="application/x-www-form-urlencoded")
    assert status == 401 and "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text


@pytest.mark.parametrize("method,path,body,headers,content_type,status", [
    ("POST", loginapi.PATH_LOGIN, {"user": "alice", "password": "wonderland!"}, {"Host": "evil.example"},
     "application/json", 421),  # DNS rebinding
    ("POST", loginapi.PATH_LOGIN, {"user": "alice", "password": "wonderland!"}, {"Origin": "http://evil.example"},
     "application/json", 403),
    ("POST", "/login", "user=alice&password=wonderland!", {"Origin": "http://evil.example"},
     "application/x-www-form-urlencoded", 403),  # cross-site form post
    ("POST", loginapi.PATH_LOGIN, "user=alice&password=wonderland!", {}, "application/x-www-form-urlencoded", 415),
    ("POST", loginapi.PATH_LOGIN, "{not json", {}, "application/json", 400),
    ("POST", loginapi.PATH_LOGIN, {"user": ["alice"], "password": 1}, {}, "application/json", 400),
    ("POST", loginapi.PATH_LOGIN, {"user": "alice", "password": "x" * 5000}, {}, "application/json", 413),
    ("GET", "/nowhere", None, {}, "application/json", 404),
    ("GET", loginapi.PATH_LOGIN, None, {}, "application/json", 405),
])
def test_refusals(env, method, path, body, headers, content_type, status):
    got, _h, _text = env.request(method, path, body, headers=headers, content_type=content_type)
    assert got == status
    assert env.service.session_of(env.clients["127.0.0.1"]) is None


def test_same_origin_and_host_with_port_are_accepted(env):
    origin = f"http://127.0.0.1:{env.port}"
    status, _h, _t = env.request("POST", loginapi.PATH_LOGIN, {"user": "alice", "password": "wonderland!"},
                                 headers={"Origin": origin, "Host": f"127.0.0.1:{env.port}"})
    assert status == 200


def test_an_address_that_is_no_client_is_refused(env):
    env.clients.clear()
    status, body = env.api("POST", loginapi.PATH_LOGIN, {"user": "alice", "password": "wonderland!"})
    assert (status, body["error"]) == (403, loginapi.NOT_A_CLIENT)
    status, _h, text = env.request("GET", "/")
    assert status == 403 and "for the VPN" in text


def test_connections_are_bounded_and_slow_ones_cut():
    with running_endpoint(max_connections=2, request_timeout=3.0, max_request_time=4.0) as env:
        silent = socket.create_connection(("127.0.0.1", env.port))
        trickle = socket.create_connection(("127.0.0.1", env.port))
        try:
            trickle.sendall(b"GET /api/session HTTP/1.0\r\n")
            # Both slots are held: a third connection is closed at once, unanswered.
            third = socket.create_connection(("127.0.0.1", env.port), timeout=10)
            third.sendall(b"GET /api/session HTTP/1.0\r\n\r\n")
            assert third.recv(100) == b""
            third.close()
            # The one trickling a header line every second (within each read's timeout) is
            # cut at the connection's deadline; the silent one after its read timeout.
            cut = False
            for _ in range(15):
                time.sleep(1)
                try:
                    trickle.sendall(b"X-Slow: 1\r\n")
                    if trickle.recv(100, socket.MSG_DONTWAIT) == b"":
                        cut = True
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    cut = True
                    break
            assert cut
            silent.settimeout(20)
            assert silent.recv(100) == b""
        finally:
            silent.close()
            trickle.close()
        assert env.api("GET", loginapi.PATH_SESSION)[0] == 404
