"""The ifb device that carries one tunnel interface's upload through a qdisc.

Packets a client sends reach the server as *ingress* of the tunnel device
(the daemon writes them into the TUN), and Linux queues only on egress. tc
redirects (mirred) every ingress packet of the tunnel device to the egress
of an ifb device, whose HTB queues and paces them; ifb then hands each packet
back to the stack as if it had just arrived on the tunnel device (same
input interface for routing and nftables).

Rules kept here:
- the name is derived from the tunnel interface (`ifb_name`), within 15
  bytes, so two servers on one machine get two ifb devices;
- we only ever delete a link of kind ifb under that name; its undo
  (kind "shaping.ifb") is idempotent.
"""

from __future__ import annotations

import errno
import hashlib

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tunnel.undo import undoer

from .tc import ShapingError, check_ifname

IFNAMSIZ_MAX = 15
# ifb's own default (32 packets) stops its queue after a few 64 KiB
# super-packets and drops the unlimited clients' bursts in HTB's direct queue.
IFB_TXQUEUELEN = 1000


def ifb_name(ifname: str) -> str:
    """`ifb4<ifname>`, or for long names `ifb4` + 6 characters + 5 hex digits of a hash of the name."""
    check_ifname(ifname)
    name = f"ifb4{ifname}"
    if len(name) <= IFNAMSIZ_MAX:
        return name
    digest = hashlib.blake2s(ifname.encode(), digest_size=4).hexdigest()[:5]
    return f"ifb4{ifname[:6]}{digest}"


def _link(ipr: IPRoute, name: str) -> tuple[int, str | None] | None:
    """(index, kind) of the link NAME, or None if there is none."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        return None
    info = ipr.get_links(found[0])[0].get_attr("IFLA_LINKINFO")
    return found[0], (info.get_attr("IFLA_INFO_KIND") if info is not None else None)


def create(name: str) -> None:
    """Create (or reuse) the ifb device NAME and bring it up."""
    with IPRoute() as ipr:
        link = _link(ipr, name)
        if link is not None and link[1] != "ifb":
            raise ShapingError(f"a link named {name!r} exists and is not an ifb device: not ours")
        try:
            if link is None:
                ipr.link("add", ifname=name, kind="ifb", txqlen=IFB_TXQUEUELEN)
                link = _link(ipr, name)
                if link is None:
                    raise ShapingError(f"ifb device {name} vanished as it was created")
            ipr.link("set", index=link[0], state="up", txqlen=IFB_TXQUEUELEN)
        except NetlinkError as exc:
            hint = " (the kernel needs CONFIG_IFB / the ifb module)" if exc.code == errno.EOPNOTSUPP else ""
            raise ShapingError(f"cannot set up ifb device {name}: {exc.args[-1] if exc.args else exc}{hint}") from exc


@undoer("shaping.ifb")
def delete(name: str) -> None:
    """Delete the ifb device NAME if it exists (its qdiscs, classes and filters go with it)."""
    with IPRoute() as ipr:
        link = _link(ipr, name)
        if link is None or link[1] != "ifb":  # gone, or someone else's: not ours to delete
            return
        try:
            ipr.link("del", index=link[0])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
