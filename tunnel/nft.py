"""The one place that runs the `nft` command.

Rules kept here:
- we only ever touch nftables tables whose names start with `tunnel_`, so
  several copies of the program (one per interface) and the host's own
  firewall never collide; `table_name` builds such names and refuses others;
- a table is always (re)written in one `nft -f -` transaction that first
  deletes any stale copy, so a replaced kill switch never has a gap;
- deleting a table is idempotent: the script declares it (a no-op if it
  exists) and deletes it in the same transaction, so "already gone" is not
  an error (nft 1.0.6 has no `destroy`);
- the undo is recorded by the caller in its Journal before `replace_table`
  runs (`journal.record("nft_table", family=..., name=...)`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

from tunnel.undo import undoer

NFT = "nft"
TABLE_PREFIX = "tunnel_"
FAMILIES = ("ip", "ip6", "inet")

# Linux interface names are at most 15 bytes; we accept only characters that
# can be quoted into an nft script and a table name without escaping.
_IFNAME = re.compile(r"^[A-Za-z0-9_.+@-]{1,15}$")


class NftError(RuntimeError):
    """`nft` refused a command (our own mistake or missing kernel support)."""


def check_ifname(ifname: str) -> str:
    """Return `ifname` if it is safe to put into an nft script; raise otherwise."""
    if not _IFNAME.match(ifname):
        raise ValueError(f"interface name {ifname!r} is not usable in nftables rules")
    return ifname


def table_name(kind: str, ifname: str) -> str:
    """`tunnel_<kind>_<ifname>` with the characters nft identifiers refuse mapped to '_'."""
    check_ifname(ifname)
    if not re.match(r"^[a-z]{1,8}$", kind):
        raise ValueError(f"bad table kind {kind!r}")
    return f"{TABLE_PREFIX}{kind}_" + re.sub(r"[^A-Za-z0-9_]", "_", ifname)


def _check_table(family: str, name: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"bad nft family {family!r}")
    if not re.match(rf"^{TABLE_PREFIX}[A-Za-z0-9_]+$", name):
        raise ValueError(f"refusing to touch nft table {name!r}: not ours")


def require() -> None:
    """Raise NftError (what to install) unless `nft` is there: callers ask before recording a change."""
    if shutil.which(NFT) is None:
        raise NftError("the `nft` command is missing: install nftables (apt-get install nftables)")


def run(args: list[str], script: str | None = None) -> str:
    """Run `nft ARGS` (with SCRIPT on stdin if given) and return its stdout."""
    try:
        proc = subprocess.run(
            [NFT, *args], input=script, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise NftError("the `nft` command is missing: install nftables (apt-get install nftables)") from None
    if proc.returncode != 0:
        raise NftError(f"nft {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def apply(script: str) -> None:
    """Run an nft script as one atomic transaction (`nft -f -`)."""
    run(["-f", "-"], script)


def list_json(*what: str) -> list[dict[str, Any]]:
    """`nft -j list WHAT...` as the list of its "nftables" objects."""
    out = run(["-j", "list", *what])
    return json.loads(out).get("nftables", []) if out.strip() else []


def table_exists(family: str, name: str) -> bool:
    _check_table(family, name)
    for obj in list_json("tables", family):
        table = obj.get("table")
        if table and table.get("name") == name and table.get("family") == family:
            return True
    return False


def replace_table(family: str, name: str, body: str) -> None:
    """Atomically replace table FAMILY NAME by one whose contents are BODY."""
    _check_table(family, name)
    apply(
        f"table {family} {name} {{}}\n"
        f"delete table {family} {name}\n"
        f"table {family} {name} {{\n{body}\n}}\n"
    )


@undoer("nft_table")
def delete_table(family: str, name: str) -> None:
    """Delete table FAMILY NAME if it exists (idempotent)."""
    _check_table(family, name)
    apply(f"table {family} {name} {{}}\ndelete table {family} {name}\n")


def counter_packets(family: str, table: str, chain: str, comment: str) -> int:
    """Packets counted by the rule of CHAIN carrying COMMENT (for tests and status)."""
    _check_table(family, table)
    for obj in list_json("chain", family, table, chain):
        rule = obj.get("rule")
        if not rule or rule.get("comment") != comment:
            continue
        for stmt in rule.get("expr", []):
            if "counter" in stmt:
                return int(stmt["counter"]["packets"])
    raise LookupError(f"no counted rule {comment!r} in {family} {table} {chain}")
