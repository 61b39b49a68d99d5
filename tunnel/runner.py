"""`tunnel up` and `tunnel down` with every expected failure turned into one clear message.

The CLI calls these; they return None on success or the message to print.
Bad input never produces a traceback: config errors name the file and line,
missing privileges say so, and anything brought up is undone on the way out.
"""

from __future__ import annotations

import logging
import os

from .config import ConfigError, interface_name_from_path, load_config
from .hooks import HookError
from .interface import Interface, InterfaceError, Options, down
from .nft import NftError

log = logging.getLogger("tunnel")


def _privileges() -> str | None:
    if os.geteuid() != 0:
        return "this needs root (CAP_NET_ADMIN to create the TUN device and routes): run it with sudo"
    return None


def run_up(path: str, *, vnet_hdr: bool = True, killswitch: bool | None = None, on_ready=None,
           state_dir: str | None = None, roles=(), extra_setup=None, services=None) -> str | None:
    """Run the interface of the config at PATH until SIGINT/SIGTERM; None, or the failure message.

    ROLES (tunnel.role.Role instances), EXTRA_SETUP (functions of the
    interface) and SERVICES (functions of the brought-up interface returning
    something to close()) are what the caller hands in, after the roles the
    config asks for by itself.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        return str(exc)
    problem = _privileges()
    if problem:
        return problem
    for warning in config.warnings:
        log.warning("%s", warning)
    options = Options(vnet_hdr=vnet_hdr, killswitch=killswitch, on_ready=on_ready, state_dir=state_dir,
                      roles=list(roles), extra_setup=list(extra_setup or []), services=list(services or []))
    name = config.name
    try:
        interface = Interface(config, options)
        config = None  # the interface drops the peers' config once its Device has them: no copy kept here
        interface.run()
    except (InterfaceError, HookError) as exc:
        return str(exc)
    except NftError as exc:  # e.g. no `nft` for the kill switch: what to install, not a type name
        return f"{name}: {exc}"
    except OSError as exc:
        return f"{name}: {exc.strerror or exc}"
    except Exception as exc:  # bring-up pieces (netlink, nft) raise their own types
        log.debug("bring-up failed", exc_info=True)
        return f"{name}: {type(exc).__name__}: {exc}"
    return None


def run_down(target: str, state_dir: str | None = None) -> str | None:
    if target.endswith(".conf") or os.sep in target:
        try:
            name = interface_name_from_path(target)
        except ConfigError as exc:
            return str(exc)
    else:
        name = target
    problem = _privileges()
    if problem:
        return problem
    try:
        failures = down(name, state_dir)
    except InterfaceError as exc:
        return str(exc)
    if failures:
        return f"{name}: some changes could not be undone (run `tunnel down {name}` again): " + "; ".join(failures)
    log.info("%s: nothing of ours is left", name)
    return None
