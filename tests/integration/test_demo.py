"""The README's first command: `tunnel demo` runs the main job end to end and leaves nothing behind."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile

import pytest

from tests.helpers.tunnelproc import ROOT

pytestmark = pytest.mark.netns


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _labs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "tunnel-lab-*")))


def test_the_demo_runs_a_server_and_a_client_and_cleans_up():
    before_ns, before_dirs = _namespaces(), _labs()
    res = subprocess.run([sys.executable, "-m", "tunnel", "demo", "--seconds", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Traceback" not in out
    # Every step ran, on the server daemon with its embedded SQLite registry.
    for step in range(1, 8):
        assert f"[{step}/7]" in out, out
    assert re.search(r"embedded registry \S+\.db", out), out
    assert re.search(r"handshake completed in \d+ ms", out), out
    assert out.count("3 received, 0% packet loss") == 2, out  # IPv4 and IPv6
    mbps = re.search(r"^\s+(\d+) Mbit/s$", out, re.M)
    assert mbps and int(mbps.group(1)) > 0, out
    listing = out.split("tunnel server list", 1)[1]
    assert "laptop" in listing and "latest handshake" in listing, out
    assert "the server stopped cleanly" in out, out
    # Nothing left: namespaces (so their links and the daemons' nft state) and the private directory.
    assert not {ns for ns in _namespaces() - before_ns if ns.startswith("tdemo")}
    assert not _labs() - before_dirs


def test_the_demo_as_a_non_root_user_says_why_in_one_line():
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-m", "tunnel", "demo"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].endswith("run it as root (sudo)"), res.stderr
