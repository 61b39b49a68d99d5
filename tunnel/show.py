"""`tunnel show [IFACE] [--json]`: what a running interface is doing, from its control socket.

Asks `get=tunnel` (our extension of the UAPI: names and counters as JSON);
an interface run by another userspace daemon (wireguard-go) answers only
`get=1`, which is shown without names and counters.

Rules kept here: no key but public keys is ever printed; a socket that does
not answer is reported, not raised.
"""

from __future__ import annotations

import json
import os

from . import control
from .protocol.crypto import encode_key


def ago(timestamp: int, now: float) -> str:
    if not timestamp:
        return "never"
    seconds = max(0, int(now - timestamp))
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or (unit == "second" and not parts):
            n, seconds = divmod(seconds, size)
            parts.append(f"{n} {unit}{'' if n == 1 else 's'}")
    return ", ".join(parts[:2]) + " ago"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def interfaces(socket_dir: str = control.SOCKET_DIR) -> list[str]:
    try:
        names = os.listdir(socket_dir)
    except FileNotFoundError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".sock"))


def status(ifname: str, socket_dir: str = control.SOCKET_DIR) -> dict:
    """The interface's state as `get=tunnel` reports it (or built from `get=1`)."""
    answer = control.request(ifname, "get=tunnel", socket_dir)
    for line in answer.split("\n"):
        if line.startswith("json="):
            return json.loads(line[5:])
    iface, peers = control.parse_get(control.request(ifname, "get=1", socket_dir))
    return {
        "interface": ifname,
        "public_key": None,
        "listen_port": int(iface.get("listen_port", 0)),
        "fwmark": int(iface.get("fwmark", 0)),
        "peers": [{
            "public_key": encode_key(bytes.fromhex(str(p["public_key"]))),
            "name": None,
            "endpoint": p.get("endpoint"),
            "allowed_ips": p["allowed_ips"],
            "latest_handshake": int(p.get("last_handshake_time_sec", 0)),
            "rx_bytes": int(p.get("rx_bytes", 0)),
            "tx_bytes": int(p.get("tx_bytes", 0)),
            "persistent_keepalive": int(p.get("persistent_keepalive_interval", 0)),
        } for p in peers],
        "counters": {},
    }


def render(state: dict, now: float) -> str:
    lines = [f"interface: {state['interface']}"]
    if state.get("public_key"):
        lines.append(f"  public key: {state['public_key']}")
    lines.append(f"  listening port: {state['listen_port']}")
    c = state.get("counters") or {}
    if c:
        lines.append(f"  packets: {c.get('rx_packets', 0)} received, {c.get('tx_packets', 0)} sent; "
                     f"{human_bytes(c.get('rx_bytes', 0))} received, {human_bytes(c.get('tx_bytes', 0))} sent")
        lines.append(f"  handshakes: {c.get('handshakes', 0)}; cookie replies: {c.get('cookie_replies', 0)}")
        if c.get("endpoint_switches"):
            lines.append(f"  endpoint switches (fail-over): {c['endpoint_switches']}")
        drops = c.get("drops") or {}
        if drops:
            lines.append("  drops: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    # What roles add (access policy, sessions, ...): each gives its own summary lines.
    for data in (state.get("extra") or {}).values():
        for line in data.get("lines", []) if isinstance(data, dict) else []:
            lines.append(f"  {line}")
    for p in state["peers"]:
        lines.append("")
        title = f"peer: {p['public_key']}" + (f" ({p['name']})" if p.get("name") else "")
        lines.append(title)
        if p.get("endpoint"):
            lines.append(f"  endpoint: {p['endpoint']}")
        lines.append(f"  allowed ips: {', '.join(p['allowed_ips']) or '(none)'}")
        lines.append(f"  latest handshake: {ago(p['latest_handshake'], now)}")
        lines.append(f"  transfer: {human_bytes(p['rx_bytes'])} received, {human_bytes(p['tx_bytes'])} sent")
        if p.get("persistent_keepalive"):
            lines.append(f"  persistent keepalive: every {p['persistent_keepalive']} seconds")
    return "\n".join(lines) + "\n"
