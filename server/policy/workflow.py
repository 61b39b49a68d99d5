"""What the `policy` commands do, as library calls: read, check, compile, apply.

Rules kept here:
- a policy is applied only after it loads, every name in it is known (for
  `check`) and its `tests` pass against the clients it will be applied to;
  otherwise nothing in the kernel changes and the old policy stays;
- a running server re-applies with `strict=False`: names of deleted
  clients or empty groups are then warnings, not a reason to keep an
  outdated policy (tests still must pass).
"""

from __future__ import annotations

from typing import Iterable

from tunnel.undo import Journal

from . import kernel
from .clients import ClientRef, Resolver
from .compile import Compiled, compile_policy
from .context import GatewayContext
from .errors import PolicyCheckError, PolicyError
from .evaluate import check_policy, run_tests
from .model import Policy, load_policy


def read_policy(path: str) -> Policy:
    """Load the policy file at PATH; PolicyError for a file that cannot be read or is invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the policy file: {getattr(exc, 'strerror', None) or exc}", path) from None
    return load_policy(text, path)


def check(policy: Policy, clients: Iterable[ClientRef], gateway: GatewayContext | None = None,
          strict: bool = True) -> list[str]:
    """Problems that refuse POLICY for CLIENTS (strict: unknown names too); raises nothing."""
    resolver = Resolver(policy, clients)
    return check_policy(policy, resolver, gateway) if strict else run_tests(policy, resolver, gateway)


def apply_policy(journal: Journal, policy: Policy, clients: Iterable[ClientRef], *, ifname: str,
                 gateway: GatewayContext, log_group: int | None = None, strict: bool = True) -> Compiled:
    """Check POLICY against CLIENTS, then compile and apply it atomically on IFNAME.

    Raises PolicyCheckError (problems listed) or tunnel.nft.NftError; in both cases the
    kernel still holds the previous policy, or none.
    """
    clients = list(clients)
    problems = check(policy, clients, gateway, strict)
    if problems:
        raise PolicyCheckError(problems)
    compiled = compile_policy(policy, clients, ifname=ifname, gateway=gateway, log_group=log_group)
    kernel.apply(journal, compiled)
    return compiled
