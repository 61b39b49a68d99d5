"""The RADIUS backend: PAP Access-Request, Access-Challenge for the one-time
code, groups and limits from the reply, and accounting (RFC 2865, 2866, 2869).

pyrad is the client: on PyPI (2.6, maintained, with the BlastRADIUS
Message-Authenticator countermeasure) and in Debian (python3-pyrad); it does
packet encoding, PAP password hiding, authenticator checks and retries. We
give it a small dictionary of our own (radius_dictionary.py).

    Access-Request   User-Name, User-Password (PAP), NAS-Identifier, NAS-IP-Address,
                     NAS-Port-Type = Virtual, Service-Type = Framed-User,
                     Calling-Station-Id (the client's public key, or its name),
                     Framed-IP-Address / Framed-IPv6-Address (its tunnel address)
    one-time code    otp_mode "append": the code follows the password in User-Password;
                     otp_mode "challenge": password first; on Access-Challenge the code
                     is sent with the State (at once if the user already gave it)
    Access-Accept    groups from `group_attribute` (Class or Filter-Id; one group per
                     value), Session-Timeout, Idle-Timeout, Acct-Interim-Interval;
                     Class values are echoed in accounting (RFC 2865 section 5.25)
    accounting       Start / Interim-Update / Stop with Acct-Session-Id, octets and
                     gigawords, Acct-Session-Time, Acct-Terminate-Cause

Rules kept here:
- a call never outlasts timeout x tries (defaults 2 s x 2): a server that does
  not answer is Unavailable (authentication) or RadiusUnavailable (accounting),
  with a one-line reason; the daemon calls this in a worker thread;
- one pyrad client (one socket) per request, so concurrent logins share nothing;
- the shared secret is read from a 0600 file (tunnel/secrets.py); neither it,
  nor a password, nor a code is ever logged.
"""

from __future__ import annotations

import io
import ipaddress
import logging
from dataclasses import dataclass, field

from tunnel.secrets import InsecureFileError, read_private_file

from .accounts import GROUP_NAME
from .backend import (TERMINATE_CAUSES, Accepted, AccountingRecord, AuthRequest, AuthResult, Challenged,
                      Rejected, Unavailable)
from .radius_dictionary import (ACCT_AUTHENTIC_RADIUS, ACCT_STATUS, NAS_PORT_TYPE_VIRTUAL, SERVICE_TYPE_FRAMED,
                                TEXT)

log = logging.getLogger("tunnel.auth.radius")

DEFAULT_AUTH_PORT = 1812
MAX_PASSWORD = 128  # RFC 2865 section 5.2
GROUP_ATTRIBUTES = ("Class", "Filter-Id")
OTP_MODES = ("challenge", "append")


class RadiusConfigError(ValueError):
    """A bad RADIUS setting or secret file; str() is the message for the user."""


class RadiusUnavailable(TimeoutError):
    """The RADIUS server did not answer an accounting request."""


def _pyrad():
    try:
        from pyrad import client, dictionary, packet
    except ImportError:
        raise RadiusConfigError("RADIUS needs the pyrad package: pip install 'tunnel[server]' "
                                "(or apt-get install python3-pyrad)") from None
    return client, dictionary, packet


