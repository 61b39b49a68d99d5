"""User login on a real server: local accounts with one-time codes, RADIUS, the web page, sessions.

    [c1] ours: `tunnel up` + `tunnel login`     10.99.1.2 --+
    [c2] an official-app-like client:           10.99.2.2 --+-- [s] `tunnel server up` ---- [h1] 10.50.0.11
         wireguard-go + `wg setconf`, logs in with a plain HTTP client       (FreeRADIUS on its loopback)

Until its user logs in, a client reaches only the login endpoint on the server's tunnel address
(http://10.8.0.1/); after, what the policy grants the user's groups, until the session ends
(lifetime, idle, kick, RADIUS Session-Timeout). Each test checks it with real packets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest

from server.auth import totp
from tests.auth.freeradius import ALICE_PASSWORD, ALICE_TOTP, CAROL_PASSWORD, CAROL_TOTP, SECRET, freeradius
from tests.helpers.netns import genkey, wireguard_go
from tests.helpers.server import ServerProc, http_login
from tests.helpers.tunnelproc import start_tunnel, tunnel_env
from tests.policy.netprobe import EchoServers, tcp_connect, tcp_reaches
from tunnel.config import parse_config

pytestmark = pytest.mark.netns

H1 = "10.50.0.11"
SERVER_TUN = "10.8.0.1"
POOLS = ["10.8.0.0/24", "fd08::/64"]
POLICY = """{
  "hosts": {"h1": "10.50.0.11"},
  "acls": [
    {"action": "accept", "src": ["group:staff"], "proto": "tcp", "dst": ["h1:22"]},
    {"action": "accept", "src": ["*"], "proto": "tcp", "dst": ["h1:80"]},
  ],
}"""


class LoginSite:
    def __init__(self, topo, tmp_path):
        self.topo = topo
        self.tmp = tmp_path
        self.s = topo.netns("s")
        self.c1, self.c2, self.h1 = topo.netns("c1"), topo.netns("c2"), topo.netns("h1")
        self.s.link_veth(self.c1, "10.99.1.1/24", "10.99.1.2/24")
        self.s.link_veth(self.c2, "10.99.2.1/24", "10.99.2.2/24")
        self.c2.route("10.99.1.0/24", "via", "10.99.2.1")
        self.s.link_veth(self.h1, "10.50.0.1/24", "10.50.0.11/24")
        self.h1.route("default", "via", "10.50.0.1")
        self.srv = ServerProc(self.s, str(tmp_path), topo.unique_ifname("lg"))
        self.srv.init("10.99.1.1", pools=POOLS)
        policy = tmp_path / "policy.hujson"
        policy.write_text(POLICY)
        self.srv.cli("policy", "apply", str(policy))
        self.echo = EchoServers(self.h1, tcp=[22, 80])

    def ours(self, name: str = "laptop"):
        text = self.srv.add_client(name)
        tp = start_tunnel(self.c1, str(self.tmp), text, ifname=self.topo.unique_ifname("l1"))
        tp.wait_up()
        self.wait_page(self.c1)
        return tp

    def official_app(self, name: str = "phone"):
        """wireguard-go configured with `wg setconf` from the file add-client printed."""
        config = parse_config(self.srv.add_client(name))
        setconf = self.tmp / f"{name}.setconf"
        setconf.write_text(config.to_setconf_text())
        ifname = self.topo.unique_ifname("l2")
        private, _ = genkey()
        wg = wireguard_go(self.c2, ifname, private, 0)
        self.c2.run(["wg", "setconf", ifname, str(setconf)])
        for address in config.interface.addresses:
            self.c2.addr(ifname, str(address))
        self.c2.route("10.8.0.0/24", "dev", ifname)
        self.c2.route("10.50.0.0/24", "dev", ifname)
        self.wait_page(self.c2)
        return wg

    def wait_page(self, ns) -> None:
        """Until the login page answers through NS's tunnel (the one thing a client may reach before login)."""
        ns.wait_for(lambda: tcp_open(ns, SERVER_TUN, 80), 20, what=f"the login page from {ns.name}")

    def login(self, user: str, *answers: str, check: bool = True):
        res = self.c1.run([os.sys.executable, "-m", "tunnel", "login", "--server", SERVER_TUN, "-u", user],
                          input="\n".join(answers) + "\n", check=False, env=tunnel_env(str(self.tmp / "c1-state")),
                          timeout=60)
        if check:
            assert res.returncode == 0, res.stdout + res.stderr
        return res

    def reaches(self, ns, port: int, within: float = 8.0, expect: bool = True) -> bool:
        """Whether NS reaches h1:PORT, waiting up to WITHIN for it to become EXPECT."""
        deadline = time.monotonic() + within
        while True:
            got = tcp_reaches(ns, H1, port, 1.0)
            if got == expect or time.monotonic() > deadline:
                return got
            time.sleep(0.3)

    def close(self):
        self.echo.close()


