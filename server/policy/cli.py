"""`policy check | apply | explain | counters`: a click group the server's CLI mounts.

    from server.policy.cli import PolicyEnv, policy_group
    server.add_command(policy_group(PolicyEnv(clients=registry_clients, target=apply_target)), "policy")

Rules kept here:
- commands only parse arguments, call the library and print; every error
  is one line on stderr and exit status 1;
- the registry stays outside: the clients come from `env.clients()`, the
  interface, journal and gateway settings from `env.target()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import click

from tunnel.cli import _Fail

from .clients import ClientRef
from .context import GatewayContext
from .errors import PolicyError


@dataclass(frozen=True)
class ApplyTarget:
    """Where `apply` and `counters` act: the server's interface, its journal and gateway settings."""

    ifname: str
    journal: object  # tunnel.undo.Journal
    gateway: GatewayContext
    log_group: int | None = None


@dataclass(frozen=True)
class PolicyEnv:
    clients: Callable[[], list[ClientRef]]
    target: Callable[[], ApplyTarget] | None = None
    default_file: Callable[[], str | None] = lambda: None


def policy_group(env: PolicyEnv) -> click.Group:
    @click.group(name="policy")
    def group() -> None:
        """The access policy: groups, rules (default deny), bandwidth and DNS per group."""

    def policy_file(path: str | None) -> str:
        path = path or env.default_file()
        if not path:
            raise _Fail("no policy file given and the server has none")
        return path

    def gateway() -> GatewayContext | None:
        return env.target().gateway if env.target else None

    @group.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    def check(file: str) -> None:
        """Validate FILE and run its tests against the server's clients."""
        from .workflow import check as check_policy, read_policy

        try:
            policy = read_policy(file)
            clients = env.clients()
            problems = check_policy(policy, clients, gateway())
        except (PolicyError, ValueError) as exc:
            raise _Fail(str(exc)) from None
        if problems:
            for line in problems:
                click.echo(line, err=True)
            raise _Fail(f"{file}: {len(problems)} problem(s)")
        click.echo(f"{file}: ok: {len(policy.rules)} rule(s), {len(policy.tests)} test(s) passed "
                   f"against {len(clients)} client(s)")

    @group.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    def apply(file: str) -> None:
        """Check FILE, then apply it to the running server in one kernel transaction."""
        from tunnel.nft import NftError

        from .workflow import apply_policy, read_policy

        if env.target is None:
            raise _Fail("applying needs a running server")
        started = time.monotonic()
        try:
            target = env.target()
            policy = read_policy(file)
            compiled = apply_policy(target.journal, policy, env.clients(), ifname=target.ifname,
                                    gateway=target.gateway, log_group=target.log_group)
        except (PolicyError, ValueError) as exc:
            raise _Fail(f"refused, the previous policy stays in force:\n{exc}") from None
        except NftError as exc:
            raise _Fail(f"the kernel refused the compiled policy (the previous one stays in force): {exc}") from None
        for w in compiled.warnings:
            click.echo(f"warning: {w}", err=True)
        click.echo(f"applied {file} to {target.ifname}: {len(compiled.classes)} class(es), "
                   f"{sum(compiled.elements.values())} set element(s), {time.monotonic() - started:.2f} s")

    @group.command()
    @click.argument("client")
    @click.argument("dest", metavar="DEST[:PORT[/PROTO]]")
    @click.option("--file", "file", default=None, help="The policy file (default: the server's).")
    def explain(client: str, dest: str, file: str | None) -> None:
        """Print the verdict for CLIENT reaching DEST and the rule that decides it."""
        from .evaluate import explain as explain_policy
        from .workflow import read_policy

        try:
            policy = read_policy(policy_file(file))
            lines = explain_policy(policy, env.clients(), client, dest, gateway())
        except (PolicyError, ValueError) as exc:
            raise _Fail(str(exc)) from None
        for line in lines:
            click.echo(str(line))

    @group.command()
    def counters() -> None:
        """Denied packets per client and per reason since the policy was first applied."""
        from tunnel.nft import NftError

        from .kernel import deny_counters

        if env.target is None:
            raise _Fail("counters need a running server")
        try:
            counts = deny_counters(env.target().ifname, env.clients())
        except (NftError, ValueError) as exc:
            raise _Fail(str(exc)) from None
        for reason, n in counts.by_reason.items():
            click.echo(f"reason {reason}: {n}")
        for name, n in sorted(counts.by_client.items()):
            click.echo(f"client {name}: {n}")

    return group
