"""The README's policy example loads, passes its tests and explains as the README prints it."""

from __future__ import annotations

import os

from server.policy import ClientRef, check_policy, explain, load_policy

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def test_readme_example():
    text = open(README, encoding="utf-8").read()
    section = text.split("### Access policy")[1]
    policy = load_policy(section.split("```jsonc\n")[1].split("```")[0], "policy.hujson")
    clients = [ClientRef("alice", ["10.8.0.2"], {"work"}), ClientRef("carol", ["10.8.0.3"], {"temp"}),
               ClientRef("bob", ["10.8.0.4"], {"ops", "management"})]
    assert check_policy(policy, clients) == []
    [line, _] = [str(e) for e in explain(policy, clients, "alice", "db:5432")]
    assert line in section