def tcp_open(ns, host: str, port: int) -> bool:
    s = tcp_connect(ns, host, port, 1.0)
    if s is None:
        return False
    s.close()
    return True


def test_local_accounts_one_time_codes_kick_and_idle(netns_factory, tmp_path):
    topo = netns_factory("lg")
    site = LoginSite(topo, tmp_path)
    try:
        site.srv.cli("auth", "local", "--idle", "8s")
        res = site.srv.ns.run([os.sys.executable, "-m", "tunnel", "server", "user", "add", "alice", "--group", "staff",
                               "--totp", "--password-file", "-", "--dir", site.srv.dir, "-i", site.srv.ifname],
                              input="correct horse battery\n", env=tunnel_env(site.srv.state))
        secret = re.search(r"type the key ([A-Z2-7]+)", res.stdout).group(1)
        site.srv.ns.run([os.sys.executable, "-m", "tunnel", "server", "user", "add", "bob", "--group", "staff",
                         "--password-file", "-", "--dir", site.srv.dir, "-i", site.srv.ifname],
                        input="bob's password\n", env=tunnel_env(site.srv.state))
        site.srv.up()
        laptop = site.ours()
        phone = site.official_app()

        # Not logged in: the login page answers, the site does not.
        page = site.c1.python("import urllib.request; print(urllib.request.urlopen('http://10.8.0.1/', "
                              "timeout=10).read().decode())").stdout
        assert "<form" in page and "Password" in page
        assert not site.reaches(site.c1, 22, within=0, expect=False)
        assert not site.reaches(site.c2, 80, within=0, expect=False)

        # A wrong code: refused, still login-only.
        bad = site.login("alice", "correct horse battery", "000000", check=False)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        assert not site.reaches(site.c1, 22, within=0, expect=False)
        # The right password and code: the policy for alice's groups.
        good = site.login("alice", "correct horse battery", totp.code_at(secret, time.time()))
        assert "groups: staff" in good.stdout and "until" in good.stdout, good.stdout
        assert site.reaches(site.c1, 22), "alice does not reach what her group is granted"
        # bob logs in from the official app's tunnel with a plain HTTP client.
        answer = http_login(site.c2, {"user": "bob", "password": "bob's password"})
        assert answer.get("ok") and "staff" in answer.get("groups", []), answer
        assert site.reaches(site.c2, 22)

        listed = json.loads(site.srv.cli("sessions", "--json").stdout)
        assert {(s["user"], s["client"]) for s in listed} == {("alice", "laptop"), ("bob", "phone")}

        # kick: alice's access ends within seconds, bob's goes on.
        site.srv.cli("kick", "alice")
        assert not site.reaches(site.c1, 22, expect=False), "kicked, still through"
        assert site.reaches(site.c2, 22, within=0)
        # Idle: nothing from bob for longer than the idle timeout ends his session.
        time.sleep(10)
        assert not site.reaches(site.c2, 22, expect=False), "idle, still through"
        assert [s["user"] for s in json.loads(site.srv.cli("sessions", "--json").stdout)] == []
        log = site.srv.log()
        assert "kick" in log or "admin-reset" in log
        assert "idle" in log and "correct horse battery" not in log
        laptop.stop()
        phone.stop()
    finally:
        site.close()


