"""What tc is told, as command lines: pure functions, no I/O, no state.

The layout on each shaped device (the tunnel device for download, keyed by
destination address; its ifb device for upload, keyed by source address):

    root qdisc htb 1: default 0         unclassified packets (unlimited clients) take
                                        HTB's direct queue: never delayed, never counted
      class 1:X htb rate=ceil=R         one per limited client; X is the client's slot
        qdisc X: bfifo                  its queue, bounded in bytes
      u32 filters, per address family a two-level hash on the address:
        prio 10 ip:   root --hash byte 3--> table 0x10 --hash byte 4--> table 0x100+byte3
                      --> node "match ip dst A/32 classid 1:X"
        prio 11 ipv6: root --byte 15--> table 0x11 --byte 16--> table 0x200+byte15 --> node
    tunnel device: clsact, ingress u32 match-all -> mirred redirect to the ifb   (upload only)

Rules kept here:
- the cost per packet does not grow with the number of clients: two hash
  steps, then the few nodes whose addresses share their last 16 bits (one,
  for pools handed out in order); no list of clients is ever walked;
- a limited client never borrows or lends: its class hangs from the root
  with ceil = rate, so unused bandwidth simply stays unused by it;
- numbers in tc handles and class ids are hexadecimal, as tc reads them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ROOT_MAJOR = 1
FIRST_SLOT, LAST_SLOT = 2, 0xFFFF  # class 1:X and leaf qdisc X:, so X != 1 (the root's major)
MAX_NODE = 0xFFF  # u32 node ids are 12 bits
REDIRECT_PRIO = 1000  # the ingress filter that sends uploads to the ifb: a prio we alone use

# HTB's direct queue (unlimited clients) in packets. On the TUN it never fills
# (the TUN drops rather than stops its queue); on the ifb it absorbs bursts.
DIRECT_QLEN = 1000

# burst: tokens a class may save up. 10 ms of its rate rides over timer and
# scheduling delays without losing rate, yet lets an idle client exceed its
# rate by only 10 ms worth; at least one full-size packet, below which every
# packet would wait for tokens.
BURST_SECONDS = 0.010
MIN_BURST = 1600
# quantum: bytes a class sends per DRR turn among classes that may send at
# once. Our classes never borrow, so it only orders them; one packet per
# turn is the finest interleaving. Given explicitly because HTB's default
# (rate / r2q) is out of range, with a kernel warning, for most rates.
QUANTUM = 1600
# The per-client queue, in bytes: 100 ms of its rate, and never less than
# one 64 KiB packet and four full-size ones, because the TUN and forwarding
# hand over TSO/GRO super-packets whole (HTB does not split them) and a
# queue smaller than one would drop every one of them. This kernel has no
# fq_codel, so the queue is a plain byte FIFO: a loss-based TCP (cubic) at
# 5 Mbit/s fills it, ~115 ms of delay; twice this floor measured ~200 ms with
# the same throughput (bench/shaping_mechanisms.py --congestion cubic).
QUEUE_SECONDS = 0.100
MIN_QUEUE = 65536 + 4 * 1600


@dataclass(frozen=True)
class ClassParams:
    rate_bps: int
    burst: int  # bytes
    quantum: int  # bytes
    queue: int  # bytes


def class_params(rate_bps: int) -> ClassParams:
    if isinstance(rate_bps, bool) or not isinstance(rate_bps, int) or rate_bps <= 0:
        raise ValueError(f"a rate must be a positive number of bits per second, got {rate_bps!r}")
    per_second = rate_bps / 8
    return ClassParams(
        rate_bps=rate_bps,
        burst=max(MIN_BURST, int(per_second * BURST_SECONDS)),
        quantum=QUANTUM,
        queue=max(MIN_QUEUE, int(per_second * QUEUE_SECONDS)),
    )


@dataclass(frozen=True)
class Family:
    proto: str  # tc's protocol name
    prio: int
    match: str  # u32 match selector
    host_bits: int
    l1: int  # htid of the first-level table
    l2_base: int  # htid of a second-level table is l2_base + the byte before last
    word: dict[str, int]  # offset of the 32-bit word that ends with the address, per key

    def offset(self, key: str) -> int:
        return self.word[key]


FAMILIES = {
    4: Family("ip", 10, "ip", 32, 0x10, 0x100, {"src": 12, "dst": 16}),
    6: Family("ipv6", 11, "ip6", 128, 0x11, 0x200, {"src": 20, "dst": 36}),
}


@dataclass(frozen=True)
class Handle:
    """Where one address's u32 node sits: table, bucket (its last byte), node id."""

    htid: int
    bucket: int
    node: int

    def __str__(self) -> str:
        return f"{self.htid:x}:{self.bucket:x}:{self.node:x}"


