"""Arrows run one way: a test that fails when an import points the wrong way.

    tunnel_lab/ ──┐
    client/ ──────┼──> tunnel/ ──> tunnel/protocol/ ──> stdlib without I/O, cryptography
    server/ ──────┘

- tunnel/ (the shared library) imports none of client/, server/, tunnel_lab/,
  and names none of their modules in a string either (a name in a list of
  modules to import is an arrow too);
- client/ and server/ do not import each other; nothing imports tunnel_lab/
  but itself;
- tunnel/protocol/ imports nothing of tunnel/ outside itself, and of the rest
  only what is pinned below: no socket, select, time, logging, threading,
  subprocess..., and of `os` only `os.urandom` (the default of the injected rng);
- no import cycle among our modules.

Every import counts, at module level or inside a function (an import hidden
in a function is still an arrow); only `if TYPE_CHECKING:` blocks are left
out, since they never run. The source is read with ast, nothing is imported.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tunnel", "client", "server", "tunnel_lab")

# What tunnel/protocol/ may import from outside itself. Add a module only if it
# does no I/O and reads no clock (sans-I/O: bytes and `now` in, actions out).
PROTOCOL_MAY_IMPORT = {
    "__future__", "base64", "binascii", "collections", "dataclasses", "hashlib", "heapq", "hmac",
    "ipaddress", "itertools", "math", "os", "struct", "typing", "functools", "operator",
}
PROTOCOL_MAY_IMPORT_PACKAGES = ("cryptography",)
PROTOCOL_OS_ATTRIBUTES = {"urandom"}
# Named in the failure message: the usual suspects.
IO_MODULES = {"socket", "select", "selectors", "time", "logging", "threading", "subprocess", "asyncio",
              "signal", "fcntl", "pyroute2", "datetime", "random", "io", "shutil", "tempfile"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(sub) for sub in ast.walk(node))
    return skip


def imports_of(module: str) -> dict[str, int]:
    """Every module MODULE imports (absolute names) -> the line of the import."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from tunnel import control` imports the module tunnel.control.
                candidate = f"{source}.{alias.name}"
                found.setdefault(candidate if candidate in MODULES else source, node.lineno)
    return found


def _top(name: str) -> str:
    return name.partition(".")[0]


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _where(module: str, line: int) -> str:
    path = MODULES[module]
    return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"


def test_the_walk_sees_every_kind_of_import():
    # The walk itself must not miss what it is meant to catch.
    assert imports_of("tunnel.services")["tunnel.control"]  # from . import control
    assert "tunnel.protocol.crypto" in imports_of("tunnel.uapi")  # from .protocol.crypto import ...
    assert "qrcode" in imports_of("server.qr")  # inside a function
    assert "click" not in imports_of("tunnel.role")  # under TYPE_CHECKING: never runs
    assert len(MODULES) > 40 and "tunnel.protocol.noise" in MODULES


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "tunnel")))
def test_the_shared_library_imports_no_user_of_it(module):
    wrong = {name: line for name, line in imports_of(module).items()
             if _top(name) in ("client", "server", "tunnel_lab")}
    assert not wrong, "tunnel/ must not import its users: " + ", ".join(
        f"{_where(module, line)} imports {name}" for name, line in wrong.items())


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "tunnel")))
def test_the_shared_library_names_no_module_of_its_users(module):
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    def names_a_module(text: str) -> bool:
        # "client.dns" or "server.gateway:apply" does; "server.log" (a file) or "server" (a word) does not.
        parts = re.split(r"[.:]", text)
        return text == "tunnel_lab" or (
            _top(text) in ("client", "server", "tunnel_lab") and len(parts) > 1 and ".".join(parts[:2]) in MODULES)

    wrong = [f"{_where(module, node.lineno)}: {node.value!r}" for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
             and names_a_module(node.value)]
    assert not wrong, "a module name in a string is an arrow too: " + "; ".join(wrong)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _top(m) in ("client", "server")))
def test_client_and_server_do_not_import_each_other(module):
    other = "server" if _in(module, "client") else "client"
    wrong = {name: line for name, line in imports_of(module).items() if _top(name) in (other, "tunnel_lab")}
    assert not wrong, ", ".join(f"{_where(module, line)} imports {name}" for name, line in wrong.items())


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "tunnel.protocol")))
def test_the_protocol_core_does_no_io(module):
    problems = []
    for name, line in imports_of(module).items():
        if _in(name, "tunnel.protocol"):
            continue
        if _in(name, "tunnel"):
            problems.append(f"{_where(module, line)} imports {name} (outside tunnel/protocol/)")
        elif name not in PROTOCOL_MAY_IMPORT and _top(name) not in PROTOCOL_MAY_IMPORT_PACKAGES:
            why = "I/O or a clock" if _top(name) in IO_MODULES else "not pinned in PROTOCOL_MAY_IMPORT"
            problems.append(f"{_where(module, line)} imports {name} ({why})")
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
                and node.attr not in PROTOCOL_OS_ATTRIBUTES):
            problems.append(f"{_where(module, node.lineno)} uses os.{node.attr}")
    assert not problems, "tunnel/protocol/ is sans-I/O: " + "; ".join(problems)


def test_no_import_cycles():
    graph = {m: {n for n in imports_of(m) if n in MODULES} for m in MODULES}
    # Tarjan's strongly connected components: any with two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_walk_would_catch_a_wrong_arrow(tmp_path, monkeypatch):
    # The rules above must be able to fail: a module of tunnel/ importing the
    # server in a function, and one naming a client module in a list.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from server import provision\n"
                   "MODULES = ['client.killswitch']\n")
    monkeypatch.setitem(MODULES, "tunnel.bad", bad)
    with pytest.raises(AssertionError, match="tunnel/ must not import its users"):
        test_the_shared_library_imports_no_user_of_it("tunnel.bad")
    with pytest.raises(AssertionError, match="client.killswitch"):
        test_the_shared_library_names_no_module_of_its_users("tunnel.bad")
    proto = tmp_path / "proto.py"
    proto.write_text("import time\nfrom .. import udp\nimport os\nos.read(0, 1)\n")
    monkeypatch.setitem(MODULES, "tunnel.protocol.bad", proto)
    with pytest.raises(AssertionError) as failure:
        test_the_protocol_core_does_no_io("tunnel.protocol.bad")
    assert "imports time (I/O or a clock)" in str(failure.value)
    assert "imports tunnel.udp" in str(failure.value) and "uses os.read" in str(failure.value)


def test_packaging_declares_every_role_command_and_package():
    # The entry points are how tunnel/ finds its users without naming them.
    text = (ROOT / "pyproject.toml").read_text()
    declared = {}
    for group in ("tunnel.roles", "tunnel.commands"):
        block = text.split(f'[project.entry-points."{group}"]', 1)[1].split("\n[", 1)[0]
        declared[group] = dict(re.findall(r'^(\w+)\s*=\s*"([\w.]+):\w+"', block, re.M))
    assert declared["tunnel.roles"] == {"client": "client.role"}
    assert {_top(v) for v in declared["tunnel.commands"].values()} == {"client", "server", "tunnel_lab"}
    for module in [*declared["tunnel.roles"].values(), *declared["tunnel.commands"].values()]:
        assert module in MODULES, module
    assert all(os.path.isfile(ROOT / p / "__init__.py") for p in PACKAGES)
