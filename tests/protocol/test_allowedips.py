"""AllowedIPs against a naive reference (a linear scan over every prefix) on
seeded random operations, plus hand-written cases for the edges."""

from __future__ import annotations

import ipaddress
import random

import pytest

from tunnel.protocol.allowedips import AllowedIPs


class Peer:
    """Equal to every other Peer and unhashable: the table must go by identity."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, name: str):
        self.name = name

    def __eq__(self, other):
        return isinstance(other, Peer)

    def __repr__(self):
        return f"Peer({self.name})"


# --- hand cases ---------------------------------------------------------------


def test_empty_table_matches_nothing():
    t = AllowedIPs()
    assert t.lookup(bytes(4)) is None
    assert t.lookup(bytes(16)) is None
    assert len(t) == 0


def test_default_routes_are_per_family():
    t = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    t.insert("0.0.0.0/0", a)
    assert t.lookup_ip("1.2.3.4") is a
    assert t.lookup_ip("255.255.255.255") is a
    assert t.lookup_ip("::1") is None
    t.insert("::/0", b)
    assert t.lookup_ip("2001:db8::1") is b
    assert t.lookup_ip("0.0.0.0") is a
    # An IPv4-mapped IPv6 address is IPv6 to WireGuard.
    assert t.lookup_ip("::ffff:1.2.3.4") is b


def test_longest_prefix_wins_among_overlaps():
    t = AllowedIPs()
    p8, p16, p24, p32, p0 = (Peer(n) for n in ("8", "16", "24", "32", "0"))
    t.insert("10.0.0.0/8", p8)
    t.insert("10.1.0.0/16", p16)
    t.insert("10.1.1.0/24", p24)
    t.insert("10.1.1.1/32", p32)
    t.insert("0.0.0.0/0", p0)
    assert t.lookup_ip("10.1.1.1") is p32
    assert t.lookup_ip("10.1.1.2") is p24
    assert t.lookup_ip("10.1.2.1") is p16
    assert t.lookup_ip("10.2.0.0") is p8
    assert t.lookup_ip("11.0.0.0") is p0
    assert t.remove("10.1.1.1/32") is True
    assert t.lookup_ip("10.1.1.1") is p24


def test_host_routes_v6():
    t = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    t.insert("fd00::1/128", a)
    t.insert("fd00::/64", b)
    assert t.lookup_ip("fd00::1") is a
    assert t.lookup_ip("fd00::2") is b
    assert t.lookup_ip("fd00:0:0:1::1") is None


def test_host_bits_are_masked():
    t = AllowedIPs()
    a = Peer("a")
    t.insert("10.1.2.3/8", a)
    assert t.prefixes(a) == ["10.0.0.0/8"]
    assert t.lookup_ip("10.200.0.1") is a
    assert t.remove("10.9.9.9/8") is True
    assert len(t) == 0


def test_reinsert_moves_prefix_to_new_value():
    t = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    t.insert("192.168.0.0/24", a)
    t.insert("192.168.1.0/24", a)
    t.insert("192.168.0.0/24", b)
    assert t.lookup_ip("192.168.0.7") is b
    assert t.prefixes(a) == ["192.168.1.0/24"]
    assert t.prefixes(b) == ["192.168.0.0/24"]
    assert len(t) == 2
    t.insert("192.168.0.0/24", b)  # same owner again: no change
    assert len(t) == 2 and t.prefixes(b) == ["192.168.0.0/24"]


def test_remove_value_and_identity():
    t = AllowedIPs()
    a, twin = Peer("a"), Peer("twin")
    assert a == twin  # equal, yet distinct peers
    t.insert("10.0.0.0/8", a)
    t.insert("fd00::/8", a)
    t.insert("10.1.0.0/16", twin)
    assert t.remove_value(a) == 2
    assert t.remove_value(a) == 0
    assert t.lookup_ip("10.2.0.0") is None
    assert t.lookup_ip("10.1.0.1") is twin
    assert t.prefixes(a) == []
    assert t.prefixes(twin) == ["10.1.0.0/16"]


def test_remove_absent_prefix():
    t = AllowedIPs()
    t.insert("10.0.0.0/8", Peer("a"))
    assert t.remove("10.0.0.0/9") is False
    assert t.remove("::/0") is False
    assert len(t) == 1


def test_prefixes_are_in_stable_order():
    t = AllowedIPs()
    a = Peer("a")
    for p in ["fd00::/8", "192.168.1.0/24", "10.0.0.0/16", "::/0", "10.0.0.0/8", "10.0.0.0/32"]:
        t.insert(p, a)
    assert t.prefixes(a) == [
        "10.0.0.0/8",
        "10.0.0.0/16",
        "10.0.0.0/32",
        "192.168.1.0/24",
        "::/0",
        "fd00::/8",
    ]


def test_accepts_network_objects_and_buffer_slices():
    t = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    t.insert(ipaddress.ip_network("172.16.0.0/12"), a)
    t.insert(ipaddress.IPv6Network("2001:db8::/32"), b)
    # Destination address straight out of an IPv4 header, without copying.
    header = bytearray(20)
    header[16:20] = bytes([172, 20, 1, 1])
    assert t.lookup(memoryview(header)[16:20]) is a
    assert t.lookup(bytes(header[16:20])) is a
    # And out of an IPv6 header (destination at offset 24).
    header6 = bytearray(40)
    header6[24:40] = ipaddress.ip_address("2001:db8::5").packed
    assert t.lookup(memoryview(header6)[24:40]) is b


def test_misuse_raises():
    t = AllowedIPs()
    with pytest.raises(ValueError):
        t.lookup(b"\x00" * 5)
    with pytest.raises(ValueError):
        t.insert("10.0.0.0/33", Peer("a"))
    with pytest.raises(ValueError):
        t.insert("not an address", Peer("a"))
    with pytest.raises(ValueError):
        t.insert("10.0.0.0/8", None)
    with pytest.raises(TypeError):
        t.insert(167772160, Peer("a"))


def test_clear():
    t = AllowedIPs()
    a = Peer("a")
    t.insert("10.0.0.0/8", a)
    t.insert("::/0", a)
    t.clear()
    assert len(t) == 0 and t.prefixes(a) == [] and t.lookup_ip("10.0.0.1") is None


# --- against a naive reference ------------------------------------------------

BITS = {4: 32, 6: 128}


class Reference:
    """Every prefix in one dict; lookup scans them all."""

    def __init__(self):
        self.routes: dict[tuple[int, int, int], object] = {}  # (version, plen, network int)

    @staticmethod
    def key(version, addr, plen):
        bits = BITS[version]
        mask = ((1 << plen) - 1) << (bits - plen)
        return version, plen, addr & mask

    def insert(self, version, addr, plen, value):
        self.routes[self.key(version, addr, plen)] = value

    def remove(self, version, addr, plen):
        return self.routes.pop(self.key(version, addr, plen), None) is not None

    def remove_value(self, value):
        gone = [k for k, v in self.routes.items() if v is value]
        for k in gone:
            del self.routes[k]
        return len(gone)

    def lookup(self, version, addr):
        best, best_len = None, -1
        for (v, plen, net), value in self.routes.items():
            if v == version and plen > best_len and self.key(v, addr, plen)[2] == net:
                best, best_len = value, plen
        return best

    def prefixes(self, value):
        mine = sorted((v, net, plen) for (v, plen, net), val in self.routes.items() if val is value)
        cls = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}
        return [f"{cls[v](net)}/{plen}" for v, net, plen in mine]


def _text(version, addr, plen):
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return f"{cls(addr)}/{plen}"


def _random_prefix(rng, version, bases):
    bits = BITS[version]
    base = rng.choice(bases)
    # Cluster prefix lengths so overlaps are common, with the extremes included.
    plen = rng.choice([0, 1, bits // 4, bits // 2, bits // 2 + 3, bits - 8, bits - 1, bits, rng.randrange(bits + 1)])
    noise = rng.getrandbits(bits - plen) if rng.random() < 0.3 and plen < bits else 0
    return base ^ noise, plen


def _probe_addresses(rng, version, bases):
    bits = BITS[version]
    out = [rng.getrandbits(bits) for _ in range(10)]
    for _ in range(40):
        flip = rng.randrange(bits + 1)
        out.append(rng.choice(bases) ^ (rng.getrandbits(flip) if flip else 0))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_random_operations_match_reference(seed):
    rng = random.Random(seed)
    table, ref = AllowedIPs(), Reference()
    peers = [Peer(str(i)) for i in range(12)]
    bases = {v: [rng.getrandbits(BITS[v]) for _ in range(6)] for v in (4, 6)}
    inserted: list[tuple[int, int, int]] = []
    for step in range(600):
        version = rng.choice((4, 6))
        r = rng.random()
        if r < 0.55 or not inserted:
            addr, plen = _random_prefix(rng, version, bases[version])
            peer = rng.choice(peers)
            table.insert(_text(version, addr, plen), peer)
            ref.insert(version, addr, plen, peer)
            inserted.append((version, addr, plen))
        elif r < 0.70:  # replace the owner of an existing prefix
            v, addr, plen = rng.choice(inserted)
            peer = rng.choice(peers)
            table.insert(_text(v, addr, plen), peer)
            ref.insert(v, addr, plen, peer)
        elif r < 0.85:  # remove a prefix that may or may not still exist
            v, addr, plen = rng.choice(inserted)
            assert table.remove(_text(v, addr, plen)) == ref.remove(v, addr, plen)
        elif r < 0.90:
            addr, plen = _random_prefix(rng, version, bases[version])
            assert table.remove(_text(version, addr, plen)) == ref.remove(version, addr, plen)
        else:
            peer = rng.choice(peers)
            assert table.remove_value(peer) == ref.remove_value(peer)

        if step % 20 == 0:
            for v in (4, 6):
                for addr in _probe_addresses(rng, v, bases[v]):
                    packed = addr.to_bytes(BITS[v] // 8, "big")
                    assert table.lookup(packed) is ref.lookup(v, addr), (seed, step, v, hex(addr))
            assert len(table) == len(ref.routes)
            for peer in peers:
                assert table.prefixes(peer) == ref.prefixes(peer)


def test_fast_prefix_parser_agrees_with_ipaddress():
    import ipaddress
    import random

    from tunnel.protocol.allowedips import _parse, _parse_text

    rnd = random.Random(5)
    samples = ["10.0.0.1/32", "0.0.0.0/0", "255.255.255.255", "fd00::1/128", "::/0", "10.1.2.3/24 ",
               "2001:db8::/32", "::ffff:1.2.3.4/128"]
    for _ in range(2000):
        if rnd.random() < 0.5:
            samples.append(f"{ipaddress.IPv4Address(rnd.getrandbits(32))}/{rnd.randint(0, 32)}")
        else:
            samples.append(f"{ipaddress.IPv6Address(rnd.getrandbits(128))}/{rnd.randint(0, 128)}")
    for text in samples:
        net = ipaddress.ip_network(text.strip(), strict=False)
        expect = (net.version, net.prefixlen, int(net.network_address) >> (net.max_prefixlen - net.prefixlen))
        assert _parse_text(text) == expect, text
        assert _parse(text) == expect
    # Anything unusual is left to ipaddress (and its errors).
    for odd in ["010.0.0.1/32", "1.2.3/8", "1.2.3.4/33", "1.2.3.4/ 8", "fe80::1%eth0/64", "300.1.1.1", "x/1",
                "1.2.3.4/-1"]:
        assert _parse_text(odd) is None, odd
