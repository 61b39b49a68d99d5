"""A virtual IP that moves between the gateways of one server (keepalived's VRRP; we write none).

    settings.py    what the registry holds: the VIP and VRID every gateway shares, and each
                   member's own device, priority and preemption
    checks.py      what this machine must offer before anything starts (keepalived, the device
                   and its subnet, a VRID nobody else uses on the segment)
    keepalived.py  keepalived's config, its process beside the daemon, and its undo
    service.py     HaService: a service of the server role that runs keepalived, hears its state
                   changes, records them and, on becoming master, handshakes with the recent peers
    admin.py, cli.py    `tunnel server ha ...`

The UDP port of a member binds to the VIP alone (tunnel/udp.py with IP_FREEBIND, through
ListenAddress in IFACE.conf): only the holder receives client datagrams, and every reply leaves
from the VIP, which is the only source a stock client accepts.
"""
