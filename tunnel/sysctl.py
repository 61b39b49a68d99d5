"""The network namespace's net.* sysctls (forwarding, src_valid_mark), journalled.

Rules kept here:
- only names under net.* are touched, through /proc/sys of the current
  network namespace;
- the old value is recorded before the write (undo kind "routing.sysctl",
  its name older than this module: old journals still undo), and nothing is
  recorded when the sysctl already holds the value: we changed nothing, so
  stopping must not "restore" it from under whoever set it;
- the undo restores only while the sysctl still holds what we wrote:
  someone else's newer value wins.
"""

from __future__ import annotations

from .undo import Journal, undoer


def _sysctl_path(name: str) -> str:
    if not name.startswith("net.") or "/" in name or ".." in name:
        raise ValueError(f"refusing sysctl {name!r}")
    return "/proc/sys/" + name.replace(".", "/")


def read_sysctl(name: str) -> str:
    with open(_sysctl_path(name), encoding="ascii") as f:
        return f.read().strip()


def set_sysctl(journal: Journal, name: str, value: str) -> None:
    """Set sysctl NAME (of this network namespace) to VALUE, recording the old value.

    Nothing is recorded when it already holds VALUE: we changed nothing, so
    stopping must not "restore" it from under whoever set it.
    """
    old = read_sysctl(name)
    if old == value:
        return
    journal.record("routing.sysctl", name=name, old=old, new=value)
    with open(_sysctl_path(name), "w", encoding="ascii") as f:
        f.write(value)


@undoer("routing.sysctl")
def _restore_sysctl(name: str, old: str, new: str) -> None:
    # Restore only while it still holds what we wrote: if someone changed it
    # since, theirs is the newer intent.
    if read_sysctl(name) == new:
        with open(_sysctl_path(name), "w", encoding="ascii") as f:
            f.write(old)