def parse_server(text: str) -> tuple[str, int]:
    """HOST, HOST:PORT, [V6]:PORT or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    host, port = text, DEFAULT_AUTH_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RadiusConfigError(f"RADIUS server {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise RadiusConfigError(f"RADIUS server {text!r}: expected :PORT after ']'")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        port = int(port)
    except ValueError:
        raise RadiusConfigError(f"RADIUS server {text!r}: the port is not a number") from None
    if not host or not 0 < port < 65535:
        raise RadiusConfigError(f"RADIUS server {text!r}: expected HOST[:PORT] with a port from 1 to 65534")
    return host, port


def read_secret(path: str) -> bytes:
    """The shared secret from a private file (trailing newline dropped)."""
    try:
        secret = read_private_file(path).rstrip(b"\r\n")
    except InsecureFileError as exc:
        raise RadiusConfigError(f"RADIUS secret file: {exc}") from None
    except OSError as exc:
        raise RadiusConfigError(f"RADIUS secret file {path}: {exc.strerror or exc}") from None
    if not secret:
        raise RadiusConfigError(f"RADIUS secret file {path} is empty")
    return secret


@dataclass(frozen=True)
class RadiusConfig:
    host: str
    secret: bytes = field(repr=False)
    auth_port: int = DEFAULT_AUTH_PORT
    acct_port: int | None = None  # None: auth_port + 1
    nas_identifier: str = "tunnel"
    nas_ip_address: str | None = None
    group_attribute: str = "Class"
    otp_mode: str = "challenge"
    calling_station: str = "key"  # "key": the client's public key; "name": its name
    timeout: float = 2.0  # seconds to wait after each send
    tries: int = 2  # sends in all
    # Drop Access-Accept/Reject/Challenge without a Message-Authenticator (BlastRADIUS,
    # CVE-2024-3596). Off by default: FreeRADIUS before 3.2.5 (Debian 12 has 3.2.1) does
    # not send one, and its replies would then look like no answer at all. Our requests
    # always carry one, so the server can require it (clients.conf).
    require_message_authenticator: bool = False

    def __post_init__(self) -> None:
        if self.group_attribute not in GROUP_ATTRIBUTES:
            raise RadiusConfigError(f"group attribute must be one of {', '.join(GROUP_ATTRIBUTES)}")
        if self.otp_mode not in OTP_MODES:
            raise RadiusConfigError(f"one-time code mode must be one of {', '.join(OTP_MODES)}")
        if self.calling_station not in ("key", "name"):
            raise RadiusConfigError("Calling-Station-Id must be 'key' or 'name'")
        if not 0 < self.timeout <= 30 or not 1 <= self.tries <= 10:
            raise RadiusConfigError("RADIUS timeout must be in (0, 30] s and tries from 1 to 10")
        if self.nas_ip_address is not None:
            try:
                ipaddress.ip_address(self.nas_ip_address)
            except ValueError:
                raise RadiusConfigError(f"NAS-IP-Address {self.nas_ip_address!r} is not an IP address") from None

    @classmethod
    def from_options(cls, server: str, secret_file: str, **options) -> RadiusConfig:
        host, port = parse_server(server)
        return cls(host=host, auth_port=port, secret=read_secret(secret_file), **options)

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.auth_port}"


class RadiusBackend:
    name = "radius"

    def __init__(self, config: RadiusConfig):
        _client, dictionary, _packet = _pyrad()
        self.config = config
        self.code_with_password = config.otp_mode == "append"
        self._dict = dictionary.Dictionary(io.StringIO(TEXT))

    # -- plumbing ----------------------------------------------------------

    def _client(self):
        client, _dictionary, _packet = _pyrad()
        c = self.config
        return client.Client(server=c.host, authport=c.auth_port, acctport=c.acct_port or c.auth_port + 1,
                             secret=c.secret, dict=self._dict, retries=c.tries, timeout=c.timeout,
                             enforce_ma=c.require_message_authenticator)

    def _identity(self, pkt, request_client) -> None:
        c = self.config
        pkt["NAS-Identifier"] = c.nas_identifier
        if c.nas_ip_address:
            if ipaddress.ip_address(c.nas_ip_address).version == 4:
                pkt["NAS-IP-Address"] = c.nas_ip_address
            else:
                pkt["NAS-IPv6-Address"] = c.nas_ip_address
        pkt["NAS-Port-Type"] = NAS_PORT_TYPE_VIRTUAL
        pkt["Service-Type"] = SERVICE_TYPE_FRAMED
        pkt["Calling-Station-Id"] = request_client.public_key if c.calling_station == "key" else request_client.name
        try:
            address = ipaddress.ip_address(request_client.address)
        except ValueError:
            return
        pkt["Framed-IP-Address" if address.version == 4 else "Framed-IPv6-Address"] = str(address)

    def _send(self, cl, pkt):
        """The reply, or raise _NoAnswer with the reason."""
        client, _dictionary, _packet = _pyrad()
        c = self.config
        try:
            return cl.SendPacket(pkt)
        except client.Timeout:
            raise _NoAnswer(f"RADIUS server {c.where} did not answer ({c.tries} tries in "
                            f"{c.tries * c.timeout:g} s)") from None
        except OSError as exc:
            raise _NoAnswer(f"RADIUS server {c.where}: {exc.strerror or exc}") from None
        finally:
            cl._CloseSocket()

    # -- authentication ----------------------------------------------------

    def _access_request(self, cl, request: AuthRequest, password: str, state: bytes | None):
        pkt = cl.CreateAuthPacket(User_Name=request.user)
        pkt["User-Password"] = pkt.PwCrypt(password)
        if state:
            pkt["State"] = state
        self._identity(pkt, request.client)
        return pkt

    def authenticate(self, request: AuthRequest, now: float) -> AuthResult:
        c = self.config
        if request.state:
            password, code_pending = request.code or "", None
        elif c.otp_mode == "append" and request.code:
            password, code_pending = request.password + request.code, None
        else:
            password, code_pending = request.password, request.code
        if len(password.encode("utf-8")) > MAX_PASSWORD:
            return Rejected("password longer than RADIUS allows")
        try:
            cl = self._client()
            reply = self._send(cl, self._access_request(cl, request, password, request.state))
            _client, _dictionary, packet = _pyrad()
            if reply.code == packet.AccessChallenge and code_pending:
                # The user gave the code up front: answer the challenge now.
                state = _first(reply, "State") or b""
                reply = self._send(cl, self._access_request(cl, request, code_pending, state))
        except _NoAnswer as exc:
            return Unavailable(str(exc))
        return self._result(request, reply)

    def _result(self, request: AuthRequest, reply) -> AuthResult:
        _client, _dictionary, packet = _pyrad()
        if reply.code == packet.AccessAccept:
            return Accepted(
                user=request.user,
                groups=self._groups(reply),
                session_timeout=_first(reply, "Session-Timeout") or None,
                idle_timeout=_first(reply, "Idle-Timeout") or None,
                interim_interval=_first(reply, "Acct-Interim-Interval") or None,
                accounting_class=tuple(_all(reply, "Class")),
            )
        if reply.code == packet.AccessChallenge:
            message = _first(reply, "Reply-Message")
            return Challenged(message if isinstance(message, str) and message else "One-time code",
                              _first(reply, "State") or b"")
        if reply.code == packet.AccessReject:
            return Rejected("wrong code" if request.state else "rejected by RADIUS")
        return Rejected(f"unexpected RADIUS reply code {reply.code}")

    def _groups(self, reply) -> tuple[str, ...]:
        groups: list[str] = []
        for value in _all(reply, self.config.group_attribute):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            text = text.strip()
            if GROUP_NAME.fullmatch(text):
                if text not in groups:
                    groups.append(text)
            else:
                log.debug("ignoring %s value that is not a group name", self.config.group_attribute)
        return tuple(groups)

    # -- accounting --------------------------------------------------------

    def account(self, record: AccountingRecord) -> None:
        _client, _dictionary, packet = _pyrad()
        cl = self._client()
        pkt = cl.CreateAcctPacket(User_Name=record.user)
        pkt["Acct-Status-Type"] = ACCT_STATUS[record.kind]
        pkt["Acct-Session-Id"] = record.session_id
        pkt["Acct-Authentic"] = ACCT_AUTHENTIC_RADIUS
        self._identity(pkt, record.client)
        if record.event_time:
            pkt["Event-Timestamp"] = int(record.event_time)
        if record.accounting_class:
            pkt["Class"] = list(record.accounting_class)
        if record.kind != "start":
            pkt["Acct-Session-Time"] = record.session_time
            pkt["Acct-Input-Octets"] = record.input_octets & 0xFFFFFFFF
            pkt["Acct-Output-Octets"] = record.output_octets & 0xFFFFFFFF
            pkt["Acct-Input-Gigawords"] = record.input_octets >> 32
            pkt["Acct-Output-Gigawords"] = record.output_octets >> 32
        if record.kind == "stop" and record.terminate_cause:
            pkt["Acct-Terminate-Cause"] = TERMINATE_CAUSES[record.terminate_cause]
        try:
            reply = self._send(cl, pkt)
        except _NoAnswer as exc:
            raise RadiusUnavailable(str(exc)) from None
        if reply.code != packet.AccountingResponse:
            raise RadiusUnavailable(f"RADIUS server {self.config.where} answered accounting with code {reply.code}")


class _NoAnswer(Exception):
    pass


def _all(reply, name: str) -> list:
    return list(reply[name]) if name in reply else []


def _first(reply, name: str):
    values = _all(reply, name)
    return values[0] if values else None
