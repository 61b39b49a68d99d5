"""The login settings, in the registry's shared settings (every gateway reads the same).

    tunnel server auth local  [--lifetime 12h] [--idle 30m] [--port 80]
    tunnel server auth radius --server HOST[:PORT] --secret-file FILE [--group-attribute Class|Filter-Id]
                              [--otp challenge|append] [--lifetime ...] [--idle ...] [--port ...]
    tunnel server auth off

Rules kept here:
- the RADIUS shared secret is read from its private file once, by the command, and kept in the
  registry with the server's key (the registry is the secret store): every gateway of a shared
  registry then talks to RADIUS with it, and the daemon needs no file of its own;
- a setting that does not parse is a one-line AuthSettingsError, never a half-read setting.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from server.auth.radius import GROUP_ATTRIBUTES, OTP_MODES, RadiusConfig, RadiusConfigError, parse_server
from server.auth.sessions import DEFAULT_IDLE, DEFAULT_LIFETIME

KEY = "auth"  # ServerSettings.extra[KEY]
DEFAULT_PORT = 80
BACKENDS = ("local", "radius")

_DURATION = re.compile(r"(\d+)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class AuthSettingsError(ValueError):
    """A login setting we refuse; str() is the message for the user."""


def parse_duration(text: str, what: str) -> int:
    """'30m', '12h', '90' (seconds), '2d' -> seconds."""
    m = _DURATION.match(str(text).strip().lower())
    if not m or int(m.group(1)) <= 0:
        raise AuthSettingsError(f"{what} {text!r}: expected a positive duration like 90s, 30m, 12h or 2d")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class AuthSettings:
    backend: str  # "local" or "radius"
    lifetime: int = DEFAULT_LIFETIME  # seconds a session lasts at most (RADIUS Session-Timeout wins)
    idle: int = DEFAULT_IDLE  # seconds without traffic that end it (RADIUS Idle-Timeout wins)
    port: int = DEFAULT_PORT  # the login endpoint's TCP port on the server's tunnel address
    radius_server: str | None = None
    radius_secret: bytes | None = field(default=None, repr=False)
    group_attribute: str = "Class"
    otp: str = "challenge"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise AuthSettingsError(f"login backend must be one of {', '.join(BACKENDS)}")
        if not 0 < self.port < 65536:
            raise AuthSettingsError("the login port must be from 1 to 65535")
        if self.backend == "radius":
            if not self.radius_server or not self.radius_secret:
                raise AuthSettingsError("RADIUS needs a server and a shared secret")
            try:
                parse_server(self.radius_server)
            except RadiusConfigError as exc:
                raise AuthSettingsError(str(exc)) from None
            if self.group_attribute not in GROUP_ATTRIBUTES:
                raise AuthSettingsError(f"group attribute must be one of {', '.join(GROUP_ATTRIBUTES)}")
            if self.otp not in OTP_MODES:
                raise AuthSettingsError(f"one-time code mode must be one of {', '.join(OTP_MODES)}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "lifetime": self.lifetime, "idle": self.idle,
                               "port": self.port}
        if self.backend == "radius":
            out.update(radius_server=self.radius_server, group_attribute=self.group_attribute, otp=self.otp,
                       radius_secret=base64.b64encode(self.radius_secret or b"").decode())
        return out

    @classmethod
    def from_json(cls, data: Any) -> "AuthSettings":
        if not isinstance(data, dict):
            raise AuthSettingsError("the registry's login settings are not an object")
        try:
            secret = data.get("radius_secret")
            return cls(backend=data["backend"], lifetime=int(data.get("lifetime", DEFAULT_LIFETIME)),
                       idle=int(data.get("idle", DEFAULT_IDLE)), port=int(data.get("port", DEFAULT_PORT)),
                       radius_server=data.get("radius_server"),
                       radius_secret=base64.b64decode(secret) if secret else None,
                       group_attribute=data.get("group_attribute", "Class"), otp=data.get("otp", "challenge"))
        except (KeyError, TypeError, ValueError) as exc:
            raise AuthSettingsError(f"the registry's login settings are not readable: {exc}") from None

    def radius_config(self) -> RadiusConfig:
        host, port = parse_server(self.radius_server or "")
        try:
            return RadiusConfig(host=host, auth_port=port, secret=self.radius_secret or b"",
                                group_attribute=self.group_attribute, otp_mode=self.otp)
        except RadiusConfigError as exc:
            raise AuthSettingsError(str(exc)) from None

    def describe(self) -> str:
        what = "local accounts" if self.backend == "local" else f"RADIUS at {self.radius_server}"
        return (f"login: {what}; sessions last {_human(self.lifetime)}, end after {_human(self.idle)} idle; "
                f"login page on port {self.port}")


def from_settings(extra: dict[str, Any]) -> AuthSettings | None:
    """The login settings of a server (None: no login required)."""
    data = extra.get(KEY)
    return None if not data else AuthSettings.from_json(data)


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
