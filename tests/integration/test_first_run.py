"""A clean first run (issue 9, item 12): `pip install .` without extras, every command, as nobody and as root.

The README offers `pip install .` (no extras). Here a fresh venv gets exactly
that: the project (built from a copy of the sources) and its required
packages, none of the optional ones (qrcode, prometheus-client, pyrad,
psycopg). Then every command runs:

- as `nobody` with a HOME of its own: what needs no privilege works (keys,
  a server in a directory of its own, its clients, with a one-line note
  instead of a QR code); what needs root says so in one line; a daemon that
  is not running, a login server that is not there, an optional package
  that is missing: one line each;
- as root, in a namespace of its own: a MetricsAddress without
  prometheus-client, a kill switch or a server's NAT without `nft` on the
  PATH, the benchmark without iperf3: one line each, and nothing left behind.

Never a traceback. The venv is built once for the module (~5 s): the
required packages are linked from this environment, the project installed
with pip --no-deps.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile
import tomllib

import pytest
from packaging.requirements import Requirement

from tests.helpers.netns import genkey, in_ci

pytestmark = pytest.mark.netns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTIONAL = ("qrcode", "prometheus_client", "pyrad", "psycopg")


def _runs_as_nobody(python: str) -> bool:
    r = subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", "pass"], capture_output=True)
    return r.returncode == 0


def _base_python() -> str:
    """An interpreter of this version that `nobody` may run (this one may live under /root)."""
    mine = os.path.realpath(sys.executable)
    if _runs_as_nobody(mine):
        return mine
    system = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if system and _runs_as_nobody(system):
        version = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                 text=True).stdout.strip()
        if version == str(tuple(sys.version_info[:2])):
            return system
    message = f"no Python {sys.version_info[0]}.{sys.version_info[1]} that nobody may run"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _required() -> list[md.Distribution]:
    """The project's required distributions and theirs, as installed here (extras left out)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        todo = [Requirement(r).name for r in tomllib.load(f)["project"]["dependencies"]]
    found: dict[str, md.Distribution] = {}
    while todo:
        dist = md.distribution(todo.pop())
        name = dist.metadata["Name"].lower()
        if name in found:
            continue
        found[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


@pytest.fixture(scope="module")
def fresh():
    """(venv's `tunnel`, a work directory): `pip install .` with no extras, in a new venv."""
    # Not under pytest's tmp directory: that is root's alone, and nobody must reach the venv.
    base = pathlib.Path(tempfile.mkdtemp(prefix="tunnel-firstrun-"))
    try:
        os.chmod(base, 0o755)
        yield _build(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _build(base: pathlib.Path) -> tuple[str, str]:
    venv = base / "venv"
    subprocess.run([_base_python(), "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = base / "deps"  # the required packages, linked from here: no download, no build
    deps.mkdir()
    for dist in _required():
        for top in {str(f).split("/")[0] for f in dist.files or []}:
            src = dist.locate_file(top)
            if top in ("..", "") or top.endswith(".pth") or not os.path.exists(src) or (deps / top).exists():
                continue
            os.symlink(src, deps / top)
    with open(os.path.join(site, "required.pth"), "w") as f:
        f.write(f"{deps}\n")
    src = base / "src"  # a copy: setuptools builds in the source tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for package in ("tunnel", "client", "server", "tunnel_lab"):
        shutil.copytree(os.path.join(ROOT, package), src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-compile",
                        "-q", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    missing = subprocess.run([python, "-c", f"import importlib.util as u; print([m for m in {OPTIONAL!r} "
                                            "if u.find_spec(m)])"], capture_output=True, text=True)
    assert missing.stdout.strip() == "[]", f"an optional package is installed: {missing.stdout}"
    work = base / "work"
    work.mkdir()
    os.chmod(work, 0o777)
    return str(venv / "bin" / "tunnel"), str(work)


def _run(argv: list[str], *, user: str | None = None, home: str, env: dict | None = None, input: str = "",
         netns: str | None = None) -> subprocess.CompletedProcess[str]:
    base = {"HOME": home, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8",
            "TUNNEL_STATE_DIR": os.path.join(home, "state")}
    base.update(env or {})
    cmd = ["env", *(f"{k}={v}" for k, v in base.items()), *argv]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=60, cwd=home,
                          env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})


def _clean(r: subprocess.CompletedProcess[str], what: str, ok: bool | None, words: str = "") -> None:
    shown = f"`{what}` exited {r.returncode}:\n{r.stdout[-800:]}\n{r.stderr[-1500:]}"
    assert "Traceback" not in r.stdout + r.stderr, shown
    if ok is True:
        assert r.returncode == 0, shown
    else:
        if ok is False:
            assert r.returncode != 0, shown
        if r.returncode != 0:
            assert r.stderr.strip() and "\n" not in r.stderr.strip(), f"not one line: {shown}"
    assert words.lower() in (r.stdout + r.stderr).lower(), f"{words!r} not said: {shown}"


def test_every_command_as_a_user_without_privileges(fresh):
    tunnel, work = fresh
    home = os.path.join(work, "nobody")
    os.makedirs(home)
    nobody = pwd.getpwnam("nobody")
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    srv = os.path.join(home, "srv")
    private, _ = genkey()
    conf = os.path.join(home, "wg7.conf")
    with open(conf, "w") as f:
        f.write(f"[Interface]\nPrivateKey = {private}\nAddress = 10.71.0.2/24\n")
    os.chmod(conf, 0o600)
    os.chown(conf, nobody.pw_uid, nobody.pw_gid)
    cases = [
        # (arguments, works?, words the output must hold)
        (["--help"], True, "server"),
        (["--version"], True, ""),
        (["genkey"], True, ""),
        (["genpsk"], True, ""),
        (["pubkey"], False, "not valid"),
        (["up", conf], False, "root"),
        (["down", "wg7"], False, "root"),
        (["show", "hdfr9"], False, "not running"),
        (["server", "list"], False, "permission denied"),  # /etc/wireguard is root's
        (["server", "init", "--endpoint", "vpn.example.com", "--dir", srv], True, "created"),
        (["server", "add-client", "laptop", "--dir", srv], True, "pip install 'tunnel[server]'"),
        (["server", "add-client", "phone", "--png", os.path.join(home, "p.png"), "--dir", srv], False, "qrcode"),
        (["server", "show-client", "laptop", "--dir", srv], True, "qrcode"),
        (["server", "list", "--dir", srv], True, "laptop"),
        (["server", "set-groups", "laptop", "work", "--dir", srv], True, ""),
        (["server", "set-expiry", "laptop", "8h", "--dir", srv], True, ""),
        (["server", "remove-client", "laptop", "--dir", srv], True, ""),
        (["server", "up", "--dir", srv], False, "root"),
        (["server", "init", "--endpoint", "x", "--registry", "postgresql://t@db/t", "--dir", srv + "2"], False,
         "tunnel[postgres]"),
        (["server", "join", "--registry", "postgresql://t@db/t", "--dir", srv + "3"], False, "tunnel[postgres]"),
        (["login", "wg0"], False, ""),
        (["login", "--server", "127.0.0.1", "--port", "9", "-u", "bob"], False, "cannot reach"),
        (["logout", "--server", "127.0.0.1", "--port", "9"], False, "cannot reach"),
        (["demo"], False, "root"),
        (["bench"], False, "root"),
    ]
    for args, ok, words in cases:
        r = _run([tunnel, *args], user="nobody", home=home)
        _clean(r, "tunnel " + " ".join(args), ok, words)
    assert not os.path.exists(os.path.join(home, "p.png"))
    listed = _run([tunnel, "server", "list", "--dir", srv], user="nobody", home=home).stdout
    assert "phone" not in listed  # refused before anything was added


def test_root_without_optional_packages_or_programs(fresh, netns_factory):
    tunnel, work = fresh
    ns = netns_factory("hdfr").netns("a")
    home = os.path.join(work, "root")
    os.makedirs(home, mode=0o700)
    no_nft = {"PATH": os.path.dirname(tunnel)}  # the venv's bin alone: no nft, no iperf3, no wireguard-go

    def config(name: str, extra: str) -> str:
        path = os.path.join(home, f"{name}.conf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[Interface]\nPrivateKey = {genkey()[0]}\nAddress = 10.72.0.2/24\n{extra}\n"
                    f"[Peer]\nPublicKey = {genkey()[1]}\nAllowedIPs = 0.0.0.0/0\nEndpoint = 192.0.2.1:51820\n")
        return path

    cases = [
        ([tunnel, "up", config("hdfm0", "MetricsAddress = 9586")], {}, "tunnel[metrics]"),
        ([tunnel, "up", config("hdfk0", "")], no_nft, "install nftables"),
        ([tunnel, "server", "init", "--endpoint", "10.0.0.1", "--dir", os.path.join(home, "srv"), "-i", "hdfs0"],
         no_nft, "created"),
        ([tunnel, "server", "up", "--dir", os.path.join(home, "srv"), "-i", "hdfs0"], no_nft, "install nftables"),
        ([tunnel, "show", "hdfs0"], {}, "not running"),
        ([tunnel, "bench"], no_nft, "iperf3"),
    ]
    before = ns.state()
    for argv, env, words in cases:
        r = _run(argv, home=home, env=env, netns=ns.name)
        _clean(r, " ".join(argv[1:]), words == "created" or None, words)
    assert ns.state() == before  # each failure undid what it had done
    assert os.listdir(os.path.join(home, "state")) == []
