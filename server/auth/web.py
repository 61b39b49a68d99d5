"""The login endpoint: a JSON API for `tunnel login` and a page for browsers.

    endpoint = LoginEndpoint(service, resolve_client, "10.8.0.1", port=80)
    endpoint.start()          # serves from its own threads; returns at once
    ...
    endpoint.stop()

The daemon binds it on the server's tunnel address: only clients reach it,
through the tunnel, which already authenticated them. The client is the
connection's source address: `resolve_client(address)` gives its ClientInfo,
or None for an address that is not a client's (refused). Routes (and the JSON
contract) are in tunnel/loginapi.py; the page is `/`, posting to /login and
/logout as plain forms.

Rules kept here:
- it never blocks the data plane: stdlib ThreadingHTTPServer in its own
  threads; at most `max_connections` at once (more are closed at once), each
  socket with a `timeout` for every read and `max_request_time` in all (a slow
  client cannot hold a thread), HTTP/1.0 one request per connection, bodies at
  most loginapi.MAX_BODY bytes;
- the backend is waited for inside service.login, with its own timeout;
- a request whose Host is not ours (DNS rebinding) or whose Origin is another
  site (cross-site form posts) is refused; the JSON API takes only
  application/json, which a cross-site form cannot send;
- every answer is Cache-Control: no-store, with a Content-Security-Policy that
  allows nothing but our own style and forms;
- requests are not logged with their bodies; the service logs logins.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from tunnel import loginapi

from . import page
from .backend import ClientInfo
from .service import LoginResult, LoginService

log = logging.getLogger("tunnel.auth.web")

MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 10.0  # seconds for each read from the client
MAX_REQUEST_TIME = 30.0  # seconds for a whole connection (reads, the backend's decision, the answer)
TITLE = "VPN login"

_STATUS = {
    loginapi.BAD_CREDENTIALS: HTTPStatus.UNAUTHORIZED,
    loginapi.CODE_REQUIRED: HTTPStatus.UNAUTHORIZED,
    loginapi.LOCKED: HTTPStatus.TOO_MANY_REQUESTS,
    loginapi.BUSY: HTTPStatus.TOO_MANY_REQUESTS,
    loginapi.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    loginapi.NOT_A_CLIENT: HTTPStatus.FORBIDDEN,
    loginapi.NO_SESSION: HTTPStatus.NOT_FOUND,
    loginapi.BAD_REQUEST: HTTPStatus.BAD_REQUEST,
}


class _Refused(Exception):
    def __init__(self, status: HTTPStatus, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _plain_address(address: str) -> str:
    """'::ffff:10.8.0.2' -> '10.8.0.2'; other addresses as they are."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address, handler, endpoint: LoginEndpoint):
        self.endpoint = endpoint
        self._slots = threading.BoundedSemaphore(endpoint.max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            # Full: close at once rather than queue behind slow clients.
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        # A client trickling bytes within each read's timeout still loses the
        # connection after `max_request_time` in all.
        deadline = threading.Timer(self.endpoint.max_request_time, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._slots.release()


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "tunnel-login"
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        self.timeout = self.server.endpoint.request_timeout
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.client_address[0], format % args)

    # -- plumbing ----------------------------------------------------------

    @property
    def ep(self) -> LoginEndpoint:
        return self.server.endpoint

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", page.CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: dict, extra: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra)

    def _html(self, status: HTTPStatus, text: str, extra: dict | None = None) -> None:
        self._send(status, text.encode("utf-8"), "text/html; charset=utf-8", extra)

    def _check_host(self) -> None:
        host = self.headers.get("Host")
        if host is not None and host.lower() not in self.ep.hosts:
            raise _Refused(HTTPStatus.MISDIRECTED_REQUEST, loginapi.BAD_REQUEST, "wrong Host")

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin != "null" and origin.lower() not in self.ep.origins:
            raise _Refused(HTTPStatus.FORBIDDEN, loginapi.BAD_REQUEST, "cross-site request")

    def _client(self) -> ClientInfo:
        address = _plain_address(self.client_address[0])
        try:
            client = self.ep.resolve_client(address)
        except Exception:
            log.exception("resolve_client(%s) failed", address)
            client = None
        if client is None:
            raise _Refused(HTTPStatus.FORBIDDEN, loginapi.NOT_A_CLIENT,
                           "this page is for the VPN's clients, through the tunnel")
        return client

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, loginapi.BAD_REQUEST, "Content-Length required")
        n = int(length)
        if n > loginapi.MAX_BODY:
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, loginapi.BAD_REQUEST, "request too large")
        data = self.rfile.read(n)
        if len(data) != n:
            raise _Refused(HTTPStatus.BAD_REQUEST, loginapi.BAD_REQUEST, "request body cut short")
        return data

    def _path(self) -> str:
        return urlsplit(self.path).path

    # -- dispatch ----------------------------------------------------------

    def _handle(self, routes: dict) -> None:
        path = self._path()
        api = path.startswith("/api/")
        try:
            self._check_host()
            route = routes.get(path)
            if route is None:
                known = path in _ROUTES["GET"] or path in _ROUTES["POST"]
                raise _Refused(HTTPStatus.METHOD_NOT_ALLOWED if known else HTTPStatus.NOT_FOUND,
                               loginapi.BAD_REQUEST, "method not allowed" if known else "not found")
            route(self)
        except _Refused as r:
            if api:
                self._json(r.status, {"error": r.error, "message": r.message})
            else:
                self._html(r.status, page.login_page(self.ep.title, error=r.message))
        except (socket.timeout, ConnectionError):
            self.close_connection = True
        except Exception:  # our bug: a 500 and a log line, never a traceback on stderr
            log.exception("login endpoint: %s %s failed", self.command, path)
            try:
                if api:
                    self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": loginapi.UNAVAILABLE,
                                                                  "message": "internal error"})
                else:
                    self._html(HTTPStatus.INTERNAL_SERVER_ERROR, page.login_page(self.ep.title,
                                                                                 error="internal error"))
            except OSError:
                pass

    def do_GET(self) -> None:
        self._handle(_ROUTES["GET"])

    def do_HEAD(self) -> None:
        self._handle(_ROUTES["GET"])

    def do_POST(self) -> None:
        self._handle(_ROUTES["POST"])

    # -- the API -----------------------------------------------------------

    def _session_json(self, session) -> dict:
        now = self.ep.service.clock()
        return {"ok": True, "user": session.user, "groups": list(session.groups),
                "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(session.expires)),
                "expires_in": max(0, int(session.expires - now)), "idle_timeout": session.idle_timeout,
                "client": session.client.name}

    def _result_json(self, result: LoginResult) -> None:
        if result.ok:
            self._json(HTTPStatus.OK, self._session_json(result.session))
            return
        body: dict = {"error": result.error, "message": result.message}
        extra = None
        if result.challenge:
            body["challenge"] = {"state": result.challenge, "message": result.message}
        if result.retry_after:
            body["retry_after"] = result.retry_after
            extra = {"Retry-After": str(result.retry_after)}
        self._json(_STATUS.get(result.error, HTTPStatus.BAD_REQUEST), body, extra)

    def api_login(self) -> None:
        self._check_origin()
        if self.headers.get_content_type() != "application/json":
            raise _Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, loginapi.BAD_REQUEST, "send application/json")
        client = self._client()
        try:
            data = json.loads(self._body())
        except ValueError:
            raise _Refused(HTTPStatus.BAD_REQUEST, loginapi.BAD_REQUEST, "the body is not JSON") from None
        fields = {k: data.get(k) for k in ("user", "password", "code", "state")} if isinstance(data, dict) else {}
        if not all(v is None or isinstance(v, str) for v in fields.values()) or not fields.get("user"):
            raise _Refused(HTTPStatus.BAD_REQUEST, loginapi.BAD_REQUEST, "expected {user, password, code?, state?}")
        result = self.ep.service.login(client, fields["user"], fields["password"] or "", fields["code"],
                                       fields["state"])
        self._result_json(result)

    def api_session(self) -> None:
        client = self._client()
        session = self.ep.service.session_of(client)
        if session is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": loginapi.NO_SESSION, "message": "not logged in",
                                              "code": self.ep.service.code_hint})
        else:
            self._json(HTTPStatus.OK, self._session_json(session))

    def api_logout(self) -> None:
        self._check_origin()
        client = self._client()
        if self.ep.service.logout(client):
            self._json(HTTPStatus.OK, {"ok": True})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": loginapi.NO_SESSION, "message": "not logged in"})

    # -- the page ----------------------------------------------------------

    def _session_page(self, session, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._html(status, page.session_page(self.ep.title, user=session.user, groups=session.groups,
                                             expires=session.expires, idle_timeout=session.idle_timeout,
                                             now=self.ep.service.clock(), client=session.client.name))

    def page_index(self) -> None:
        client = self._client()
        session = self.ep.service.session_of(client)
        if session is not None:
            self._session_page(session)
        else:
            self._html(HTTPStatus.OK, page.login_page(self.ep.title,
                                                      code_first=self.ep.service.backend.code_with_password))

    def page_login(self) -> None:
        self._check_origin()
        client = self._client()
        if self.headers.get_content_type() != "application/x-www-form-urlencoded":
            raise _Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, loginapi.BAD_REQUEST, "send the form")
        try:
            form = parse_qs(self._body().decode("utf-8"), keep_blank_values=True, max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            raise _Refused(HTTPStatus.BAD_REQUEST, loginapi.BAD_REQUEST, "the form is malformed") from None

        def field(name: str) -> str:
            return (form.get(name) or [""])[0]

        user = field("user").strip()
        result = self.ep.service.login(client, user, field("password"), field("code") or None,
                                       field("challenge") or None)
        if result.ok:
            self._session_page(result.session)
            return
        status = _STATUS.get(result.error, HTTPStatus.BAD_REQUEST)
        extra = {"Retry-After": str(result.retry_after)} if result.retry_after else None
        if result.challenge:
            self._html(status, page.challenge_page(self.ep.title, user=user, token=result.challenge,
                                                   message=result.message), extra)
        else:
            self._html(status, page.login_page(self.ep.title, error=result.message, user=user,
                                               code_first=self.ep.service.backend.code_with_password), extra)

    def page_logout(self) -> None:
        self._check_origin()
        client = self._client()
        if self.headers.get("Content-Length"):
            self._body()  # drain what the form sent (nothing we need)
        self.ep.service.logout(client)
        self._html(HTTPStatus.OK, page.login_page(self.ep.title, error=None,
                                                  code_first=self.ep.service.backend.code_with_password))


_ROUTES = {
    "GET": {"/": _Handler.page_index, loginapi.PATH_SESSION: _Handler.api_session},
    "POST": {"/login": _Handler.page_login, "/logout": _Handler.page_logout,
             loginapi.PATH_LOGIN: _Handler.api_login, loginapi.PATH_LOGOUT: _Handler.api_logout},
}


class LoginEndpoint:
    def __init__(self, service: LoginService, resolve_client: Callable[[str], ClientInfo | None], address: str,
                 port: int = loginapi.DEFAULT_PORT, *, names: tuple[str, ...] = (),
                 max_connections: int = MAX_CONNECTIONS, request_timeout: float = REQUEST_TIMEOUT,
                 max_request_time: float = MAX_REQUEST_TIME, title: str = TITLE):
        self.service = service
        self.resolve_client = resolve_client
        self.address = address
        self.port = port
        self.names = names  # host names that also reach us (besides the address)
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.max_request_time = max_request_time
        self.title = title
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.hosts: set[str] = set()
        self.origins: set[str] = set()

    def _allow(self, port: int) -> None:
        ip = ipaddress.ip_address(self.address)
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        for name in (literal, *self.names):
            name = name.lower()
            forms = {f"{name}:{port}"} | ({name} if port == 80 else set())
            self.hosts |= forms
            self.origins |= {f"http://{f}" for f in forms}

    def start(self) -> None:
        """Bind and serve in a thread. Raises OSError (with the address in the message) if it cannot bind."""
        ip = ipaddress.ip_address(self.address)
        server_class = type("_Server", (_Server,), {"address_family": socket.AF_INET6 if ip.version == 6
                                                    else socket.AF_INET})
        try:
            self._server = server_class((str(ip), self.port), _Handler, self)
        except OSError as exc:
            raise OSError(exc.errno, f"login endpoint cannot listen on {self.address} port {self.port}: "
                                     f"{exc.strerror}") from None
        self.port = self._server.server_address[1]
        self._allow(self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="login-endpoint", daemon=True)
        self._thread.start()
        log.info("login endpoint on http://%s:%d/", self.address, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> LoginEndpoint:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
