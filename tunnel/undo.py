"""A journal of changes made to the OS, each written down with its undo.

Rules kept here (sshuttle's habit, made crash-proof):
- an undo step is written to the state file, and fsynced, *before* the change
  is made: after SIGKILL or a power cut the file names every change that
  might exist, and `undo_all` run by `tunnel down` or the next `tunnel up`
  removes them;
- an undo is a (kind, params) pair of plain JSON, so that a fresh process can
  run it; each module that changes the OS registers the code for its own
  kinds with `@undoer("kind")`, and this journal names no module: each step
  carries the module that registered its kind, imported by a fresh process
  (`tunnel down` after a crash) before the step is undone; only modules of
  tunnel and of the packages that plug into it are imported (role.py);
  a step written before steps named their module is looked up among the
  kinds registered so far, then those of the declared roles, then those
  of every module of tunnel;
- every undo is idempotent ("delete if present", "restore if still ours"), so
  undoing a change that was never completed, or undoing twice, is harmless;
- undo runs newest first, each step in its own try: one failure does not
  stop the others; failures are returned, not raised;
- a journal names the network namespace its changes were made in (the
  inode of /proc/thread-self/ns/net, and the name `ip netns identify` would
  give), and is undone, or added to, only there: in another namespace the
  same interface name is another interface, and a route or table of the
  same name someone else's. Elsewhere `undo_all` undoes nothing, keeps the
  file and says where it belongs (`elsewhere()`); a journal from before
  namespaces were recorded is undone wherever it is found.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import role
from .secrets import write_private_file

UndoFn = Callable[..., None]
_UNDOERS: dict[str, UndoFn] = {}

DEFAULT_STATE_DIR = "/run/tunnel"
NETNS_RUN_DIR = "/run/netns"  # where `ip netns add` pins named namespaces
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class UndoLookupError(LookupError):
    """No code to undo a recorded step: unknown kind, or a module we refuse to import."""


class ForeignJournal(RuntimeError):
    """The journal belongs to another network namespace; str() says which, in one line."""


def current_netns() -> dict[str, Any] | None:
    """This thread's network namespace: {"inode", "dev"} and its "name" if it has one (None if unknown)."""
    for path in ("/proc/thread-self/ns/net", "/proc/self/ns/net"):
        try:
            st = os.stat(path)
            break
        except OSError:
            continue
    else:
        return None
    ident: dict[str, Any] = {"inode": st.st_ino, "dev": st.st_dev}
    name = _netns_name(st.st_ino, st.st_dev)
    if name is not None:
        ident["name"] = name
    return ident


def _netns_name(inode: int, dev: int) -> str | None:
    """The name `ip netns identify` gives the namespace: a file in /run/netns that is it."""
    try:
        names = sorted(os.listdir(NETNS_RUN_DIR))
    except OSError:
        return None
    for name in names:
        try:
            st = os.stat(os.path.join(NETNS_RUN_DIR, name))
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (inode, dev):
            return name
    return None


def _same_netns(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a.get("inode"), a.get("dev")) == (b.get("inode"), b.get("dev"))


def _describe(netns: dict[str, Any]) -> str:
    where = f"net:[{netns.get('inode')}]"
    return f"{netns['name']!r} ({where})" if netns.get("name") else where


def undoer(kind: str) -> Callable[[UndoFn], UndoFn]:
    """Register the function that undoes changes of `kind`; it gets the params as keywords."""

    def register(fn: UndoFn) -> UndoFn:
        _UNDOERS[kind] = fn
        return fn

    return register


