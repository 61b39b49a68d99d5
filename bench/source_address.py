"""Replies from a virtual IP: what IP_PKTINFO would cost the data plane per system call, on loopback.

    .venv/bin/python bench/source_address.py [--count 100000] [--runs 5]

A gateway that holds a VIP must answer from it (a stock client drops anything else). Two ways:

    bound     the UDP sockets bound to the VIP (IP_FREEBIND, ListenAddress: what tunnel server ha
              uses): the same system calls as today, nothing per packet;
    pktinfo   sockets on 0.0.0.0 with IP_PKTINFO: each recvmsg also returns the address the
              datagram was sent to (a second control message to parse), and each send carries it
              back as an in_pktinfo control message (sendto becomes sendmsg).

This measures the second way's extra CPU per call, in this process, single-threaded: receiving
1400-byte datagrams one per recvmsg_into (GRO off: the worst case), sending them one per call, and
sending 40-segment UDP GSO trains. Medians of RUNS interleaved runs, microseconds per call.
(It does not measure what pktinfo would cost beyond the socket: every endpoint the protocol core
keeps, compares and stores would carry a local address too.)

Measurements hold an exclusive flock on /tmp/bench.lock.
"""

from __future__ import annotations

import argparse
import fcntl
import socket
import statistics
import struct
import sys
import time

IP_PKTINFO = 8
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
SIZE, SEGMENTS = 1400, 40
_GRO_SPACE = socket.CMSG_SPACE(4)
_PKTINFO_SPACE = socket.CMSG_SPACE(12)


def _pair(pktinfo: bool):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(SOL_UDP, UDP_GRO, 0)
    if pktinfo:
        rx.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 20)
    tx.bind(("127.0.0.1", 0))
    return rx, tx


def _recv(pktinfo: bool, count: int) -> float:
    """Seconds of CPU per recvmsg_into (as tunnel/udp.py's recv_batch, plus the local address if PKTINFO)."""
    rx, tx = _pair(pktinfo)
    addr = rx.getsockname()
    data = b"\x04" + bytes(SIZE - 1)
    buf = bytearray(65536)
    space = _GRO_SPACE + (_PKTINFO_SPACE if pktinfo else 0)
    spent, done = 0.0, 0
    while done < count:
        batch = min(2000, count - done)
        for _ in range(batch):
            tx.sendto(data, addr)
        start = time.process_time()
        for _ in range(batch):
            nbytes, anc, _, source = rx.recvmsg_into((buf,), space)
            local = None
            for level, kind, value in anc:
                if level == SOL_UDP and kind == UDP_GRO:
                    nbytes = int.from_bytes(value[:4], sys.byteorder)
                elif level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    local = socket.inet_ntoa(value[4:8])  # ipi_spec_dst: the address it was sent to
            if pktinfo:
                endpoint = (source, local)  # what the core would have to keep per peer
                del endpoint
        spent += time.process_time() - start
        done += batch
    rx.close()
    tx.close()
    return spent / count


def _send(pktinfo: bool, count: int, gso: bool) -> float:
    """Seconds of CPU per send call (one datagram, or one GSO train of SEGMENTS)."""
    rx, tx = _pair(False)
    addr = rx.getsockname()
    payload = b"\x04" + bytes(SIZE * (SEGMENTS if gso else 1) - 1)
    cmsgs = []
    if gso:
        cmsgs.append((SOL_UDP, UDP_SEGMENT, struct.pack("=H", SIZE)))
    if pktinfo:  # struct in_pktinfo: ifindex, spec_dst (the source to use), addr
        cmsgs.append((socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, socket.inet_aton("127.0.0.1"), bytes(4))))
    buf = bytearray(65536)
    spent, done = 0.0, 0
    rx.setblocking(False)
    while done < count:
        batch = min(200 if gso else 2000, count - done)
        start = time.process_time()
        if cmsgs:
            for _ in range(batch):
                tx.sendmsg((payload,), cmsgs, 0, addr)
        else:
            for _ in range(batch):
                tx.sendto(payload, addr)
        spent += time.process_time() - start
        done += batch
        try:
            while True:
                rx.recv_into(buf)
        except BlockingIOError:
            pass
    rx.close()
    tx.close()
    return spent / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="calls per measurement")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cases = {
        "recvmsg, 1 datagram": lambda p: _recv(p, args.count),
        "send, 1 datagram": lambda p: _send(p, args.count, False),
        f"send, GSO train of {SEGMENTS}": lambda p: _send(p, args.count // 10, True),
    }
    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = {name: {False: [], True: []} for name in cases}
        for _ in range(args.runs):
            for name, fn in cases.items():
                for pktinfo in (False, True):
                    results[name][pktinfo].append(fn(pktinfo) * 1e6)
    print(f"per call, median of {args.runs} (µs of CPU; loopback, {SIZE}-byte datagrams)")
    print(f"{'call':<28}{'bound (today)':>16}{'pktinfo':>12}{'extra':>10}{'extra %':>10}")
    for name, r in results.items():
        plain, with_info = statistics.median(r[False]), statistics.median(r[True])
        print(f"{name:<28}{plain:>16.2f}{with_info:>12.2f}{with_info - plain:>10.2f}"
              f"{100 * (with_info - plain) / plain:>9.0f}%")


if __name__ == "__main__":
    main()
