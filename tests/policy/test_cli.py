"""`policy check` and `policy explain` through click, with clients handed in as plain data."""

from __future__ import annotations

from click.testing import CliRunner

from server.policy import ClientRef, GatewayContext
from server.policy.cli import ApplyTarget, PolicyEnv, policy_group

CLIENTS = [ClientRef("alice", ["10.8.0.2"], {"eng"}), ClientRef("bob", ["10.8.0.3"], {"ops"})]
POLICY = """{
  "hosts": {"db": "10.1.0.5"},
  "acls": [{"action": "accept", "src": ["group:eng"], "proto": "tcp", "dst": ["db:5432"]}],
  "tests": [{"src": "alice", "accept": ["db:5432"]}, {"src": "bob", "deny": ["db:5432"]}],
}
"""


def run(tmp_path, *args, text=POLICY, target=None):
    path = tmp_path / "policy.hujson"
    path.write_text(text)
    env = PolicyEnv(clients=lambda: CLIENTS, target=target, default_file=lambda: str(path))
    result = CliRunner().invoke(policy_group(env), [a.replace("FILE", str(path)) for a in args])
    return result, str(path)


def test_check_ok(tmp_path):
    result, path = run(tmp_path, "check", "FILE")
    assert result.exit_code == 0, result.output
    assert result.output == f"{path}: ok: 1 rule(s), 2 test(s) passed against 2 client(s)\n"


def test_check_reports_each_problem_with_its_line(tmp_path):
    result, path = run(tmp_path, "check", "FILE", text=POLICY.replace('"deny"', '"accept"'))
    assert result.exit_code == 1
    assert f"{path}:4: tests[1]: bob -> db:5432 (10.1.0.5, tcp/udp): expected accept, got deny" in result.output
    assert result.output.endswith(f"tunnel: {path}: 1 problem(s)\n")


def test_check_invalid_file_is_one_line(tmp_path):
    result, path = run(tmp_path, "check", "FILE", text=POLICY.replace("db:5432", "db:99999", 1))
    assert result.exit_code == 1
    assert result.output == f"tunnel: {path}:3: dst 'db:99999': port 99999 out of range (0-65535)\n"
    result, _ = run(tmp_path, "check", str(tmp_path / "missing.hujson"))
    assert result.exit_code == 1 and "cannot read the policy file: No such file" in result.output


def test_explain(tmp_path):
    gw = GatewayContext.make(["10.8.0.1/24"], ["10.8.0.1"], [])
    target = lambda: ApplyTarget("wg0", None, gw)  # noqa: E731 - explain reads only the gateway settings
    result, _ = run(tmp_path, "explain", "alice", "db:5432/tcp", target=target)
    assert result.exit_code == 0, result.output
    assert result.output == ("alice -> db = 10.1.0.5:5432/tcp: accept by acls[0] (line 3): "
                             "group:eng -> db:5432 proto tcp\n")
    result, _ = run(tmp_path, "explain", "bob", "10.8.0.1:53/udp", target=target)
    assert result.output == "bob -> 10.8.0.1:53/udp: accept: DNS to the gateway's pushed DNS server\n"
    result, _ = run(tmp_path, "explain", "mallory", "db:22", target=target)
    assert result.exit_code == 1 and result.output == "tunnel: 'mallory' is not a client\n"


def test_apply_without_a_server_says_so(tmp_path):
    result, _ = run(tmp_path, "apply", "FILE")
    assert result.exit_code == 1 and result.output == "tunnel: applying needs a running server\n"