@dataclass
class Journal:
    """The state file of one interface: /run/tunnel/IFACE.json by default."""

    path: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    # Where the steps were made (current_netns()); None: not recorded (a new or an old journal).
    netns: dict[str, Any] | None = None

    @classmethod
    def for_interface(cls, ifname: str, state_dir: str | None = None) -> "Journal":
        state_dir = state_dir or os.environ.get("TUNNEL_STATE_DIR", DEFAULT_STATE_DIR)
        return cls.open(os.path.join(state_dir, f"{ifname}.json"))

    @classmethod
    def open(cls, path: str) -> "Journal":
        """Load the journal left by an earlier run (crashed or not), or an empty one."""
        steps: list[dict[str, Any]] = []
        netns = None
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            steps = [s for s in data.get("steps", []) if isinstance(s, dict) and "kind" in s]
            netns = data.get("netns") if isinstance(data.get("netns"), dict) else None
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            # A torn write: keep nothing we cannot read, but do not crash `down`.
            steps = []
        return cls(path, steps, netns if steps else None)

    def elsewhere(self) -> str | None:
        """Why this journal cannot be undone or added to here (it belongs to another namespace), or None."""
        if not self.steps or self.netns is None:
            return None
        here = current_netns()
        if here is None or _same_netns(self.netns, here):
            return None
        name = os.path.basename(self.path).removesuffix(".json")
        how = (f"`ip netns exec {self.netns['name']} tunnel down {name}`" if self.netns.get("name")
               else f"`tunnel down {name}` in that namespace")
        return (f"{self.path} holds changes made in network namespace {_describe(self.netns)}, not in this one "
                f"({_describe(here)}): they are undone only there ({how}; delete the file if that namespace "
                f"is gone)")

    def record(self, kind: str, **params: Any) -> None:
        """Write down how to undo a change, before making it."""
        fn = _UNDOERS.get(kind)
        if fn is None:
            raise KeyError(f"no undoer registered for {kind!r}")
        problem = self.elsewhere()
        if problem:
            raise ForeignJournal(problem)
        if not self.steps or self.netns is None:
            self.netns = current_netns()
        self.steps.append({"kind": kind, "module": fn.__module__, "params": params})
        self._save()

    def undo_all(self) -> list[str]:
        """Undo every recorded change, newest first; return messages for the steps that failed.

        A step that failed, or whose kind no module registers, stays in the
        state file so that a later `tunnel down` can try it again. A journal
        of another network namespace is left whole: one message says where.
        """
        problem = self.elsewhere()
        if problem:
            return [problem]
        failures: list[str] = []
        kept: list[dict[str, Any]] = []
        while self.steps:
            step = self.steps[-1]
            try:
                _undoer_for(step)(**step.get("params", {}))
            except Exception as exc:  # each step on its own: the rest must still run
                failures.append(f"undo {step['kind']}: {exc}")
                kept.insert(0, step)
            self.steps.pop()
            self._save()
        if kept:
            self.steps = kept
            self._save()
        else:
            self.remove_file()
        return failures

    @property
    def pending(self) -> bool:
        return bool(self.steps)

    def remove_file(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        # Atomic, 0600, and the rename itself fsynced: a power cut keeps the journal.
        data: dict[str, Any] = {"version": 1, "steps": self.steps}
        if self.netns is not None:
            data["netns"] = self.netns
        write_private_file(self.path, json.dumps(data))


def _undoer_for(step: dict[str, Any]) -> UndoFn:
    """The code that undoes STEP, importing the module that registered its kind if need be."""
    kind = step["kind"]
    module = step.get("module")
    problems: list[str] = []
    if kind not in _UNDOERS and module is not None:
        problem = _import_ours(str(module))
        if problem:
            problems.append(problem)
    if kind not in _UNDOERS:
        # Written before steps named their module (or the kind has moved
        # since): the declared roles' modules and the library's own register
        # their kinds when imported.
        for ep in role.entry_points():
            try:
                role.load(ep)
            except role.RoleError as exc:
                problems.append(str(exc))
            if kind in _UNDOERS:
                break
        else:
            problems += _import_library()
    fn = _UNDOERS.get(kind)
    if fn is None:
        where = f" (module {module})" if module is not None else ""
        raise UndoLookupError(f"unknown change kind {kind!r}{where}" + "".join(f"; {p}" for p in problems))
    return fn


def _import_library() -> list[str]:
    """Import every module of this package (for a journal from before steps named their module)."""
    package = importlib.import_module(__name__.rpartition(".")[0])
    problems = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith(".__main__"):  # running it would run the command line
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # its kinds stay unknown; the step is kept and reported
            problems.append(f"cannot import {info.name}: {exc}")
    return problems


def _import_ours(module: str) -> str | None:
    """Import MODULE if it belongs to tunnel or a package that plugs into it; a problem to report, or None.

    A journal is a file: only our own code may be named in it for import.
    """
    if not _MODULE_NAME.fullmatch(module) or module.partition(".")[0] not in role.packages():
        raise UndoLookupError(f"refusing to import {module!r}: not a module of ours")
    try:
        importlib.import_module(module)
    except ImportError as exc:  # moved or uninstalled since: the roles may still know the kind
        return f"cannot import {module}: {exc}"
    return None
