"""DNS while the tunnel is up: the config's DNS= servers and search domains.

Two back ends, picked by `resolved_running()`:
- systemd-resolved: per-link servers on the tunnel interface plus the `~.`
  routing domain and default-route, so every name without a more specific
  link goes to our servers (`resolvectl dns/domain/default-route`); undo is
  `resolvectl revert IFACE` (kind "dns.resolved"), and resolved forgets the
  link by itself when the link disappears;
- otherwise the resolver file (/etc/resolv.conf unless told): its content is
  replaced *in place* (same inode), because it may be a bind mount (`ip
  netns exec` mounts /etc/netns/NS/resolv.conf over it, containers do the
  same) or a symlink into a resolvconf directory; renaming a new file over
  it would break the mount or the link.

Rules kept here:
- the original content is saved, fsynced, in the journal's state directory
  before the journal records the change and before the file is touched;
- undo (kind "dns.resolv_conf") writes the original back only if the file
  still holds exactly what we wrote (a DHCP client or the admin may have
  written something newer, which wins), then deletes the saved copy; run
  twice, or after a crash before the write, it does nothing harmful;
- the only command this module runs is `resolvectl`, through `run_resolvectl`
  (tests replace it to assert the exact calls);
- glibc reads at most 3 nameservers (MAXNS); more are written but ignored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
from typing import Callable, Iterable

from tunnel.secrets import write_private_file
from tunnel.undo import Journal, undoer

RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_DIR = "/run/systemd/resolve"
_DOMAIN = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")

Runner = Callable[[list[str]], None]


class DnsError(RuntimeError):
    """A DNS back end refused the settings."""


def run_resolvectl(args: list[str]) -> None:
    """Run `resolvectl ARGS`; raise DnsError with its message on failure."""
    proc = subprocess.run(["resolvectl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DnsError(f"resolvectl {' '.join(args)} failed: {proc.stderr.strip()}")


def resolved_running() -> bool:
    """systemd-resolved is in charge: its runtime directory exists and resolvectl is installed."""
    return os.path.isdir(RESOLVED_DIR) and shutil.which("resolvectl") is not None


def _check(servers: Iterable[str], search: Iterable[str]) -> tuple[list[str], list[str]]:
    servers = [str(ipaddress.ip_address(s.strip())) for s in servers]
    search = [d.strip().rstrip(".") for d in search]
    for d in search:
        if not _DOMAIN.match(d):
            raise ValueError(f"bad search domain {d!r}")
    if not servers:
        raise ValueError("no DNS servers given")
    return servers, search


def resolv_conf_text(ifname: str, servers: list[str], search: list[str]) -> str:
    lines = [f"# Written by tunnel for {ifname}; the previous file comes back when it stops."]
    lines += [f"nameserver {s}" for s in servers]
    if search:
        lines.append("search " + " ".join(search))
    return "\n".join(lines) + "\n"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_in_place(path: str, data: bytes) -> None:
    # O_TRUNC on the existing inode: a bind mount or symlink stays what it is.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_copy(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    write_private_file(path, data)


def apply_dns(journal: Journal, ifname: str, servers: Iterable[str], search: Iterable[str] = (),
              resolv_conf: str = RESOLV_CONF, use_resolved: bool | None = None,
              runner: Runner | None = None) -> None:
    """Send this machine's DNS to SERVERS (with SEARCH domains) while the tunnel is up."""
    servers, search = _check(servers, search)
    runner = runner or run_resolvectl
    if use_resolved is None:
        use_resolved = resolved_running()
    if use_resolved:
        journal.record("dns.resolved", ifname=ifname)
        runner(["dns", ifname, *servers])
        runner(["domain", ifname, "~.", *search])
        runner(["default-route", ifname, "true"])
        return

    with open(resolv_conf, "rb") as f:
        original = f.read()
    ours = resolv_conf_text(ifname, servers, search).encode()
    saved = os.path.join(os.path.dirname(journal.path) or ".",
                         f"{os.path.basename(journal.path)}.resolv.conf.orig")
    if original != ours:  # after a crash the file may still hold our text: keep the older save
        _save_copy(saved, original)
    journal.record("dns.resolv_conf", path=resolv_conf, saved=saved, ours=_sha256(ours))
    _write_in_place(resolv_conf, ours)


@undoer("dns.resolv_conf")
def _restore_resolv_conf(path: str, saved: str, ours: str) -> None:
    try:
        with open(saved, "rb") as f:
            original = f.read()
    except FileNotFoundError:
        return  # already restored
    try:
        with open(path, "rb") as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if current is not None and _sha256(current) == ours:
        _write_in_place(path, original)
    os.unlink(saved)


@undoer("dns.resolved")
def _revert_resolved(ifname: str) -> None:
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return  # the link is gone: resolved dropped its settings with it
    run_resolvectl(["revert", ifname])  # looked up at call time, so tests can replace it
