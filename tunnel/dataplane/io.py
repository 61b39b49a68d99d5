"""The two I/O seams of the data plane, as wireguard-go's tun.Device and conn.Bind.

The data plane moves bytes between a TunDevice and a Bind and calls the
protocol core for every seal and open. The real implementations are
tunnel.tun.Tun and tunnel.udp.UdpEndpoint; tunnel.dataplane.fakes has
in-memory ones, so the whole data plane runs in tests without root.

Rules kept here:
- every call is non-blocking and raises BlockingIOError when there is
  nothing to read or no room to write, as the standard library does;
- a read gives many packets' worth when the kernel offers it: a TUN
  super-packet (TSO/USO, behind the vnet header) or a UDP GRO train;
- a write takes many packets' worth: a UDP GSO train of equal-sized
  datagrams (only the last may be shorter), a TUN super-packet;
- a TUN whose interface was deleted (`ip link del`, or its namespace went)
  reads EBADFD, as Linux's does: the loop then ends (TunGone).
"""

from __future__ import annotations

from typing import Protocol, Sequence


class TunGone(Exception):
    """The TUN device's interface no longer exists: the loop has nothing left to serve."""


class TunDevice(Protocol):
    """The TUN side."""

    fd: int  # watched by the loop's epoll for readability
    vnet_hdr: bool  # packets carry the 10-byte virtio_net_hdr both ways
    uso: bool  # writes may be UDP super-packets (gso_type UDP_L4): the kernel took TUN_F_USO4/6

    def read_into(self, buf) -> int:
        """One packet (or super-packet) into buf; its length. BlockingIOError when none."""

    def writev(self, parts: Sequence) -> int:
        """Write one packet (or super-packet) given in pieces."""


class Bind(Protocol):
    """The UDP side."""

    port: int

    def fds(self) -> list[int]:
        """The descriptors the loop watches for readability."""

    def recv(self, fd: int, buf) -> tuple[int, int, tuple]:
        """(nbytes, segment size, source) of one datagram or GRO train read from fd into buf."""

    def send_train(self, view, segment_size: int, endpoint: tuple) -> None:
        """Send view as datagrams of segment_size bytes (the last may be shorter), in one call where possible."""

    def send(self, data, endpoint: tuple) -> None:
        """Send one datagram."""

    def pin(self, endpoints) -> tuple[list[int], list[int]]:
        """Give each endpoint a descriptor (a queue in the kernel) of its own, and no other endpoint one:
        (descriptors opened, descriptors closed). An endpoint that cannot have one stays on the shared one."""

    def kernel_drops(self) -> int:
        """Datagrams dropped before they could be read, so far (a counter that only grows, modulo 2**32)."""

    # Only for an interface whose listen port and fwmark change while it runs (tunnel-wg):

    def rebind(self, port: int) -> tuple[list[int], list[int]]:
        """Listen on PORT (0: any) from now on: (descriptors opened, descriptors closed); OSError changes nothing."""

    def set_fwmark(self, mark: int) -> None:
        """Mark every datagram sent from now on with MARK (0: none)."""
