"""The access policy: who may reach what, compiled to nftables and enforced in the kernel.

The interface the server integrates against (plain data in, results and kernel rules out; this
package never reads the registry):

    ClientRef(name, addresses, groups, admitted=True)
        one client: its tunnel addresses ("10.8.0.2", "fd08::2"; a shorter prefix is a routed
        subnet) and its group names from the registry ("work"); admitted=False puts it on the
        login-only target (sessions).
    load_policy(text, filename) -> Policy                       raises PolicyError "FILE:LINE: what"
    check_policy(policy, clients, gateway=None) -> [problem]    unknown names + failing tests
    run_tests(policy, clients, gateway=None) -> [failure]       the file's `tests` only
    decide(policy, clients, src_client, dst_addr, port, proto, gateway=None) -> Decision
        .verdict "accept"/"deny", .reason (reasons.Reason), .rule (Rule: .index, .line) or None
    explain(policy, clients, client, "DEST[:PORT[/PROTO]]", gateway=None) -> [Explanation]
    GatewayContext.make(addresses, dns_servers, local_services)   the gateway's own addresses,
        pushed DNS servers and always-open services ("tcp/8443")
    compile_ruleset(policy, clients, *, ifname, table=None, gateway_addresses, dns_servers,
                    local_services, log_group=None) -> str   the whole nft table as text (review, nft -c)
    compile_policy(...) -> Compiled    the same as data: .ruleset, .classes, .class_of / .targets
                                       (address -> chain), .names (address -> client), .warnings
    apply(journal, compiled) / remove(ifname)     kernel.py: lookup sets loaded first, then one atomic
                                                  switch; undo "nft_table" recorded before the first
    apply_policy(journal, policy, clients, *, ifname, gateway) -> Compiled   check + compile + apply
    set_client_target(ifname, address, target)    target: Compiled.class_of[address], LOGIN_ONLY,
                                                  or None (the address then meets `unknown`); one
                                                  transaction; its open connections are judged again
    deny_counters(ifname, clients=()) -> DenyCounters   .by_client_reason {client: {reason: packets}},
                                      .by_client, .by_reason, .by_address(_reason) (unknown sources too)
    client_settings(policy, clients) -> {name: ClientSettings(bandwidth, dns)}
        per-client bandwidth (bits/s down/up, None = unlimited) and DNS servers (None = pushed)
    DenyLog(ifname, log_group, names)   a thread logging the kernel's rate-limited deny messages
    cli.policy_group(PolicyEnv(clients=..., target=...))   `check`, `apply`, `explain`, `counters`
"""

from __future__ import annotations

from .clients import ClientRef, Resolver
from .compile import LOGIN_ONLY, Compiled, compile_policy, compile_ruleset, default_log_group, table_name
from .context import GatewayContext
from .denylog import DenyLog
from .errors import PolicyCheckError, PolicyError
from .evaluate import Decision, Explanation, check_policy, decide, explain, run_tests
from .kernel import DenyCounters, apply, deny_counters, remove, set_client_target
from .model import Policy, load_policy
from .reasons import Reason
from .settings import ClientSettings, client_settings
from .workflow import apply_policy, read_policy

__all__ = [
    "LOGIN_ONLY", "ClientRef", "ClientSettings", "Compiled", "Decision", "DenyCounters", "DenyLog",
    "Explanation", "GatewayContext", "Policy", "PolicyCheckError", "PolicyError", "Reason", "Resolver",
    "apply", "apply_policy", "check_policy", "client_settings", "compile_policy", "compile_ruleset",
    "decide", "default_log_group", "deny_counters", "explain", "load_policy", "read_policy", "remove",
    "run_tests", "set_client_target", "table_name",
]
