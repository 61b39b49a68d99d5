"""A Config back to wg-quick text: `parse_config(write_config(c)) == c`.

Rules kept here: a value that could not be read back as written (a newline,
or a '#' that would start a comment) is refused, never written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol.crypto import encode_key

if TYPE_CHECKING:  # pragma: no cover
    from .model import Config


def _check_value(key: str, value: str) -> str:
    # A newline would start a new line and a '#' would silently cut the value
    # when read back: refuse to write either.
    if "\n" in value or "\r" in value or "#" in value:
        raise ValueError(f"{key}: a value cannot contain a newline or '#'")
    return value


def _format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_config(config: Config) -> str:
    i = config.interface
    lines = ["[Interface]", f"PrivateKey = {encode_key(i.private_key)}"]
    if i.listen_port is not None:
        lines.append(f"ListenPort = {i.listen_port}")
    if i.fwmark is not None:
        lines.append(f"FwMark = {hex(i.fwmark) if i.fwmark else 'off'}")
    if i.addresses:
        lines.append("Address = " + ", ".join(str(a) for a in i.addresses))
    if i.dns or i.dns_search:
        lines.append("DNS = " + ", ".join([str(a) for a in i.dns] + [_check_value("DNS", d) for d in i.dns_search]))
    if i.mtu is not None:
        lines.append(f"MTU = {i.mtu}")
    if i.table is not None:
        lines.append(f"Table = {_check_value('Table', i.table)}")
    for key, hooks in (("PreUp", i.pre_up), ("PostUp", i.post_up), ("PreDown", i.pre_down), ("PostDown", i.post_down)):
        lines += [f"{key} = {_check_value(key, h)}" for h in hooks]
    if i.save_config:
        lines.append("SaveConfig = true")
    lines += _extension_lines(i.extensions)
    for p in config.peers:
        lines += ["", "[Peer]"]
        if p.name is not None:
            lines.append(f"# Name = {_check_value('Name', p.name)}")
        lines.append(f"PublicKey = {encode_key(p.public_key)}")
        if p.preshared_key is not None:
            lines.append(f"PresharedKey = {encode_key(p.preshared_key)}")
        if p.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(str(a) for a in p.allowed_ips))
        if p.endpoint is not None:
            lines.append(f"Endpoint = {_check_value('Endpoint', _format_endpoint(*p.endpoint))}")
        if p.failover_endpoints:
            others = ", ".join(_format_endpoint(*e) for e in p.failover_endpoints)
            lines.append(f"# FailoverEndpoints = {_check_value('FailoverEndpoints', others)}")
        if p.persistent_keepalive is not None:
            lines.append(f"PersistentKeepalive = {p.persistent_keepalive or 'off'}")
        lines += _extension_lines(p.extensions)
    return "\n".join(lines) + "\n"


def _extension_lines(extensions: dict[str, list[str]]) -> list[str]:
    return [f"{key} = {_check_value(key, v)}" for key, values in extensions.items() for v in values]
