"""What runs beside the data plane of every interface: started after bring-up, closed before tear-down.

- the control socket (wg show / wg set / tunnel show / server add-client);
- the Prometheus endpoint when the config sets MetricsAddress;
- the periodic drop summary in the log.

Rules kept here: a control socket that cannot be had (the same name is
served from another namespace) is a warning, not a failure; any other
service that fails to start undoes the ones started before it and raises
(the interface is then torn down with a clear message); closing is each
service's own `close()`, called newest first.
"""

from __future__ import annotations

import logging

from server import control, droplog, metrics

log = logging.getLogger("tunnel")


def start_services(interface, socket_dir: str = control.SOCKET_DIR) -> list:
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
    except (control.ControlError, metrics.MetricsError, OSError) as exc:
        for service in reversed(started):
            service.close()
        from tunnel.interface import InterfaceError

        raise InterfaceError(f"{interface.name}: {exc}") from None
    return started
