"""The one place that runs the `tc` command (iproute2) for bandwidth shaping.

Rules kept here:
- every change goes through `batch`: one `tc -batch -` process for a whole
  set of commands, so installing a thousand clients costs one process and
  one netlink socket, not a thousand forks;
- a batch stops at its first failing command and `batch` raises
  ShapingError naming that command and tc's reason;
- only names that can sit in a batch line unquoted reach tc (`check_ifname`);
- reading is `show`, tc's JSON output; a device that does not exist reads
  as nothing, so undo code can ask without checking first.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any, Sequence

TC = "tc"

# Interface names: at most 15 bytes (IFNAMSIZ - 1), no blanks or shell/batch syntax.
_IFNAME = re.compile(r"^[A-Za-z0-9_.+@-]{1,15}$")
_FAILED = re.compile(r"Command failed (?:-|\S+):(\d+)")


class ShapingError(RuntimeError):
    """tc refused a command (missing kernel support, or our own mistake)."""


def check_ifname(ifname: str) -> str:
    if not _IFNAME.match(ifname):
        raise ValueError(f"interface name {ifname!r} is not usable for traffic shaping")
    return ifname


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([TC, *args], input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ShapingError("the `tc` command is missing: install iproute2") from None


def batch(commands: Sequence[str]) -> None:
    """Run COMMANDS (tc command lines without the leading `tc`) in one `tc -batch`."""
    if not commands:
        return
    proc = _run(["-batch", "-"], "\n".join(commands) + "\n")
    if proc.returncode == 0:
        return
    err = proc.stderr.strip()
    found = _FAILED.search(err)
    where = ""
    if found and 0 < int(found.group(1)) <= len(commands):
        where = f" at `tc {commands[int(found.group(1)) - 1]}`"
    reason = " ".join(line for line in err.splitlines() if not _FAILED.search(line)) or err
    raise ShapingError(f"tc failed{where}: {reason}")


def show(*args: str) -> list[dict[str, Any]]:
    """`tc -j ARGS` parsed (e.g. show("qdisc", "show", "dev", "wg0")); a missing device gives []."""
    proc = _run(["-j", *args])
    if proc.returncode != 0:
        if "Cannot find device" in proc.stderr or "No such device" in proc.stderr:
            return []
        raise ShapingError(f"tc {' '.join(args)} failed: {proc.stderr.strip()}")
    out = proc.stdout.strip()
    try:
        return json.loads(out) if out else []
    except ValueError:
        raise ShapingError(f"tc -j {' '.join(args)} printed no JSON (iproute2 too old?)") from None
