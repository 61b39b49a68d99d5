"""A Linux TUN device opened for the data plane, with kernel offloads.

Rules this module keeps:
- It only opens the device and moves packets; addresses, MTU and links are
  set elsewhere (pyroute2). Closing the fd deletes a non-persistent TUN.
- The fd is non-blocking: `read_into` raises BlockingIOError when nothing
  is queued, as every non-blocking read in the standard library does.
- With vnet_hdr, every packet read or written starts with a 10-byte
  virtio_net_hdr (see tunnel.offload). With offload, the kernel may hand us
  TCP super-packets up to 64 KiB with a partial checksum, so read buffers
  must hold 10 + 65535 bytes; `tunnel.offload.Splitter` turns them into
  wire packets. Offloads need vnet_hdr.
- Failure to open is a `TunError` whose message says why (no /dev/net/tun,
  not root / no CAP_NET_ADMIN, name taken...).
"""

import errno
import fcntl
import os
import struct

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16
VNET_HDR_SIZE = 10
# Room for the largest read: a 64 KiB super-packet behind its vnet header.
READ_BUFFER_SIZE = VNET_HDR_SIZE + 65535

_OFFLOADS_TCP = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
_OFFLOADS_ALL = _OFFLOADS_TCP | TUN_F_USO4 | TUN_F_USO6


class TunError(OSError):
    """The TUN device could not be opened or configured."""


class Tun:
    """One queue of a TUN device.

    `Tun(name, vnet_hdr=True, offload=True, uso=True, multi_queue=False)`
    creates (or attaches to) the device `name` ("" lets the kernel pick
    "tunN"). `.name` is the kernel's name, `.fd` the non-blocking fd,
    `.offloads` the TUN_F_* flags the kernel accepted (0 without offload).
    TSO_ECN is not asked for: ECN-marked TCP then arrives already segmented
    and we never need the ECN rule for splitting. USO is asked for when
    `uso` and the kernel knows it (6.2+); otherwise TCP offloads only.
    """

    def __init__(self, name: str = "", vnet_hdr: bool = True,
                 offload: bool = True, uso: bool = True,
                 multi_queue: bool = False):
        if offload and not vnet_hdr:
            raise ValueError("offloads need the vnet header")
        if len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} longer than 15 bytes")
        self.fd = -1
        self.vnet_hdr = vnet_hdr
        self.offloads = 0
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TunError(errno.ENOENT, f"{TUN_PATH} is missing (no tun module "
                           "or not mounted in this container)") from None
        except PermissionError as e:
            raise TunError(e.errno, f"cannot open {TUN_PATH}: permission "
                           "denied (needs root or CAP_NET_ADMIN)") from None
        self.fd = fd
        try:
            flags = IFF_TUN | IFF_NO_PI
            if vnet_hdr:
                flags |= IFF_VNET_HDR
            if multi_queue:
                flags |= IFF_MULTI_QUEUE
            ifr = struct.pack("16sH22x", name.encode(), flags)
            try:
                ifr = fcntl.ioctl(fd, TUNSETIFF, ifr)
            except OSError as e:
                raise TunError(e.errno, f"TUNSETIFF {name!r} failed: {e.strerror}"
                               " (needs CAP_NET_ADMIN; an existing device of "
                               "another kind or with other flags is refused)") from None
            self.name = ifr[:IFNAMSIZ].rstrip(b"\0").decode()
            if vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
            if offload:
                self.offloads = self._set_offload(_OFFLOADS_ALL if uso else _OFFLOADS_TCP)
        except BaseException:
            os.close(fd)
            self.fd = -1
            raise

    def _set_offload(self, wanted: int) -> int:
        for flags in (wanted, wanted & _OFFLOADS_TCP):
            try:
                # The argument is the flag word itself, not a pointer.
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
                return flags
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise TunError(e.errno, f"TUNSETOFFLOAD failed: {e.strerror}") from None
        raise TunError(errno.EINVAL, "TUNSETOFFLOAD refused TCP offloads")

    @property
    def uso(self) -> bool:
        """UDP super-packets (gso_type UDP_L4) may be written: the kernel took TUN_F_USO4 and 6."""
        return self.offloads & (TUN_F_USO4 | TUN_F_USO6) == TUN_F_USO4 | TUN_F_USO6

    def read_into(self, buf) -> int:
        """Reads one packet (vnet header included) into buf; returns its
        length. Raises BlockingIOError when nothing is queued."""
        return os.readv(self.fd, (buf,))

    def write(self, buf) -> int:
        """Writes one packet (vnet header first when vnet_hdr). A malformed
        packet or vnet header raises OSError(EINVAL)."""
        return os.write(self.fd, buf)

    def writev(self, parts) -> int:
        """Writes one packet given in pieces (the vnet header and the IP packet, say)."""
        return os.writev(self.fd, parts)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()
