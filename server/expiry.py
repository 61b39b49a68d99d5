"""`--expires` values: a duration from now or a moment, and how `list` shows them.

    8h, 90m, 2d, 1w, 1d12h   a duration from now (s, m, h, d, w)
    2026-12-31               through that whole day: it ends at the next midnight, local time
    2026-12-31T18:00[:SS]    that moment, local time (or with Z / +01:00: that zone)
    never                    no expiry (set-expiry only)

Rules kept here: pure (the caller gives `now` and the zone); every refusal is
an ExpiryError naming the value and the forms accepted; a moment already past
is refused, since a client that expires before it is handed out is a mistake.
"""

from __future__ import annotations

import datetime as dt
import re

_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS = (7 * 86400, 86400, 3600, 60, 1)
FORMS = "a duration (8h, 90m, 2d, 1w, 1d12h), a date (2026-12-31) or a local time (2026-12-31T18:00)"


class ExpiryError(ValueError):
    pass


def parse_expiry(text: str, now: float, tz: dt.tzinfo | None = None) -> float | None:
    """UNIX seconds at which the client expires, or None for `never`."""
    value = (text or "").strip()
    if value.lower() in ("never", "none"):
        return None
    m = _DURATION.fullmatch(value)
    if value and m and any(m.groups()):
        seconds = sum(int(n) * unit for n, unit in zip(m.groups(), _UNITS) if n)
        if seconds <= 0:
            raise ExpiryError(f"expiry {text!r}: a duration must be more than zero")
        return now + seconds
    tz = tz or dt.datetime.now().astimezone().tzinfo
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = dt.date.fromisoformat(value)
            moment = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?(Z|[+-]\d{2}:?\d{2})?", value):
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=tz)
        else:
            raise ExpiryError(f"expiry {text!r}: give {FORMS}")
    except ValueError as exc:
        if isinstance(exc, ExpiryError):
            raise
        raise ExpiryError(f"expiry {text!r}: {exc}") from None
    when = moment.timestamp()
    if when <= now:
        raise ExpiryError(f"expiry {text!r} is in the past")
    return when


def _span(seconds: float) -> str:
    s = round(abs(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            big, rest = divmod(s, size)
            smaller = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            extra = rest // smaller[1]
            return f"{big}{unit}" + (f"{extra}{smaller[0]}" if extra else "")
    return f"{s}s"


def describe_expiry(expires_at: float | None, now: float, tz: dt.tzinfo | None = None) -> str:
    """'never', 'expires 2026-12-31 18:00 (in 3d4h)' or 'expired 2026-12-31 18:00 (5m ago)'."""
    if expires_at is None:
        return "never expires"
    tz = tz or dt.datetime.now().astimezone().tzinfo
    stamp = dt.datetime.fromtimestamp(expires_at, tz).strftime("%Y-%m-%d %H:%M")
    if expires_at > now:
        return f"expires {stamp} (in {_span(expires_at - now)})"
    return f"expired {stamp} ({_span(now - expires_at)} ago)"