def bucket_of(address: IPAddress) -> tuple[int, int]:
    """(second-level table id, bucket) of an address: from its last two bytes."""
    packed = address.packed
    return FAMILIES[address.version].l2_base + packed[-2], packed[-1]


def _filter(dev: str, fam: Family) -> str:
    return f"dev {dev} parent {ROOT_MAJOR}: protocol {fam.proto} prio {fam.prio}"


def root(dev: str, key: str) -> list[str]:
    """The root HTB of a shaped device and the first hash level of both families."""
    lines = [f"qdisc add dev {dev} root handle {ROOT_MAJOR}: htb default 0 direct_qlen {DIRECT_QLEN}"]
    for fam in FAMILIES.values():
        lines += [
            f"filter add {_filter(dev, fam)} handle {fam.l1:x}: u32 divisor 256",
            f"filter add {_filter(dev, fam)} u32 match u32 0 0 "
            f"hashkey mask 0x0000ff00 at {fam.offset(key)} link {fam.l1:x}:",
        ]
    return lines


def second_level(dev: str, key: str, version: int, htid: int) -> list[str]:
    """A second-level table, and the link to it from its bucket of the first level."""
    fam = FAMILIES[version]
    return [
        f"filter add {_filter(dev, fam)} handle {htid:x}: u32 divisor 256",
        f"filter add {_filter(dev, fam)} u32 ht {fam.l1:x}:{htid - fam.l2_base:x}: match u32 0 0 "
        f"hashkey mask 0x000000ff at {fam.offset(key)} link {htid:x}:",
    ]


def _class_spec(params: ClassParams) -> str:
    return (f"htb rate {params.rate_bps}bit ceil {params.rate_bps}bit "
            f"burst {params.burst}b cburst {params.burst}b quantum {params.quantum}")


def add_class(dev: str, slot: int, params: ClassParams) -> list[str]:
    return [
        f"class add dev {dev} parent {ROOT_MAJOR}: classid {ROOT_MAJOR}:{slot:x} {_class_spec(params)}",
        f"qdisc add dev {dev} parent {ROOT_MAJOR}:{slot:x} handle {slot:x}: bfifo limit {params.queue}",
    ]


def change_class(dev: str, slot: int, params: ClassParams) -> list[str]:
    """New parameters for a class in place: its queue and counters stay."""
    return [
        f"class change dev {dev} parent {ROOT_MAJOR}: classid {ROOT_MAJOR}:{slot:x} {_class_spec(params)}",
        f"qdisc change dev {dev} parent {ROOT_MAJOR}:{slot:x} handle {slot:x}: bfifo limit {params.queue}",
    ]


def delete_class(dev: str, slot: int) -> list[str]:
    """Its filters must be gone first (HTB refuses to delete a class a filter points to)."""
    return [f"class del dev {dev} classid {ROOT_MAJOR}:{slot:x}"]


def add_filter(dev: str, key: str, address: IPAddress, handle: Handle, slot: int) -> list[str]:
    fam = FAMILIES[address.version]
    return [
        f"filter add {_filter(dev, fam)} handle {handle} u32 ht {handle.htid:x}:{handle.bucket:x}: "
        f"match {fam.match} {key} {address}/{fam.host_bits} classid {ROOT_MAJOR}:{slot:x}"
    ]


def delete_filter(dev: str, version: int, handle: Handle) -> list[str]:
    return [f"filter del {_filter(dev, FAMILIES[version])} handle {handle} u32"]


def ingress_redirect(ifname: str, ifb: str, have_clsact: bool) -> list[str]:
    """Every packet arriving on IFNAME goes through the egress of IFB first."""
    lines = [] if have_clsact else [f"qdisc add dev {ifname} clsact"]
    lines.append(f"filter add dev {ifname} ingress protocol all prio {REDIRECT_PRIO} "
                 f"u32 match u32 0 0 action mirred egress redirect dev {ifb}")
    return lines
