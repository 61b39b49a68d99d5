"""wg-quick's PreUp/PostUp/PreDown/PostDown: user commands run by the shell.

These are the user's own commands, so they run as wg-quick runs them:
`sh -c`, with every `%i` replaced by the interface name. A failing PreUp or
PostUp stops the bring-up (and everything done so far is undone); a
failing PreDown/PostDown is reported and the tear-down goes on.
"""

from __future__ import annotations

import logging
import subprocess

log = logging.getLogger("tunnel")


class HookError(RuntimeError):
    pass


def run_hooks(commands: list[str], ifname: str, label: str) -> None:
    for command in commands:
        cmd = command.replace("%i", ifname)
        log.info("%s: %s: %s", ifname, label, cmd)
        result = subprocess.run(["sh", "-c", cmd], stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise HookError(f"{ifname}: {label} command failed with status {result.returncode}: {cmd}")
