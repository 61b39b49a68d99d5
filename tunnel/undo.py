"""A journal of changes made to the OS, each written down with its undo.

Rules kept here (sshuttle's habit, made crash-proof):
- an undo step is written to the state file, and fsynced, *before* the change
  is made: after SIGKILL or a power cut the file names every change that
  might exist, and `undo_all` run by `tunnel down` or the next `tunnel up`
  removes them;
- an undo is a (kind, params) pair of plain JSON, so that a fresh process can
  run it; the code for each kind is registered with `@undoer("kind")`;
- every undo is idempotent ("delete if present", "restore if still ours"), so
  undoing a change that was never completed, or undoing twice, is harmless;
- undo runs newest first, each step in its own try: one failure does not
  stop the others; failures are returned, not raised.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .secrets import write_private_file

UndoFn = Callable[..., None]
_UNDOERS: dict[str, UndoFn] = {}

DEFAULT_STATE_DIR = "/run/tunnel"

# Every module that registers undoers: imported before undoing, so that a
# fresh `tunnel down` process knows every kind an earlier run recorded.
UNDOER_MODULES = (
    "tunnel.netconfig",
    "tunnel.nft",
    "tunnel.tun",
    "client.routing",
    "client.dns",
    "client.killswitch",
    "server.gateway",
    "server.control",
)


def load_undoers() -> None:
    import importlib

    for name in UNDOER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


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

    @classmethod
    def for_interface(cls, ifname: str, state_dir: str | None = None) -> "Journal":
        state_dir = state_dir or os.environ.get("TUNNEL_STATE_DIR", DEFAULT_STATE_DIR)
        return cls.open(os.path.join(state_dir, f"{ifname}.json"))

    @classmethod
    def open(cls, path: str) -> "Journal":
        """Load the journal left by an earlier run (crashed or not), or an empty one."""
        steps: list[dict[str, Any]] = []
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            steps = [s for s in data.get("steps", []) if isinstance(s, dict) and "kind" in s]
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            # A torn write: keep nothing we cannot read, but do not crash `down`.
            steps = []
        return cls(path, steps)

    def record(self, kind: str, **params: Any) -> None:
        """Write down how to undo a change, before making it."""
        if kind not in _UNDOERS:
            raise KeyError(f"no undoer registered for {kind!r}")
        self.steps.append({"kind": kind, "params": params})
        self._save()

    def undo_all(self) -> list[str]:
        """Undo every recorded change, newest first; return messages for the steps that failed.

        A step that failed, or whose kind no module registers, stays in the
        state file so that a later `tunnel down` can try it again.
        """
        load_undoers()
        failures: list[str] = []
        kept: list[dict[str, Any]] = []
        while self.steps:
            step = self.steps[-1]
            fn = _UNDOERS.get(step["kind"])
            try:
                if fn is None:
                    raise KeyError(f"unknown change kind {step['kind']!r}")
                fn(**step.get("params", {}))
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
        write_private_file(self.path, json.dumps({"version": 1, "steps": self.steps}))
