"""A classic BPF program on our UDP sockets: what cannot be a WireGuard message never reaches us.

Garbage at line rate costs a user-space daemon a system call, a copy and a
classification per datagram, and while it queues it fills the receive buffer
that real traffic needs. The kernel can refuse most of it for a few
instructions: this program (SO_ATTACH_FILTER) runs on each datagram before
it is queued on the socket.

Rules kept here:
- the program sees what a UDP socket filter sees: the datagram from its UDP
  header on (the payload starts at offset 8) and `len` = 8 + payload
  (tests/integration/test_udp_filter_netns.py shows it on a real socket);
- a GRO train reaches the filter as one packet: the header of its first
  datagram and the length of the whole train (up to 64 datagrams, all of
  the first one's size but the last, which may be smaller). So the program
  refuses only what no train can be: a first datagram whose type word is
  not 1, 2, 3 or 4 followed by three zero bytes, or a total shorter than
  the smallest message of that type. A handshake type longer than its size
  is let through: an initiation followed by a smaller transport message of
  the same flow is a valid 148 + 96 = 244-byte train, and so is a cookie
  reply followed by one (a server under load answers with a cookie and goes
  on sending data). The core (tunnel.protocol.transport.open_batch) judges
  every datagram of a train exactly;
- nothing is assumed about transport lengths past 32: padding stops at the
  MTU, so a message carrying a full-size packet of odd length is not a
  multiple of 16;
- the filter lives and dies with its socket: no OS state to undo;
- what it drops is counted by the kernel in the socket's drop counter
  (SK_MEMINFO_DROPS), together with the datagrams dropped for a full
  receive buffer; `socket_drops` reads that counter. The kernel offers no
  per-socket split of the two without eBPF, which the daemon's capabilities
  (CAP_NET_ADMIN, not CAP_BPF) do not allow.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from .protocol.constants import (
    COOKIE_REPLY_SIZE,
    HANDSHAKE_INITIATION_SIZE,
    HANDSHAKE_RESPONSE_SIZE,
    MESSAGE_HANDSHAKE_COOKIE,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    TRANSPORT_MIN_SIZE,
)

SO_ATTACH_FILTER = 26
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8  # index in the u32 array SO_MEMINFO returns
UDP_HEADER = 8

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h): only those used here.
LD_W_ABS = 0x20  # A = 32-bit big-endian word at offset k
LD_W_LEN = 0x80  # A = packet length
JEQ_K = 0x15  # pc += (A == k) ? jt : jf
JGE_K = 0x35  # pc += (A >= k) ? jt : jf
RET_K = 0x06  # return k: 0 drops, anything else keeps that many bytes
ACCEPT = 0xFFFFFFFF

# The type word (type byte, three zero bytes, read big-endian) and the
# shortest payload a train starting with that message can have. Transport
# first: it is most of the traffic.
MESSAGES = (
    (MESSAGE_TRANSPORT_DATA << 24, TRANSPORT_MIN_SIZE),
    (MESSAGE_HANDSHAKE_INITIATION << 24, HANDSHAKE_INITIATION_SIZE),
    (MESSAGE_HANDSHAKE_RESPONSE << 24, HANDSHAKE_RESPONSE_SIZE),
    (MESSAGE_HANDSHAKE_COOKIE << 24, COOKIE_REPLY_SIZE),
)

_INSN = struct.Struct("=HBBI")  # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}


def program() -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions; the last two are `drop` and `accept`."""
    insns: list[tuple[int, int, int, int]] = [(LD_W_ABS, 0, 0, UDP_HEADER)]
    end = 1 + 3 * len(MESSAGES)  # index of `drop`; `accept` follows it
    for word, minimum in MESSAGES:
        here = len(insns)
        insns.append((JEQ_K, 0, 2, word))  # not this type: on to the next comparison
        insns.append((LD_W_LEN, 0, 0, 0))
        jge = here + 2
        insns.append((JGE_K, end + 1 - (jge + 1), end - (jge + 1), UDP_HEADER + minimum))
    insns.append((RET_K, 0, 0, 0))
    insns.append((RET_K, 0, 0, ACCEPT))
    return insns


def evaluate(insns, packet: bytes) -> int:
    """Run a program of the opcodes above over `packet` (from its UDP header) as the kernel does.

    For the in-memory fakes and the tests: the bytes attached to a real
    socket are the ones judged here. A load past the end returns 0, as in
    the kernel.
    """
    a = 0
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == LD_W_ABS:
            if k + 4 > len(packet):
                return 0
            a = int.from_bytes(packet[k:k + 4], "big")
        elif code == LD_W_LEN:
            a = len(packet)
        elif code == JEQ_K:
            pc += jt if a == k else jf
        elif code == JGE_K:
            pc += jt if a >= k else jf
        elif code == RET_K:
            return k
        else:
            raise ValueError(f"opcode {code:#x} is not one this module emits")


def accepts(payload: bytes) -> bool:
    """Whether the kernel keeps a datagram (or a GRO train) with this UDP payload."""
    return evaluate(PROGRAM, bytes(UDP_HEADER) + bytes(payload)) != 0


PROGRAM = program()
_CODE = b"".join(_INSN.pack(*insn) for insn in PROGRAM)


def attach(sock: socket.socket) -> None:
    """Attach the filter to `sock` (no privilege needed); from then on the kernel judges each datagram."""
    buf = ctypes.create_string_buffer(_CODE, len(_CODE))
    fprog = struct.pack("@HP", len(PROGRAM), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def socket_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped at `sock` so far: refused by the filter or the receive buffer full."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
    if len(raw) < 4 * (SK_MEMINFO_DROPS + 1):
        return 0  # a kernel without the drops field (before 4.15)
    return struct.unpack_from("=I", raw, 4 * SK_MEMINFO_DROPS)[0]
