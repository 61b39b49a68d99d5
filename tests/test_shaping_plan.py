"""server/shaping without root: the parameters chosen, and the exact tc commands each call sends.

tc and the ifb device are replaced by recorders (the OS seam); the journal
is real. The same code runs for real in tests/integration/test_shaping_netns.py.
"""

from __future__ import annotations

import ipaddress

import pytest

from server.shaping import ClientLimit, Shaper, ShapingError, ifb_name, plan, shaper as shaper_mod
from tunnel.undo import Journal

MBIT = 1_000_000


class FakeKernel:
    """Records every tc batch and ifb call; can be told to fail the next batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.ifb: list[tuple[str, str]] = []
        self.fail_next = False

    def batch(self, commands):
        if self.fail_next:
            self.fail_next = False
            raise ShapingError("tc failed at `tc ...`: RTNETLINK answers: No such file or directory")
        if commands:
            self.batches.append(list(commands))

    @property
    def last(self) -> list[str]:
        return self.batches[-1]


@pytest.fixture
def kernel(monkeypatch):
    fake = FakeKernel()
    monkeypatch.setattr(shaper_mod.tc, "batch", fake.batch)
    monkeypatch.setattr(shaper_mod.tc, "show", lambda *args: [])  # nothing stale installed
    monkeypatch.setattr(shaper_mod.ifb, "create", lambda name: fake.ifb.append(("create", name)))
    monkeypatch.setattr(shaper_mod.ifb, "delete", lambda name: fake.ifb.append(("delete", name)))
    return fake


@pytest.fixture
def journal(tmp_path):
    return Journal.open(str(tmp_path / "wg0.json"))


# -- parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("bps, burst, queue", [
    (5 * MBIT, 6250, 71936),  # 10 ms of 5 Mbit/s; the queue holds a 64 KiB super-packet and 4 more
    (500_000, 1600, 71936),  # 10 ms would be less than one packet
    (1000 * MBIT, 1_250_000, 12_500_000),  # 100 ms of 1 Gbit/s
])
def test_class_params(bps, burst, queue):
    assert plan.class_params(bps) == plan.ClassParams(bps, burst, plan.QUANTUM, queue)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "5mbit", None])
def test_class_params_refuses_what_is_not_a_positive_bit_rate(bad):
    with pytest.raises(ValueError, match="positive number of bits per second"):
        plan.class_params(bad)


def test_hash_position_is_the_last_two_bytes_of_the_address():
    assert plan.bucket_of(ipaddress.ip_address("10.8.1.7")) == (0x101, 7)
    assert plan.bucket_of(ipaddress.ip_address("fd08::1:2ff")) == (0x202, 0xFF)


def test_ifb_name_is_derived_from_the_interface_within_15_bytes():
    assert ifb_name("wg0") == "ifb4wg0"
    long_a, long_b = "tunnel-office-a", "tunnel-office-b"
    assert len(ifb_name(long_a)) == len(ifb_name(long_b)) == 15
    assert ifb_name(long_a) != ifb_name(long_b)
    assert ifb_name(long_a) == ifb_name(long_a)
    with pytest.raises(ValueError):
        ifb_name("wg0; rm")


# -- the commands ------------------------------------------------------------------------

ROOT_DOWN = [
    "qdisc add dev wg0 root handle 1: htb default 0 direct_qlen 1000",
    "filter add dev wg0 parent 1: protocol ip prio 10 handle 10: u32 divisor 256",
    "filter add dev wg0 parent 1: protocol ip prio 10 u32 match u32 0 0 hashkey mask 0x0000ff00 at 16 link 10:",
    "filter add dev wg0 parent 1: protocol ipv6 prio 11 handle 11: u32 divisor 256",
    "filter add dev wg0 parent 1: protocol ipv6 prio 11 u32 match u32 0 0 hashkey mask 0x0000ff00 at 36 link 11:",
]
ROOT_UP = [line.replace("dev wg0", "dev ifb4wg0").replace("at 16", "at 12").replace("at 36", "at 20")
           for line in ROOT_DOWN]
CLASS_5M = "htb rate 5000000bit ceil 5000000bit burst 6250b cburst 6250b quantum 1600"


def test_first_apply_installs_both_sides_in_one_batch(kernel, journal):
    shaper = Shaper(journal, "wg0")
    clients = {
        "alice": ClientLimit(("10.8.0.2", "fd08::2/128"), 5 * MBIT, 5 * MBIT),
        "bob": ClientLimit(("10.8.0.3",), None, None),  # unlimited: nothing at all
    }
    shaper.apply(clients)
    shaper.apply(dict(clients))  # the same again (a registry pass with no change): nothing to do
    assert kernel.ifb == [("create", "ifb4wg0")]
    assert [s["kind"] for s in journal.steps] == ["shaping.root", "shaping.ifb", "shaping.ingress"]
    assert kernel.batches == [ROOT_DOWN + ROOT_UP + [
        f"class add dev wg0 parent 1: classid 1:2 {CLASS_5M}",
        "qdisc add dev wg0 parent 1:2 handle 2: bfifo limit 71936",
        "filter add dev wg0 parent 1: protocol ip prio 10 handle 100: u32 divisor 256",
        "filter add dev wg0 parent 1: protocol ip prio 10 u32 ht 10:0: match u32 0 0 "
        "hashkey mask 0x000000ff at 16 link 100:",
        "filter add dev wg0 parent 1: protocol ip prio 10 handle 100:2:1 u32 ht 100:2: "
        "match ip dst 10.8.0.2/32 classid 1:2",
        "filter add dev wg0 parent 1: protocol ipv6 prio 11 handle 200: u32 divisor 256",
        "filter add dev wg0 parent 1: protocol ipv6 prio 11 u32 ht 11:0: match u32 0 0 "
        "hashkey mask 0x000000ff at 36 link 200:",
        "filter add dev wg0 parent 1: protocol ipv6 prio 11 handle 200:2:1 u32 ht 200:2: "
        "match ip6 dst fd08::2/128 classid 1:2",
        f"class add dev ifb4wg0 parent 1: classid 1:2 {CLASS_5M}",
        "qdisc add dev ifb4wg0 parent 1:2 handle 2: bfifo limit 71936",
        "filter add dev ifb4wg0 parent 1: protocol ip prio 10 handle 100: u32 divisor 256",
        "filter add dev ifb4wg0 parent 1: protocol ip prio 10 u32 ht 10:0: match u32 0 0 "
        "hashkey mask 0x000000ff at 12 link 100:",
        "filter add dev ifb4wg0 parent 1: protocol ip prio 10 handle 100:2:1 u32 ht 100:2: "
        "match ip src 10.8.0.2/32 classid 1:2",
        "filter add dev ifb4wg0 parent 1: protocol ipv6 prio 11 handle 200: u32 divisor 256",
        "filter add dev ifb4wg0 parent 1: protocol ipv6 prio 11 u32 ht 11:0: match u32 0 0 "
        "hashkey mask 0x000000ff at 20 link 200:",
        "filter add dev ifb4wg0 parent 1: protocol ipv6 prio 11 handle 200:2:1 u32 ht 200:2: "
        "match ip6 src fd08::2/128 classid 1:2",
        "qdisc add dev wg0 clsact",
        "filter add dev wg0 ingress protocol all prio 1000 u32 match u32 0 0 "
        "action mirred egress redirect dev ifb4wg0",
    ]]
    assert shaper.limits() == {"alice": (("10.8.0.2", "fd08::2"), 5 * MBIT, 5 * MBIT)}


def test_changing_adding_and_removing_one_client_touch_that_client_only(kernel, journal):
    shaper = Shaper(journal, "wg0")
    shaper.apply({"a": ClientLimit(("10.8.0.2",), 5 * MBIT, None),
                  "b": ClientLimit(("10.8.0.3",), 5 * MBIT, None)})
    assert kernel.ifb == []  # no upload limit: no ifb, no redirect

    shaper.set_client("a", ClientLimit(("10.8.0.2",), 10 * MBIT, None))
    assert kernel.last == [
        "class change dev wg0 parent 1: classid 1:2 htb rate 10000000bit ceil 10000000bit "
        "burst 12500b cburst 12500b quantum 1600",
        "qdisc change dev wg0 parent 1:2 handle 2: bfifo limit 125000",
    ]
    shaper.set_client("c", ClientLimit(("10.8.0.4",), 1 * MBIT, None))
    assert kernel.last == [
        "class add dev wg0 parent 1: classid 1:4 htb rate 1000000bit ceil 1000000bit "
        "burst 1600b cburst 1600b quantum 1600",
        "qdisc add dev wg0 parent 1:4 handle 4: bfifo limit 71936",
        "filter add dev wg0 parent 1: protocol ip prio 10 handle 100:4:1 u32 ht 100:4: "
        "match ip dst 10.8.0.4/32 classid 1:4",
    ]
    shaper.remove_client("b")
    assert kernel.last == [
        "filter del dev wg0 parent 1: protocol ip prio 10 handle 100:3:1 u32",
        "class del dev wg0 classid 1:3",
    ]
    batches = len(kernel.batches)
    shaper.remove_client("b")  # not limited any more: nothing to do
    shaper.set_client("a", ClientLimit(("10.8.0.2",), 10 * MBIT, None))  # unchanged
    assert len(kernel.batches) == batches
    # the freed slot is reused by the next newcomer
    shaper.set_client("d", ClientLimit(("10.8.1.9",), 1 * MBIT, None))
    assert shaper.slot("d") == 3
    assert kernel.last[-3:] == [
        "filter add dev wg0 parent 1: protocol ip prio 10 handle 101: u32 divisor 256",
        "filter add dev wg0 parent 1: protocol ip prio 10 u32 ht 10:1: match u32 0 0 "
        "hashkey mask 0x000000ff at 16 link 101:",
        "filter add dev wg0 parent 1: protocol ip prio 10 handle 101:9:1 u32 ht 101:9: "
        "match ip dst 10.8.1.9/32 classid 1:3",
    ]


def test_an_address_moving_between_clients_is_deleted_before_it_is_added(kernel, journal):
    shaper = Shaper(journal, "wg0")
    shaper.apply({"a": ClientLimit(("10.8.0.2",), 5 * MBIT, None)})
    shaper.apply({"b": ClientLimit(("10.8.0.2",), 5 * MBIT, None)})
    assert kernel.last == [
        "filter del dev wg0 parent 1: protocol ip prio 10 handle 100:2:1 u32",
        "class del dev wg0 classid 1:2",
        f"class add dev wg0 parent 1: classid 1:2 {CLASS_5M}",
        "qdisc add dev wg0 parent 1:2 handle 2: bfifo limit 71936",
        "filter add dev wg0 parent 1: protocol ip prio 10 handle 100:2:1 u32 ht 100:2: "
        "match ip dst 10.8.0.2/32 classid 1:2",
    ]


def test_addresses_sharing_their_last_16_bits_share_a_bucket(kernel, journal):
    shaper = Shaper(journal, "wg0")
    shaper.apply({"a": ClientLimit(("10.8.0.2",), 5 * MBIT, None),
                  "b": ClientLimit(("10.9.0.2",), 5 * MBIT, None)})
    assert "filter add dev wg0 parent 1: protocol ip prio 10 handle 100:2:2 u32 ht 100:2: " \
           "match ip dst 10.9.0.2/32 classid 1:3" in kernel.last


def test_the_last_upload_limit_gone_removes_the_ifb_and_its_redirect(kernel, journal):
    shaper = Shaper(journal, "wg0")
    shaper.apply({"a": ClientLimit(("10.8.0.2",), None, 2 * MBIT)})
    shaper.apply({})
    assert kernel.ifb == [("create", "ifb4wg0"), ("delete", "ifb4wg0")]
    shaper.apply({"a": ClientLimit(("10.8.0.2",), None, 2 * MBIT)})
    # installed again, but written down once: the journal does not grow with churn
    assert [s["kind"] for s in journal.steps] == ["shaping.ifb", "shaping.ingress"]


@pytest.mark.parametrize("clients, message", [
    ({"a": ClientLimit(("10.8.0.0/24",), MBIT)}, "is a network"),
    ({"a": ClientLimit(("10.8.0.300",), MBIT)}, "bad client address"),
    ({"a": ClientLimit((), MBIT)}, "no address"),
    ({"a": ClientLimit(("10.8.0.2",), 0)}, "positive number"),
    ({"a": ClientLimit(("10.8.0.2",), MBIT), "b": ClientLimit(("10.8.0.2/32",), None, MBIT)}, "both 'a' and 'b'"),
])
def test_bad_input_is_refused_before_anything_changes(kernel, journal, clients, message):
    shaper = Shaper(journal, "wg0")
    with pytest.raises(ValueError, match=message):
        shaper.apply(clients)
    assert kernel.batches == [] and journal.steps == []


def test_after_a_failed_batch_the_next_call_rebuilds_everything(kernel, journal):
    shaper = Shaper(journal, "wg0")
    shaper.apply({"a": ClientLimit(("10.8.0.2",), 5 * MBIT, None)})
    kernel.fail_next = True
    with pytest.raises(ShapingError):
        shaper.set_client("b", ClientLimit(("10.8.0.3",), 5 * MBIT, None))
    shaper.set_client("c", ClientLimit(("10.8.0.4",), 5 * MBIT, None))
    rebuilt = kernel.last
    assert rebuilt[:len(ROOT_DOWN)] == ROOT_DOWN
    assert sum(line.startswith("class add") for line in rebuilt) == 3
    assert len(journal.steps) == 1
