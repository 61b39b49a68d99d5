"""A real FreeRADIUS for tests: its own config directory, loopback ports, always stopped.

    with freeradius(tmp_path) as fr:      # fr.auth_port, fr.acct_port, fr.secret, fr.detail
        ...

The configuration is the least FreeRADIUS needs for what we test:
- a `users` file: alice's password, her TOTP secret (checked by rlm_totp, an
  implementation independent of ours) and the reply she gets (Class, Filter-Id,
  Session-Timeout, Idle-Timeout, Acct-Interim-Interval);
- two rounds as FreeRADIUS setups do: the password, then Access-Challenge with a
  State; the code is checked only in a round whose State FreeRADIUS issued
  after a good password (session-state), so a forged State gets nowhere;
- carol gives her code appended to the password (one round, the other common
  setup), gets Filter-Id and an Acct-Interim-Interval but no Session-Timeout;
- accounting to a `detail` file.
Startup takes ~0.1 s here; the process is killed in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

SECRET = b"au-test-secret"
ALICE_PASSWORD = "wonderland"
ALICE_TOTP = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # RFC 6238's SHA1 key, base32
CAROL_PASSWORD = "carol-pass"
CAROL_TOTP = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"

USERS = f"""
alice Cleartext-Password := "{ALICE_PASSWORD}", TOTP-Secret := "{ALICE_TOTP}"
      Class = "staff",
      Class = "admins",
      Filter-Id = "ops",
      Session-Timeout = 5,
      Idle-Timeout = 60,
      Acct-Interim-Interval = 60

carol Cleartext-Password := "{CAROL_PASSWORD}", TOTP-Secret := "{CAROL_TOTP}"
      Filter-Id = "ops",
      Acct-Interim-Interval = 60
"""

CONFIG = """
prefix = /usr
exec_prefix = /usr
sbindir = /usr/sbin
libdir = /usr/lib/freeradius
name = freeradius
raddbdir = {dir}
confdir = {dir}
logdir = {dir}
run_dir = {dir}
radacctdir = {dir}
localstatedir = {dir}
pidfile = {dir}/radiusd.pid
max_request_time = 5
cleanup_delay = 1
max_requests = 1024
hostname_lookups = no
log {{
  destination = stdout
  auth = yes
}}
security {{
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = yes
}}
client test {{
  ipaddr = 127.0.0.1
  secret = {secret}
  require_message_authenticator = yes
}}
modules {{
  pap {{
  }}
  files {{
    filename = {dir}/users
  }}
  totp {{
  }}
  always handled {{
    rcode = handled
  }}
  always reject {{
    rcode = reject
  }}
  detail {{
    filename = {dir}/detail
    escape_filenames = no
    permissions = 0600
    header = "%t"
  }}
}}
server default {{
  listen {{
    type = auth
    ipaddr = 127.0.0.1
    port = {auth_port}
  }}
  listen {{
    type = acct
    ipaddr = 127.0.0.1
    port = {acct_port}
  }}
  authorize {{
    files
    if (&User-Name == "carol") {{
      if (&User-Password =~ /^(.*)([0-9]{{6}})$/) {{
        update request {{
          User-Password := "%{{1}}"
          TOTP-Password := "%{{2}}"
        }}
        update control {{
          Auth-Type := appended
        }}
      }}
      else {{
        reject
      }}
    }}
    elsif (!&State) {{
      update control {{
        Auth-Type := password
      }}
    }}
    elsif (&session-state:Tmp-String-0 == "password-ok") {{
      update request {{
        TOTP-Password := &User-Password
      }}
      update control {{
        Auth-Type := code
      }}
    }}
    else {{
      reject
    }}
  }}
  authenticate {{
    Auth-Type password {{
      pap
      update {{
        &reply: !* ANY
      }}
      update session-state {{
        Tmp-String-0 := "password-ok"
      }}
      update reply {{
        Reply-Message := "Enter your one-time code"
      }}
      update control {{
        &Response-Packet-Type := Access-Challenge
      }}
      handled
    }}
    Auth-Type code {{
      totp
    }}
    Auth-Type appended {{
      pap
      totp
    }}
  }}
  preacct {{
  }}
  accounting {{
    detail
  }}
  post-auth {{
    Post-Auth-Type REJECT {{
      update {{
        &reply: !* ANY
      }}
    }}
  }}
}}
"""


@dataclass
class FreeRadius:
    directory: Path
    auth_port: int
    acct_port: int
    secret: bytes
    process: subprocess.Popen | None = None

    @property
    def detail(self) -> Path:
        return self.directory / "detail"

    @property
    def log(self) -> Path:
        return self.directory / "radiusd.out"

    def detail_text(self) -> str:
        return self.detail.read_text() if self.detail.exists() else ""

    def stop(self) -> None:
        p = self.process
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _free_udp_ports(count: int) -> list[int]:
    """Consecutive-free is not needed: auth and acct ports are configured apart."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def binary() -> str:
    path = shutil.which("freeradius") or (os.path.exists("/usr/sbin/freeradius") and "/usr/sbin/freeradius")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("freeradius is not installed (apt-get install freeradius)")
        pytest.skip("freeradius is not installed (apt-get install freeradius)")
    return path


@contextlib.contextmanager
def freeradius(directory: Path, ns=None) -> Iterator[FreeRadius]:
    """FreeRADIUS on 127.0.0.1, in this namespace or (NS, a tests.helpers.netns.Netns) in that one's."""
    exe = binary()
    directory.mkdir(parents=True, exist_ok=True)
    auth_port, acct_port = _free_udp_ports(2) if ns is None else (1812, 1813)  # a test namespace is empty
    (directory / "users").write_text(USERS)
    (directory / "radiusd.conf").write_text(
        CONFIG.format(dir=directory, secret=SECRET.decode(), auth_port=auth_port, acct_port=acct_port))
    fr = FreeRadius(directory, auth_port, acct_port, SECRET)
    out = open(fr.log, "wb")
    try:
        argv = [exe, "-f", "-X", "-d", str(directory)]
        kwargs = dict(stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        fr.process = subprocess.Popen(argv, **kwargs) if ns is None else ns.popen(argv, **kwargs)
        deadline = time.monotonic() + 20
        while b"Ready to process requests" not in fr.log.read_bytes():
            if fr.process.poll() is not None or time.monotonic() > deadline:
                tail = fr.log.read_text(errors="replace")[-3000:]
                pytest.fail(f"freeradius did not start:\n{tail}")
            time.sleep(0.02)
        yield fr
    finally:
        fr.stop()
        out.close()
