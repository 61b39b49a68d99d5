"""`tunnel login [IFACE]`: log in to the server's login endpoint through the tunnel.

    server = server_address(load_config("/etc/wireguard/wg0.conf"))   # or --server ADDR
    session = interactive_login(server, ask=..., say=...)
    print(describe(session))

The endpoint is plain HTTP on the server's tunnel address: the tunnel already
encrypts and authenticates both ends. The contract is tunnel/loginapi.py.

Where the server's tunnel address comes from, first found wins:
  1. `--server ADDR`;
  2. a `LoginServer` key in [Interface] (for configs that carry it);
  3. our own Address with a prefix (wg-quick style `10.8.0.2/24`): its first host,
     where servers conventionally sit (and where `tunnel server init` puts them);
  4. the first peer's AllowedIPs network (not a default route) holding our
     address (a split tunnel over the pool): its first host;
  5. the first DNS server (servers commonly push themselves).

Rules kept here:
- no proxy is ever used (the address is only reachable through the tunnel);
- every failure is a LoginError with a one-line message: unreachable server,
  wrong password, locked, server-side outage;
- the password and code go only into the request body, nowhere else.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
from typing import Callable

from tunnel import loginapi
from tunnel.config import Config

TIMEOUT = 20.0  # the server waits up to 10 s for its backend; leave room


class LoginError(Exception):
    """A login that did not succeed; str() is the one-line message for the user."""


def server_address(config: Config) -> str:
    iface = config.interface
    explicit = iface.extension("LoginServer")
    if explicit:
        return str(ipaddress.ip_address(explicit.strip()))
    own = sorted(iface.addresses, key=lambda a: a.version)  # IPv4 first
    for a in own:
        if a.network.prefixlen < a.max_prefixlen - 1:
            return str(next(a.network.hosts()))
    if config.peers:
        nets = sorted(config.peers[0].allowed_networks(), key=lambda n: (n.version, -n.prefixlen))
        for net in nets:
            if net.prefixlen == 0 or net.num_addresses < 4:
                continue
            if any(a.ip in net for a in own):
                return str(next(net.hosts()))
    if iface.dns:
        return str(sorted(iface.dns, key=lambda d: d.version)[0])
    raise LoginError("cannot tell the server's tunnel address from the configuration: give --server ADDR")


def _host(server: str) -> str:
    try:
        ip = ipaddress.ip_address(server)
    except ValueError:
        return server
    return f"[{ip}]" if ip.version == 6 else str(ip)


def url(server: str, port: int = loginapi.DEFAULT_PORT) -> str:
    return f"http://{_host(server)}" + ("" if port == 80 else f":{port}") + "/"


def _request(server: str, port: int, method: str, path: str, body: dict | None, timeout: float) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read(65536)
        status = response.status
    except TimeoutError:
        raise LoginError(f"the login server at {url(server, port)} did not answer within {timeout:g} s "
                         f"(is the tunnel up?)") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise LoginError(f"cannot reach the login server at {url(server, port)}: {reason} (is the tunnel up?)") \
            from None
    finally:
        conn.close()
    try:
        answer = json.loads(raw)
        if not isinstance(answer, dict):
            raise ValueError
    except ValueError:
        raise LoginError(f"{url(server, port)} is not a login server (HTTP {status}, not our JSON)") from None
    return status, answer


def _failure(answer: dict) -> LoginError:
    error = answer.get("error")
    message = answer.get("message") or error or "login failed"
    if error == loginapi.BAD_CREDENTIALS:
        return LoginError("wrong user name, password or code")
    if error == loginapi.LOCKED:
        wait = answer.get("retry_after")
        return LoginError(f"locked after too many failed logins: try again in {_wait(wait)}" if wait
                          else "locked after too many failed logins")
    if error == loginapi.UNAVAILABLE:
        return LoginError(f"the server cannot check logins now: {message}")
    if error == loginapi.NOT_A_CLIENT:
        return LoginError("the server does not know this machine's tunnel address as one of its clients")
    return LoginError(str(message))


def _wait(seconds) -> str:
    seconds = int(seconds)
    return f"{seconds} s" if seconds < 90 else f"{(seconds + 59) // 60} min"


def current_session(server: str, port: int = loginapi.DEFAULT_PORT, timeout: float = TIMEOUT) -> tuple[dict | None, str]:
    """(the session, or None if not logged in; when to ask for the code)."""
    status, answer = _request(server, port, "GET", loginapi.PATH_SESSION, None, timeout)
    if answer.get("ok"):
        return answer, loginapi.CODE_ON_CHALLENGE
    if answer.get("error") == loginapi.NO_SESSION:
        return None, answer.get("code") or loginapi.CODE_ON_CHALLENGE
    raise _failure(answer)


def post_login(server: str, user: str, password: str, code: str | None = None, state: str | None = None,
               port: int = loginapi.DEFAULT_PORT, timeout: float = TIMEOUT) -> dict:
    """One POST /api/login: the session, or the answer with a challenge; raises LoginError otherwise."""
    body = {"user": user, "password": password}
    if code:
        body["code"] = code
    if state:
        body["state"] = state
    _status, answer = _request(server, port, "POST", loginapi.PATH_LOGIN, body, timeout)
    if answer.get("ok") or answer.get("error") == loginapi.CODE_REQUIRED:
        return answer
    raise _failure(answer)


def logout(server: str, port: int = loginapi.DEFAULT_PORT, timeout: float = TIMEOUT) -> bool:
    _status, answer = _request(server, port, "POST", loginapi.PATH_LOGOUT, {}, timeout)
    if answer.get("ok"):
        return True
    if answer.get("error") == loginapi.NO_SESSION:
        return False
    raise _failure(answer)


Ask = Callable[[str, bool], str]  # (prompt, secret) -> answer


def interactive_login(server: str, ask: Ask, say: Callable[[str], None] = lambda _m: None, *,
                      port: int = loginapi.DEFAULT_PORT, user: str | None = None, timeout: float = TIMEOUT) -> dict:
    """Ask for what is needed, log in, answer one challenge. The session's JSON."""
    _session, code_hint = current_session(server, port, timeout)  # reachable before we ask for a password
    user = user or ask("User name", False).strip()
    if not user:
        raise LoginError("no user name given")
    password = ask("Password", True)
    code = None
    if code_hint == loginapi.CODE_WITH_PASSWORD:
        code = ask("One-time code", True).strip() or None
    answer = post_login(server, user, password, code, port=port, timeout=timeout)
    if answer.get("error") == loginapi.CODE_REQUIRED:
        challenge = answer.get("challenge") or {}
        prompt = (challenge.get("message") or answer.get("message") or "One-time code").rstrip(": ")
        code = ask(prompt, True).strip()
        if not code:
            raise LoginError("no one-time code given")
        answer = post_login(server, user, "", code, challenge.get("state"), port=port, timeout=timeout)
        if answer.get("error") == loginapi.CODE_REQUIRED:
            raise LoginError("the server asked for another code: log in again")
    return answer


def describe(session: dict) -> str:
    groups = ", ".join(session.get("groups") or []) or "none"
    expires_in = int(session.get("expires_in") or 0)
    hours, rest = divmod(expires_in, 3600)
    left = f"{hours} h {rest // 60} min" if hours else (f"{rest // 60} min" if rest >= 60 else f"{rest} s")
    expires = str(session.get("expires", "?")).replace("T", " ").replace("Z", " UTC")
    idle = int(session.get("idle_timeout") or 0)
    idle_text = f"{idle // 60} min" if idle >= 60 else f"{idle} s"
    return (f"logged in as {session.get('user')} (groups: {groups}) until {expires} ({left}); "
            f"ends after {idle_text} idle")
