"""The WireGuard protocol, sans-I/O: bytes and time in, bytes and actions out.

Nothing in this package opens a socket or a device, reads a clock or logs.
"""

from .actions import Action, Drop, Event, SendDatagram, WritePacket
from .device import Device
from .errors import LocalError, RemoteError
from .keypair import Keypair
from .peer import Peer

__all__ = [
    "Action", "Drop", "Event", "SendDatagram", "WritePacket",
    "Device", "Keypair", "Peer", "LocalError", "RemoteError",
]
