"""The small grammars inside policy strings: names, addresses, `HOST:PORTS`, rates.

Rules kept here:
- each parser takes one string and returns a value or raises ValueError
  with a message that quotes what the admin wrote; the caller adds the
  file and line (model.py);
- IPv6 literals go in brackets (`[fd00::1]:22`), so `HOST:PORTS` always
  splits at its last colon without guessing;
- a CIDR with host bits set is refused (Tailscale does the same): the
  admin most likely meant something else than what the kernel would match.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = ("tcp", "udp", "icmp")
PORT_MAX = 65535
ALL_PORTS: tuple[tuple[int, int], ...] = ((0, PORT_MAX),)

# Client and host names: what a registry would accept as a client name
# (e-mail style names included), and nothing that the HOST:PORTS grammar
# uses (':', '/', ',', '[', ']', '*') or that could be read as an address.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]*$")
GROUP_PREFIX = "group:"
_UNSUPPORTED_PREFIXES = ("tag:", "autogroup:", "user:", "ipset:", "svc:")

# tc's units (tc(8) "RATES"): bit = bits/s, bps = BYTES/s; k/m/g/t are
# powers of 1000, ki/mi/gi/ti powers of 1024. A bare number is refused
# (tc reads it as bytes/s, which nobody writing "5" means).
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")
_RATE_UNITS = {
    "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
    "kibit": 2**10, "mibit": 2**20, "gibit": 2**30, "tibit": 2**40,
    "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9, "tbps": 8 * 10**12,
    "kibps": 8 * 2**10, "mibps": 8 * 2**20, "gibps": 8 * 2**30, "tibps": 8 * 2**40,
}


def is_name(text: str) -> bool:
    return bool(_NAME.match(text)) and not looks_like_address(text)


def looks_like_address(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


def check_name(text: str, what: str) -> str:
    """A host or client name, or ValueError saying why not."""
    for prefix in _UNSUPPORTED_PREFIXES:
        if text.startswith(prefix):
            raise ValueError(f"{what} {text!r}: Tailscale's {prefix[:-1]}s are not supported here "
                             f"(use group:NAME, a client name, a hosts name or an address)")
    if not _NAME.match(text) or all(c.isdigit() or c == "." for c in text):
        raise ValueError(f"{what} {text!r} is not a valid name "
                         f"(letters, digits and . _ @ + -, not starting with . @ + -)")
    return text


def group_name(text: str, what: str) -> str:
    """'group:NAME' -> 'NAME' (ValueError if malformed)."""
    if not text.startswith(GROUP_PREFIX):
        raise ValueError(f"{what} {text!r} must start with 'group:'")
    name = text[len(GROUP_PREFIX):]
    if not _NAME.match(name):
        raise ValueError(f"{what} {text!r}: bad group name (letters, digits and . _ @ + -)")
    return name


def network(text: str, what: str) -> IPNetwork:
    """An address or CIDR as a network; host bits set is an error that names the network meant."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{what} {text!r} is not an IP address or CIDR") from None
        if "has host bits set" in str(exc):
            raise ValueError(f"{what} {text!r} has host bits set (the network is {loose})") from None
        raise ValueError(f"{what} {text!r}: {exc}") from None


def address(text: str, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IP address") from None


def parse_ports(text: str, spec: str) -> tuple[tuple[int, int], ...]:
    """`*`, `22`, `80,443`, `8000-8999` (and mixes) -> sorted, merged (lo, hi) ranges."""
    if text == "*":
        return ALL_PORTS
    if not text:
        raise ValueError(f"dst {spec!r}: no port after ':' (use * for all ports)")
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        if part == "*":
            raise ValueError(f"dst {spec!r}: '*' cannot be combined with other ports")
        lo_s, dash, hi_s = part.partition("-")
        if not lo_s.isdigit() or (dash and not hi_s.isdigit()):
            raise ValueError(f"dst {spec!r}: {part!r} is not a port or a port range (e.g. 22, 8000-8999, *)")
        lo, hi = int(lo_s), int(hi_s) if dash else int(lo_s)
        for p in (lo, hi):
            if p > PORT_MAX:
                raise ValueError(f"dst {spec!r}: port {p} out of range (0-{PORT_MAX})")
        if lo > hi:
            raise ValueError(f"dst {spec!r}: port range {part} runs backwards")
        ranges.append((lo, hi))
    return merge_ranges(ranges)


def merge_ranges(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, overlapping or touching ranges joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def split_host_ports(spec: str) -> tuple[str, str]:
    """'HOST:PORTS' -> (HOST, PORTS); IPv6 literals in brackets; ValueError naming the problem."""
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise ValueError(f"dst {spec!r}: missing ']' after the IPv6 address")
        host, rest = spec[1:end], spec[end + 1:]
        if not rest.startswith(":"):
            raise ValueError(f"dst {spec!r}: expected ':PORTS' after ']' (e.g. [{host}]:22)")
        if ":" not in host:
            raise ValueError(f"dst {spec!r}: brackets are for IPv6 addresses only")
        return host, rest[1:]
    host, colon, ports = spec.rpartition(":")
    if not colon:
        raise ValueError(f"dst {spec!r}: expected HOST:PORTS (e.g. {spec}:22 or {spec}:*)")
    prefixed = host.count(":") == 1 and host[:host.index(":") + 1] in (GROUP_PREFIX, *_UNSUPPORTED_PREFIXES)
    if ":" in host and not prefixed:
        raise ValueError(f"dst {spec!r}: write IPv6 addresses in brackets, e.g. [fd00::1]:22")
    if not host:
        raise ValueError(f"dst {spec!r}: no host before ':'")
    return host, ports


def parse_rate(text: str, what: str) -> int:
    """A tc-style rate ('5mbit', '1.5gbit', '500kbps') in bits per second."""
    m = _RATE.match(text)
    if not m:
        if text.strip().replace(".", "", 1).isdigit():
            raise ValueError(f"{what} {text!r}: give a unit, e.g. '{text.strip()}mbit'")
        raise ValueError(f"{what} {text!r} is not a rate (e.g. 5mbit, 500kbit, 1gbit)")
    number, unit = m.group(1), m.group(2).lower()
    if unit not in _RATE_UNITS:
        raise ValueError(f"{what} {text!r}: unknown unit {m.group(2)!r} "
                         f"(bit, kbit, mbit, gbit; bps, kbps, mbps = bytes per second)")
    bits = round(float(number) * _RATE_UNITS[unit])
    if bits < 8:
        raise ValueError(f"{what} {text!r} is too small (at least 8bit)")
    return bits


def format_rate(bits: int) -> str:
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= size and bits % size == 0:
            return f"{bits // size}{unit}"
    return f"{bits}bit"


@dataclass(frozen=True)
class Service:
    """A protocol and port on the gateway itself (e.g. the login endpoint)."""

    proto: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Service":
        """'tcp/8443' (or 'udp/53')."""
        proto, slash, port = text.partition("/")
        if not slash or proto not in ("tcp", "udp") or not port.isdigit() or not 0 < int(port) <= PORT_MAX:
            raise ValueError(f"local service {text!r}: expected tcp/PORT or udp/PORT")
        return cls(proto, int(port))

    def __str__(self) -> str:
        return f"{self.proto}/{self.port}"
