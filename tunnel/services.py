"""What runs beside the data plane of every interface: started after bring-up, closed before tear-down.

- the control socket (wg show / wg set / tunnel show / server add-client);
- the Prometheus endpoint when the config sets MetricsAddress;
- the periodic drop summary in the log;
- the endpoint keeper: sessions resumed at start, the peers' endpoints
  recorded while running (tunnel/resume.py; its store may be a role's);
- then whatever each role of the interface hands in (Role.services).

These serve client and server interfaces alike: nothing here is a role's.

Rules kept here: a control socket that cannot be had (the same name is
served from another namespace) is a warning, not a failure; any other
service that fails to start closes the ones started before it and raises
ServiceError (the interface is then torn down with a clear message);
closing is each service's own `close()`, called newest first.
"""

from __future__ import annotations

import logging

from . import control, droplog, metrics, resume

log = logging.getLogger("tunnel")


class ServiceError(RuntimeError):
    """A service of the interface could not start; the message says which and why."""


def start_services(interface, roles=(), socket_dir: str = control.SOCKET_DIR) -> list:
    started: list = []
    try:
        try:
            started.append(control.attach(interface, socket_dir))
        except control.ControlError as exc:
            # The sockets of every namespace share one directory: the same
            # interface name running in another namespace holds it. The tunnel
            # works without it; only wg/tunnel show cannot see this one.
            log.warning("%s: no control socket (wg show, tunnel show, add-client cannot reach it): %s",
                        interface.name, exc)
        served = metrics.attach(interface)
        if served is not None:
            started.append(served)
        started.append(droplog.DropSummary(interface.name, interface.plane.stats))
        started.append(resume.start(interface, roles))
        for role in roles:
            started.extend(role.services(interface))
    except Exception as exc:  # each started one is closed, whatever failed
        for service in reversed(started):
            service.close()
        if isinstance(exc, (control.ControlError, metrics.MetricsError, OSError)):
            raise ServiceError(f"{interface.name}: {exc}") from None
        raise
    return started