def test_radius_groups_session_timeout_accounting_and_outage(netns_factory, tmp_path):
    topo = netns_factory("lr")
    site = LoginSite(topo, tmp_path)
    secret_file = tmp_path / "radius.secret"
    secret_file.write_bytes(SECRET + b"\n")
    os.chmod(secret_file, 0o600)
    try:
        with freeradius(tmp_path / "radius", ns=site.s) as fr:
            site.srv.cli("auth", "radius", "--server", f"127.0.0.1:{fr.auth_port}", "--secret-file",
                         str(secret_file))
            site.srv.up()
            site.ours()
            # A wrong password: refused, the site stays closed.
            assert site.login("alice", "not-her-password", check=False).returncode != 0
            assert not site.reaches(site.c1, 80, within=0, expect=False)
            # The right password, then the code asked after Access-Challenge: groups from Class.
            res = site.login("alice", ALICE_PASSWORD, totp.code_at(ALICE_TOTP, time.time()))
            assert "staff" in res.stdout and "admins" in res.stdout, res.stdout
            started = time.monotonic()
            assert site.reaches(site.c1, 22)
            # Session-Timeout = 5 in alice's reply: access ends about 5 s after the login.
            assert not site.reaches(site.c1, 22, within=12, expect=False)
            assert time.monotonic() - started >= 4.0
            # Accounting: Start and Stop reached FreeRADIUS, with bytes.
            deadline = time.monotonic() + 10
            while "Stop" not in fr.detail_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            detail = fr.detail_text()
            assert "Acct-Status-Type = Start" in detail and "Acct-Status-Type = Stop" in detail, detail
            octets = [int(x) for x in re.findall(r"Acct-Input-Octets = (\d+)", detail)]
            assert octets and max(octets) > 0, detail

            # carol (code appended to the password, no Session-Timeout) logs in and stays in...
            site.login("carol", CAROL_PASSWORD + totp.code_at(CAROL_TOTP, time.time()))
            assert site.reaches(site.c1, 80)
            # ...while FreeRADIUS goes down: new logins fail at once with a clear message.
            fr.stop()
            began = time.monotonic()
            down = site.login("alice", ALICE_PASSWORD, check=False)
            assert down.returncode != 0 and "not answering" in down.stderr + down.stdout, down.stderr
            assert time.monotonic() - began < 15
            assert site.reaches(site.c1, 80, within=0), "an existing session ended when RADIUS went away"
    finally:
        site.close()


def test_web_login_in_a_real_browser_through_the_tunnel(netns_factory, tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    topo = netns_factory("lw")
    site = LoginSite(topo, tmp_path)
    try:
        site.srv.cli("auth", "local")
        site.srv.ns.run([os.sys.executable, "-m", "tunnel", "server", "user", "add", "dana", "--group", "staff",
                         "--password-file", "-", "--dir", site.srv.dir, "-i", site.srv.ifname],
                        input="dana's password\n", env=tunnel_env(site.srv.state))
        site.srv.up()
        site.official_app("tablet")
        assert not site.reaches(site.c2, 22, within=0, expect=False)
        artifacts = tmp_path if not os.environ.get("TUNNEL_TEST_ARTIFACTS") else \
            __import__("pathlib").Path(os.environ["TUNNEL_TEST_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=800,900", f"--user-data-dir={tmp_path / 'profile'}"]:
            options.add_argument(flag)
        # The browser, its driver and our calls to it all live in the tablet's namespace.
        with site.c2.entered():
            service = webdriver.ChromeService(executable_path=driver_path,
                                              log_output=str(tmp_path / "chromedriver.log"))
            browser = webdriver.Chrome(options=options, service=service)
            try:
                browser.set_page_load_timeout(30)
                browser.get(f"http://{SERVER_TUN}/")
                browser.find_element(By.ID, "user").send_keys("dana")
                browser.find_element(By.ID, "password").send_keys("dana's password")
                browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
                # The form posts and a new page loads: wait for it (the old page's elements go stale).
                from selenium.common.exceptions import StaleElementReferenceException
                from selenium.webdriver.support.ui import WebDriverWait

                body = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
                    lambda d: (lambda text: text if "logged in" in text else None)(
                        d.find_element(By.TAG_NAME, "body").text))
                shot = artifacts / "login-through-tunnel.png"
                browser.save_screenshot(str(shot))
                print(f"screenshot: {shot}")
            finally:
                browser.quit()
        assert "dana" in body and "staff" in body and re.search(r"until|expires", body, re.I), body
        assert site.reaches(site.c2, 22)
    finally:
        site.close()
