"""The journal names no module: each step carries the module that registered its undo kind.

A fresh process (`tunnel down` after a crash) imports that module before
undoing the step, and only if it belongs to tunnel or to a package that
plugs into it; a step written before steps carried their module is found
through the declared roles, then among the library's own modules. No root: the change undone here is a resolver
file in a temporary directory (client/dns.py's resolv.conf back end).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from client import dns
from tunnel.undo import ForeignJournal, Journal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGINAL = "nameserver 192.0.2.53\n"

# What `tunnel down` does, in a process that has imported nothing but the journal.
FRESH_UNDO = """
import json, sys
from tunnel.undo import ForeignJournal, Journal
failures = Journal.open(sys.argv[1]).undo_all()
print(json.dumps({"failures": failures, "loaded": sorted(m for m in sys.modules
                  if m.split(".")[0] in ("client", "server", "tunnel_lab", "sneaky"))}))
"""


def fresh_undo(path: str, extra_path: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, extra_path) if p))
    res = subprocess.run([sys.executable, "-c", FRESH_UNDO, path], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture
def changed(tmp_path):
    """A resolver file rewritten through the journal, as a full-tunnel client does; (journal, file)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(ORIGINAL)
    journal = Journal.open(str(tmp_path / "state" / "wg0.json"))
    dns.apply_dns(journal, "wg0", ["10.9.0.1"], resolv_conf=str(resolv), use_resolved=False)
    assert "10.9.0.1" in resolv.read_text()
    return journal, resolv


def _steps(journal: Journal) -> list[dict]:
    with open(journal.path) as f:
        return json.load(f)["steps"]


def test_each_step_names_the_module_that_undoes_it_and_a_fresh_process_imports_it(changed):
    journal, resolv = changed
    assert [(s["kind"], s["module"]) for s in _steps(journal)] == [("dns.resolv_conf", "client.dns")]
    result = fresh_undo(journal.path)
    assert result == {"failures": [], "loaded": ["client", "client.dns"]}  # that module, no role needed
    assert resolv.read_text() == ORIGINAL
    assert not os.path.exists(journal.path)


def test_an_old_journal_without_modules_is_undone_through_the_declared_roles(changed):
    journal, resolv = changed
    steps = _steps(journal)
    for step in steps:
        del step["module"]
    with open(journal.path, "w") as f:
        json.dump({"version": 1, "steps": steps}, f)
    result = fresh_undo(journal.path)
    assert result["failures"] == [] and "client.dns" in result["loaded"]
    assert resolv.read_text() == ORIGINAL


def test_a_module_that_is_not_ours_is_never_imported(tmp_path):
    sneaky = tmp_path / "lib"
    sneaky.mkdir()
    marker = tmp_path / "imported"
    (sneaky / "sneaky.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    path = str(tmp_path / "state" / "x.json")
    os.makedirs(os.path.dirname(path))
    steps = [{"kind": "sneaky_kind", "module": "sneaky", "params": {}},
             {"kind": "os_kind", "module": "os.path", "params": {}},
             {"kind": "odd", "module": "client.dns; import os", "params": {}}]
    with open(path, "w") as f:
        json.dump({"version": 1, "steps": steps}, f)
    result = fresh_undo(path, extra_path=str(sneaky))
    assert not marker.exists() and "sneaky" not in result["loaded"]
    assert sorted(result["failures"]) == [
        "undo odd: refusing to import 'client.dns; import os': not a module of ours",
        "undo os_kind: refusing to import 'os.path': not a module of ours",
        "undo sneaky_kind: refusing to import 'sneaky': not a module of ours",
    ]
    assert Journal.open(path).steps == steps  # kept for a later, better informed `tunnel down`


def test_an_unknown_kind_of_a_module_of_ours_is_kept_with_a_message(tmp_path):
    path = str(tmp_path / "x.json")
    step = {"kind": "no_such_kind", "module": "tunnel.nft", "params": {}}
    with open(path, "w") as f:
        json.dump({"version": 1, "steps": [step]}, f)
    result = fresh_undo(path)
    assert result["failures"] == ["undo no_such_kind: unknown change kind 'no_such_kind' (module tunnel.nft)"]
    assert Journal.open(path).steps == [step]


def test_an_old_step_of_the_library_itself_is_found_among_its_modules(tmp_path):
    # A control socket file left by a crashed daemon, recorded before steps named their module.
    stale = tmp_path / "wg0.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()  # the file stays; nobody listens on it
    path = str(tmp_path / "wg0.json")
    with open(path, "w") as f:
        json.dump({"version": 1, "steps": [{"kind": "control_socket", "params": {"path": str(stale)}}]}, f)
    assert fresh_undo(path)["failures"] == []
    assert not stale.exists() and not os.path.exists(path)


# --- the network namespace a journal belongs to -------------------------------------------


def test_a_journal_records_its_network_namespace(changed):
    journal, _ = changed
    with open(journal.path) as f:
        netns = json.load(f)["netns"]
    st = os.stat("/proc/thread-self/ns/net")
    assert (netns["inode"], netns["dev"]) == (st.st_ino, st.st_dev)
    assert Journal.open(journal.path).elsewhere() is None


def test_a_journal_of_another_namespace_is_neither_undone_nor_added_to_here(changed):
    """Another namespace's changes stay listed, untouched, with one line saying where they belong."""
    journal, resolv = changed
    with open(journal.path) as f:
        data = json.load(f)
    data["netns"] = {"inode": 4026599999, "dev": data["netns"]["dev"], "name": "elsewhere"}
    with open(journal.path, "w") as f:
        json.dump(data, f)
    before = open(journal.path).read()
    result = fresh_undo(journal.path)
    assert len(result["failures"]) == 1
    message = result["failures"][0]
    assert "\n" not in message and "network namespace 'elsewhere' (net:[4026599999])" in message, message
    assert "`ip netns exec elsewhere tunnel down wg0`" in message, message
    assert "10.9.0.1" in resolv.read_text()  # not undone here
    assert open(journal.path).read() == before
    with pytest.raises(ForeignJournal):
        Journal.open(journal.path).record("dns.resolv_conf", path=str(resolv), content=ORIGINAL)
    assert open(journal.path).read() == before


def test_a_journal_from_before_namespaces_were_recorded_is_undone_where_found(changed):
    journal, resolv = changed
    with open(journal.path) as f:
        data = json.load(f)
    del data["netns"]
    with open(journal.path, "w") as f:
        json.dump(data, f)
    assert fresh_undo(journal.path)["failures"] == []
    assert resolv.read_text() == ORIGINAL
