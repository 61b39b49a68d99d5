"""wg-quick configuration files: every key and form, every error with its line, round trips, strip."""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import ip_address, ip_interface, ip_network

import pytest

from tests.helpers.netns import wireguard_go
from tunnel.config import (
    Config,
    ConfigError,
    InterfaceConfig,
    PeerConfig,
    interface_name_from_path,
    load_config,
    parse_config,
)
from tunnel.protocol.crypto import DH_PUBKEY, clamp, encode_key

PRIV = clamp(bytes([1]) * 32)
PRIV_B64 = encode_key(PRIV)
OWN_PUB_B64 = encode_key(DH_PUBKEY(PRIV))
PUB_A = DH_PUBKEY(clamp(bytes([2]) * 32))
PUB_B = DH_PUBKEY(clamp(bytes([3]) * 32))
PSK = bytes(range(32))
A, B, PSK_B64 = encode_key(PUB_A), encode_key(PUB_B), encode_key(PSK)

FULL = f"""\
# wg0: the office
[Interface]
PrivateKey = {PRIV_B64}
ListenPort = 51820
FwMark = 0x1234
Address = 10.0.0.1/24, fd00::1/64
Address = 10.9.0.1
DNS = 1.1.1.1, 2606:4700::1111 corp.example.com,lan
MTU = 1420
Table = 1234
PreUp = echo pre-up %i
PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE
PostUp = echo second
PreDown = echo pre-down
PostDown = echo post-down
SaveConfig = false

[Peer]
# Name = alice
PublicKey = {A}
PresharedKey = {PSK_B64}
AllowedIPs = 10.0.0.2/32, fd00::2/128
AllowedIPs = 192.168.7.0/24
Endpoint = 198.51.100.7:51820
# FailoverEndpoints = 198.51.100.8:51820, [2001:db8::8]:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {B}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = vpn.example.com:4500
"""


def parse(text: str, **kw) -> Config:
    return parse_config(text, filename="wg0.conf", **kw)


def iface(extra: str = "") -> str:
    return f"[Interface]\nPrivateKey = {PRIV_B64}\n{extra}"


def peer(extra: str = "", key: str = A) -> str:
    return f"\n[Peer]\nPublicKey = {key}\n{extra}"


# --- every key and form --------------------------------------------------------------


def test_full_file():
    c = parse(FULL, name="wg0")
    i = c.interface
    assert c.name == "wg0"
    assert i.private_key == PRIV and i.public_key == DH_PUBKEY(PRIV)
    assert i.listen_port == 51820
    assert i.fwmark == 0x1234
    assert i.addresses == [ip_interface("10.0.0.1/24"), ip_interface("fd00::1/64"), ip_interface("10.9.0.1/32")]
    assert i.dns == [ip_address("1.1.1.1"), ip_address("2606:4700::1111")]
    assert i.dns_search == ["corp.example.com", "lan"]
    assert i.mtu == 1420
    assert i.table == "1234"
    assert i.pre_up == ["echo pre-up %i"]
    assert i.post_up == [
        "iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE",
        "echo second",
    ]
    assert i.pre_down == ["echo pre-down"] and i.post_down == ["echo post-down"]
    assert i.save_config is False
    alice, bob = c.peers
    assert alice.name == "alice" and bob.name is None
    assert alice.public_key == PUB_A and alice.preshared_key == PSK
    assert alice.allowed_ips == [ip_interface("10.0.0.2/32"), ip_interface("fd00::2/128"),
                                 ip_interface("192.168.7.0/24")]
    assert alice.endpoint == ("198.51.100.7", 51820)
    assert alice.persistent_keepalive == 25
    assert bob.preshared_key is None and bob.persistent_keepalive is None
    assert bob.endpoint == ("vpn.example.com", 4500)
    assert bob.allowed_networks() == [ip_network("0.0.0.0/0"), ip_network("::/0")]
    assert c.peer(PUB_B) is bob and c.peer(bytes(32)) is None
    assert c.warnings == []


def test_minimal_file_defaults():
    c = parse(iface())
    i = c.interface
    assert c.peers == [] and c.name is None
    assert (i.listen_port, i.fwmark, i.mtu, i.table) == (None, None, None, None)
    assert i.addresses == i.dns == i.dns_search == i.pre_up == i.post_up == []
    assert i.save_config is False and i.extensions == {}


def test_keys_and_sections_case_insensitive_and_spacing():
    text = (f"[INTERFACE]\nprivatekey={PRIV_B64}\n  LISTENPORT   =  7  \naddress=10.0.0.1/8\n"
            f"[ peer ]\npublickey = {A}\nallowedips=10.0.0.0/8\nENDPOINT=1.2.3.4:5\npersistentkeepalive = OFF\n")
    c = parse(text)
    assert c.interface.listen_port == 7 and c.interface.addresses == [ip_interface("10.0.0.1/8")]
    p = c.peers[0]
    assert p.public_key == PUB_A and p.endpoint == ("1.2.3.4", 5) and p.persistent_keepalive == 0


def test_comments_and_blank_lines():
    text = (f"\n# top\n   # indented\n[Interface] # trailing\n\nPrivateKey = {PRIV_B64} # key\n"
            f"ListenPort = 1 #1\nPostUp = echo a # not part of the command\n"
            f"[Peer]\n\n# just a note\nPublicKey = {A}\n#AllowedIPs = 10.0.0.0/8\n")
    c = parse(text)
    assert c.interface.listen_port == 1
    assert c.interface.post_up == ["echo a"]
    assert c.peers[0].allowed_ips == [] and c.peers[0].name is None


def test_crlf_line_endings():
    c = parse(iface("ListenPort = 9\r\n").replace("\n", "\r\n") + peer().replace("\n", "\r\n"))
    assert c.interface.listen_port == 9 and c.peers[0].public_key == PUB_A


@pytest.mark.parametrize(
    "lines, expected",
    [
        (["Address = 10.0.0.1/24"], ["10.0.0.1/24"]),
        (["Address = 10.0.0.1"], ["10.0.0.1/32"]),
        (["Address = fd00::1"], ["fd00::1/128"]),
        (["Address = 10.0.0.1/24,fd00::1/64"], ["10.0.0.1/24", "fd00::1/64"]),
        (["Address = 10.0.0.1/24 , fd00::1/64 ,10.1.0.1/16"], ["10.0.0.1/24", "fd00::1/64", "10.1.0.1/16"]),
        (["Address = 10.0.0.1/24", "Address = fd00::1/64"], ["10.0.0.1/24", "fd00::1/64"]),
        (["Address ="], []),
    ],
)
def test_address_forms(lines, expected):
    c = parse(iface("\n".join(lines) + "\n"))
    assert c.interface.addresses == [ip_interface(e) for e in expected]


def test_dns_forms():
    c = parse(iface("DNS = 10.0.0.53\nDNS = fd00::53, search.example, 9.9.9.9 other.\n"))
    assert c.interface.dns == [ip_address("10.0.0.53"), ip_address("fd00::53"), ip_address("9.9.9.9")]
    assert c.interface.dns_search == ["search.example", "other."]


@pytest.mark.parametrize("value, expected", [("0", 0), ("off", 0), ("OFF", 0), ("51820", 51820),
                                             ("0x1", 1), ("0xffffffff", 0xFFFFFFFF), ("4294967295", 0xFFFFFFFF)])
def test_fwmark(value, expected):
    assert parse(iface(f"FwMark = {value}\n")).interface.fwmark == expected


@pytest.mark.parametrize("value, expected", [("off", "off"), ("Off", "off"), ("auto", "auto"), ("AUTO", "auto"),
                                             ("0", "0"), ("1234", "1234"), ("0042", "42"), ("main", "main"),
                                             ("vpn_table-2", "vpn_table-2")])
def test_table(value, expected):
    assert parse(iface(f"Table = {value}\n")).interface.table == expected


def test_hooks_keep_order_per_kind():
    c = parse(iface("PostUp = 1\nPreUp = a\nPostUp = 2\nPreDown = x\nPostUp = 3\nPostDown = y\nPostDown = z\n"))
    i = c.interface
    assert (i.pre_up, i.post_up, i.pre_down, i.post_down) == (["a"], ["1", "2", "3"], ["x"], ["y", "z"])


@pytest.mark.parametrize("value, expected", [("true", True), ("TRUE", True), ("false", False), ("False", False)])
def test_save_config_accepted(value, expected):
    c = parse(iface(f"SaveConfig = {value}\n"))
    assert c.interface.save_config is expected
    assert c.warnings == (["wg0.conf:3: SaveConfig is not supported; the file is never rewritten"] if expected else [])


def test_mtu_bounds():
    assert parse(iface("MTU = 576\n")).interface.mtu == 576
    assert parse(iface("MTU = 65535\n")).interface.mtu == 65535
    assert parse(iface("Address = fd00::1/64\nMTU = 1280\n")).interface.mtu == 1280


def test_listen_port_bounds():
    assert parse(iface("ListenPort = 0\n")).interface.listen_port == 0
    assert parse(iface("ListenPort = 65535\n")).interface.listen_port == 65535


def test_allowed_ips_forms_and_host_bits():
    c = parse(iface() + peer("AllowedIPs = 10.0.0.5/24,fd00::1:2/64\nAllowedIPs = 10.1.1.1\nAllowedIPs = fd01::1\n"
                             "AllowedIPs = 10.0.0.0/24\nAllowedIPs =\n"))
    p = c.peers[0]
    # Kept as written (showconf and to_text give back what the user wrote) ...
    assert [str(a) for a in p.allowed_ips] == ["10.0.0.5/24", "fd00::1:2/64", "10.1.1.1/32", "fd01::1/128",
                                               "10.0.0.0/24"]
    # ... normalised, without duplicates, for routing.
    assert p.allowed_networks() == [ip_network("10.0.0.0/24"), ip_network("fd00::/64"), ip_network("10.1.1.1/32"),
                                    ip_network("fd01::1/128")]
    assert c.warnings == [
        "wg0.conf:6: AllowedIPs: 10.0.0.5/24 has host bits set; it routes 10.0.0.0/24",
        "wg0.conf:6: AllowedIPs: fd00::1:2/64 has host bits set; it routes fd00::/64",
    ]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1.2.3.4:51820", ("1.2.3.4", 51820)),
        ("[::1]:51820", ("::1", 51820)),
        ("[2001:db8::7]:1", ("2001:db8::7", 1)),
        ("[fe80::1%eth0]:51820", ("fe80::1%eth0", 51820)),
        ("vpn.example.com:51820", ("vpn.example.com", 51820)),
        ("vpn.example.com.:65535", ("vpn.example.com.", 65535)),
        ("localhost:9", ("localhost", 9)),
        ("my_host-1:9", ("my_host-1", 9)),
    ],
)
def test_endpoint_forms(value, expected):
    assert parse(iface() + peer(f"Endpoint = {value}\n")).peers[0].endpoint == expected


@pytest.mark.parametrize("value, expected", [("0", 0), ("off", 0), ("Off", 0), ("1", 1), ("65535", 65535)])
def test_persistent_keepalive(value, expected):
    assert parse(iface() + peer(f"PersistentKeepalive = {value}\n")).peers[0].persistent_keepalive == expected


def test_peer_name_comment():
    text = iface() + f"\n[Peer]\n#Name=bob smith\nPublicKey = {A}\n[Peer]\nPublicKey = {B}\n  # name =  carol  \n"
    c = parse(text)
    assert [p.name for p in c.peers] == ["bob smith", "carol"]


def test_name_comment_outside_peer_is_just_a_comment():
    c = parse("# Name = nobody\n" + iface("# Name = the server\n"))
    assert c.interface.extensions == {} and c.peers == []


def test_failover_endpoints_comment():
    c = parse(iface() + peer("Endpoint = vpn1.example.com:51820\n# FailoverEndpoints = 192.0.2.2:51820,"
                             " [2001:db8::2]:4500\n#failoverendpoints=vpn3.example.com:1 192.0.2.2:51820\n"))
    p = c.peers[0]
    assert p.failover_endpoints == [("192.0.2.2", 51820), ("2001:db8::2", 4500), ("vpn3.example.com", 1),
                                    ("192.0.2.2", 51820)]
    assert p.endpoints() == [("vpn1.example.com", 51820), ("192.0.2.2", 51820), ("2001:db8::2", 4500),
                             ("vpn3.example.com", 1)]
    assert PeerConfig(public_key=PUB_A).endpoints() == []
    text = c.to_text()
    assert "Endpoint = vpn1.example.com:51820\n# FailoverEndpoints = 192.0.2.2:51820, [2001:db8::2]:4500," in text
    assert parse(text) == c


def test_failover_endpoints_comment_outside_a_peer_is_just_a_comment():
    c = parse("# FailoverEndpoints = nonsense\n" + iface("# FailoverEndpoints = 1.2.3.4:5\n"))
    assert c.peers == []


@pytest.mark.parametrize("extra, line, message", [
    ("Endpoint = 192.0.2.1:1\n# FailoverEndpoints = 192.0.2.2\n", 7, "FailoverEndpoints: '192.0.2.2' has no port"),
    ("Endpoint = 192.0.2.1:1\n# FailoverEndpoints = 2001:db8::1:5\n", 7, "write an IPv6 endpoint as [address]:port"),
    ("# FailoverEndpoints = 192.0.2.2:1\n", 6, "FailoverEndpoints needs an Endpoint in the same [Peer]"),
])
def test_failover_endpoints_errors(extra, line, message):
    with pytest.raises(ConfigError) as e:
        parse(iface() + peer(extra))
    assert e.value.line == line and message in e.value.message


def test_later_scalar_value_wins_as_in_wg_quick():
    c = parse(iface("ListenPort = 1\nListenPort = 2\nMTU = 1400\nMTU = 1500\n") +
              peer("Endpoint = 1.1.1.1:1\nEndpoint = 2.2.2.2:2\n"))
    assert c.interface.listen_port == 2 and c.interface.mtu == 1500
    assert c.peers[0].endpoint == ("2.2.2.2", 2)


def test_second_interface_section_merges():
    c = parse(iface("Address = 10.0.0.1/24\n") + peer() + "[Interface]\nAddress = 10.0.1.1/24\n")
    assert c.interface.addresses == [ip_interface("10.0.0.1/24"), ip_interface("10.0.1.1/24")]


def test_secrets_not_in_repr():
    c = parse(FULL)
    assert PRIV_B64 not in repr(c) and repr(PRIV) not in repr(c) and repr(PSK) not in repr(c)


# --- extensions ---------------------------------------------------------------------


def test_unknown_key_is_an_error_naming_the_line():
    with pytest.raises(ConfigError) as e:
        parse(iface("Killswitsh = on\n"))
    assert str(e.value) == "wg0.conf:3: unknown key 'Killswitsh' in [Interface]"
    assert (e.value.filename, e.value.line) == ("wg0.conf", 3)


def test_extension_keys_are_accepted_kept_and_stripped(monkeypatch):
    monkeypatch.setattr(InterfaceConfig, "EXTENSION_KEYS", {"killswitch": "KillSwitch",
                                                            "metricsaddress": "MetricsAddress"})
    monkeypatch.setattr(PeerConfig, "EXTENSION_KEYS", {"quota": "Quota"})
    c = parse(iface("killswitch = on\nMetricsAddress = 127.0.0.1:9586\nMetricsAddress = [::1]:9586\n")
              + peer("QUOTA = 10G\n"))
    assert c.interface.extensions == {"KillSwitch": ["on"], "MetricsAddress": ["127.0.0.1:9586", "[::1]:9586"]}
    assert c.interface.extension("KillSwitch") == "on"
    assert c.interface.extension("MetricsAddress") == "[::1]:9586"
    assert c.interface.extension("Absent") is None
    assert c.peers[0].extension("Quota") == "10G"
    text = c.to_text()
    assert "KillSwitch = on\n" in text and "Quota = 10G\n" in text
    assert parse(text) == c
    stripped = c.to_setconf_text()
    assert "KillSwitch" not in stripped and "Metrics" not in stripped and "Quota" not in stripped
    # An interface extension is still unknown in a [Peer], and the other way round.
    with pytest.raises(ConfigError, match=r":6: unknown key 'KillSwitch' in \[Peer\]"):
        parse(iface() + peer("KillSwitch = on\n"))


# --- errors, each with its line ------------------------------------------------------

ERRORS = [
    # (text, line, message)
    (iface("Address = 10.0.0.300/24\n"), 3, "Address: '10.0.0.300/24' is not an IP address with optional /prefix"),
    (iface("Address = 10.0.0.1/33\n"), 3, "Address: '10.0.0.1/33' is not an IP address with optional /prefix"),
    (iface("Address = 10.0.0.1/255.0.0.0\n"), 3,
     "Address: '10.0.0.1/255.0.0.0' is not an IP address with optional /prefix"),
    (iface("Address = fd00::1/129\n"), 3, "Address: 'fd00::1/129' is not an IP address with optional /prefix"),
    (iface("DNS = 10.0.0.300\n"), 3, "DNS: '10.0.0.300' is not an IP address"),
    (iface("DNS = fd00::zz\n"), 3, "DNS: 'fd00::zz' is not an IP address"),
    (iface("DNS = bad_domain!\n"), 3, "DNS: 'bad_domain!' is neither an IP address nor a search domain"),
    (iface("ListenPort = 65536\n"), 3, "ListenPort: '65536' is not a port (0-65535)"),
    (iface("ListenPort = -1\n"), 3, "ListenPort: '-1' is not a port (0-65535)"),
    (iface("ListenPort = http\n"), 3, "ListenPort: 'http' is not a port (0-65535)"),
    (iface("ListenPort =\n"), 3, "ListenPort: empty value"),
    (iface("FwMark = 0x100000000\n"), 3, "FwMark: '0x100000000' is neither off nor a number 0-0xffffffff"),
    (iface("FwMark = on\n"), 3, "FwMark: 'on' is neither off nor a number 0-0xffffffff"),
    (iface("FwMark = 0xg\n"), 3, "FwMark: '0xg' is neither off nor a number 0-0xffffffff"),
    (iface("FwMark = -1\n"), 3, "FwMark: '-1' is neither off nor a number 0-0xffffffff"),
    (iface("MTU = 575\n"), 3, "MTU 575 is out of range 576-65535"),
    (iface("MTU = 65536\n"), 3, "MTU 65536 is out of range 576-65535"),
    (iface("MTU = 1279\nAddress = fd00::1/64\n"), 3,
     "MTU 1279 is out of range 1280-65535 (an IPv6 Address needs at least 1280)"),
    (iface("MTU = big\n"), 3, "MTU: 'big' is not a number"),
    (iface("Table = two words\n"), 3, "Table: 'two words' is neither off, auto, a number nor a table name"),
    (iface("Table = 4294967296\n"), 3, "Table: '4294967296' is not a table number"),
    (iface("SaveConfig = yes\n"), 3, "SaveConfig: 'yes' is neither true nor false"),
    (iface(peer("AllowedIPs = 10.0.0.300/32\n")), 6, "AllowedIPs: '10.0.0.300/32' is not an IP network"),
    (iface(peer("AllowedIPs = 10.0.0.0/8, 10.0.0.1/x\n")), 6, "AllowedIPs: '10.0.0.1/x' is not an IP network"),
    (iface(peer("AllowedIPs = 10.0.0.0/-1\n")), 6, "AllowedIPs: '10.0.0.0/-1' is not an IP network"),
    (iface(peer("AllowedIPs = fe80::1%eth0/128\n")), 6, "AllowedIPs: 'fe80::1%eth0/128' is not an IP network"),
    (iface(peer("Endpoint = 1.2.3.4\n")), 6, "Endpoint: '1.2.3.4' has no port"),
    (iface(peer("Endpoint = 1.2.3.4:0\n")), 6, "Endpoint: '1.2.3.4:0': '0' is not a port (1-65535)"),
    (iface(peer("Endpoint = 1.2.3.4:65536\n")), 6, "Endpoint: '1.2.3.4:65536': '65536' is not a port (1-65535)"),
    (iface(peer("Endpoint = 1.2.3.4:\n")), 6, "Endpoint: '1.2.3.4:': '' is not a port (1-65535)"),
    (iface(peer("Endpoint = ::1:51820\n")), 6, "Endpoint: '::1:51820': write an IPv6 endpoint as [address]:port"),
    (iface(peer("Endpoint = [::1:51820\n")), 6, "Endpoint: '[::1:51820' has no closing ']'"),
    (iface(peer("Endpoint = [::1]51820\n")), 6, "Endpoint: '[::1]51820' has no port"),
    (iface(peer("Endpoint = [vpn.example.com]:1\n")), 6,
     "Endpoint: '[vpn.example.com]:1': 'vpn.example.com' is not an IPv6 address"),
    (iface(peer("Endpoint = 1.2.3.400:1\n")), 6, "Endpoint: '1.2.3.400:1': '1.2.3.400' is not an IPv4 address"),
    (iface(peer("Endpoint = bad!host:1\n")), 6,
     "Endpoint: 'bad!host:1': 'bad!host' is neither an IP address nor a host name"),
    (iface(peer("Endpoint = :1\n")), 6, "Endpoint: ':1': '' is neither an IP address nor a host name"),
    (iface(peer("PersistentKeepalive = 65536\n")), 6,
     "PersistentKeepalive: '65536' is not off or a number of seconds 0-65535"),
    (iface(peer("PersistentKeepalive = -5\n")), 6,
     "PersistentKeepalive: '-5' is not off or a number of seconds 0-65535"),
    (iface(peer(f"PublicKey = {B}\n")), 6, "PublicKey given twice in one [Peer] (is a [Peer] line missing?)"),
    (iface(peer() + peer("", key=B) + peer("", key=A)), 11, "PublicKey is the same as the peer's at line 5"),
    (iface(peer("", key=OWN_PUB_B64)), 5, "PublicKey is the interface's own public key"),
    (iface() + "\n[Peer]\nAllowedIPs = 10.0.0.0/8\n", 4, "[Peer] has no PublicKey"),
    (iface() + peer() + "\n[Peer]\n# Name = x\n", 7, "[Peer] has no PublicKey"),
    (f"ListenPort = 1\n{iface()}", 1, "ListenPort comes before any [Interface] or [Peer] section"),
    (iface("[Peers]\n"), 3, "unknown section '[Peers]'; expected [Interface] or [Peer]"),
    (iface("ListenPort 51820\n"), 3, "expected 'Key = Value', [Interface] or [Peer]"),
    (iface("= 1\n"), 3, "expected 'Key = Value', [Interface] or [Peer]"),
    (iface("PublicKey = x\n"), 3, "PublicKey belongs in [Peer], not in [Interface]"),
    (iface(peer("listenport = 1\n")), 6, "ListenPort belongs in [Interface], not in [Peer]"),
    (iface(peer("Foo = bar\n")), 6, "unknown key 'Foo' in [Peer]"),
    (iface("Allowed IPs = 10.0.0.0/8\n"), 3, "unknown key 'Allowed IPs' in [Interface]"),
    (iface(peer("Endpoint =\n")), 6, "Endpoint: empty value"),
]


@pytest.mark.parametrize("text, line, message", ERRORS, ids=[m for _t, _l, m in ERRORS])
def test_errors_name_file_line_and_problem(text, line, message):
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert (e.value.line, e.value.message) == (line, message)
    assert str(e.value) == f"wg0.conf:{line}: {message}"


def test_missing_private_key_names_the_file():
    with pytest.raises(ConfigError) as e:
        parse("[Interface]\nListenPort = 1\n" + peer())
    assert str(e.value) == "wg0.conf: [Interface] has no PrivateKey" and e.value.line is None
    with pytest.raises(ConfigError, match="has no PrivateKey"):
        parse("")


BAD_KEYS = [
    "AAAA",  # too short
    encode_key(bytes(31)),  # 31 bytes
    encode_key(bytes(33)),  # 33 bytes
    PRIV_B64[:-1],  # padding lost
    PRIV_B64[:-2] + "!=",  # outside the alphabet
]


@pytest.mark.parametrize("bad", BAD_KEYS)
@pytest.mark.parametrize(
    "template, line, key",
    [
        ("[Interface]\nPrivateKey = {bad}\n", 2, "PrivateKey"),
        (iface() + "[Peer]\nPublicKey = {bad}\n", 4, "PublicKey"),
        (iface() + peer("PresharedKey = {bad}\n"), 6, "PresharedKey"),
    ],
)
def test_bad_keys_are_described_never_echoed(template, line, key, bad):
    with pytest.raises(ConfigError) as e:
        parse(template.format(bad=bad))
    assert str(e.value) == f"wg0.conf:{line}: {key} is not a valid base64 32-byte key"
    assert bad not in str(e.value)


def test_no_key_material_in_any_message():
    # A private key pasted on a line of its own, or into the wrong section.
    for text in (iface(PRIV_B64 + "\n"), iface(peer(f"PrivateKey = {PRIV_B64}\n")), iface(peer(A[:10]))):
        with pytest.raises(ConfigError) as e:
            parse(text)
        assert PRIV_B64 not in str(e.value) and A[:10] not in str(e.value)


# --- round trip, strip ----------------------------------------------------------------


def test_round_trip_full():
    c = parse(FULL, name="wg0")
    text = c.to_text()
    again = parse(text, name="wg0")
    assert again == c
    assert again.to_text() == text  # the writer's output is a fixed point


def test_round_trip_every_optional_form():
    c = parse(iface("FwMark = off\nTable = auto\nSaveConfig = true\nDNS = only.search\nAddress = fd00::1/64\n")
              + peer("Endpoint = [2001:db8::1]:1\nPersistentKeepalive = off\nAllowedIPs = 10.0.0.1/8\n")
              + peer("Endpoint = 10.0.0.1:2\nPersistentKeepalive = 0\n", key=B))
    text = c.to_text()
    assert "FwMark = off\n" in text and "Endpoint = [2001:db8::1]:1\n" in text
    assert "PersistentKeepalive = off\n" in text and "SaveConfig = true\n" in text
    assert parse(text) == c


def test_to_text_of_a_built_config():
    c = Config(
        interface=InterfaceConfig(private_key=PRIV, listen_port=51820, addresses=[ip_interface("10.0.0.1/24")]),
        peers=[PeerConfig(public_key=PUB_A, allowed_ips=[ip_interface("10.0.0.2/32")], name="alice",
                          endpoint=("vpn.example.com", 51820))],
    )
    assert c.to_text() == (
        f"[Interface]\nPrivateKey = {PRIV_B64}\nListenPort = 51820\nAddress = 10.0.0.1/24\n\n"
        f"[Peer]\n# Name = alice\nPublicKey = {A}\nAllowedIPs = 10.0.0.2/32\nEndpoint = vpn.example.com:51820\n"
    )
    assert parse(c.to_text()) == c


@pytest.mark.parametrize("bad", ["echo a # b", "echo a\nrm -rf /", "x\ry"])
def test_to_text_refuses_values_that_would_not_read_back(bad):
    c = Config(interface=InterfaceConfig(private_key=PRIV, post_up=[bad]))
    with pytest.raises(ValueError, match="PostUp"):
        c.to_text()
    c = Config(interface=InterfaceConfig(private_key=PRIV), peers=[PeerConfig(public_key=PUB_A, name=bad)])
    with pytest.raises(ValueError, match="Name"):
        c.to_text()


def test_strip_keeps_only_the_setconf_subset():
    c = parse(FULL, name="wg0")
    s = c.strip_wg_quick()
    assert s.name == "wg0"
    assert s.interface == InterfaceConfig(private_key=PRIV, listen_port=51820, fwmark=0x1234)
    assert [p.public_key for p in s.peers] == [PUB_A, PUB_B]
    assert s.peers[0] == PeerConfig(public_key=PUB_A, preshared_key=PSK, allowed_ips=c.peers[0].allowed_ips,
                                    endpoint=("198.51.100.7", 51820), persistent_keepalive=25)
    assert c.interface.addresses  # the original is untouched
    text = c.to_setconf_text()
    assert text == s.to_text()
    assert text == (
        f"[Interface]\nPrivateKey = {PRIV_B64}\nListenPort = 51820\nFwMark = 0x1234\n\n"
        f"[Peer]\nPublicKey = {A}\nPresharedKey = {PSK_B64}\n"
        f"AllowedIPs = 10.0.0.2/32, fd00::2/128, 192.168.7.0/24\nEndpoint = 198.51.100.7:51820\n"
        f"PersistentKeepalive = 25\n\n"
        f"[Peer]\nPublicKey = {B}\nAllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = vpn.example.com:4500\n"
    )
    # Only keys wg(8) knows remain.
    wg_keys = {"PrivateKey", "ListenPort", "FwMark", "PublicKey", "PresharedKey", "AllowedIPs", "Endpoint",
               "PersistentKeepalive"}
    keys = {line.split(" = ")[0] for line in text.splitlines() if " = " in line}
    assert keys <= wg_keys
    assert parse(text, name="wg0") == s


@pytest.mark.skipif(shutil.which("wg-quick") is None or os.geteuid() != 0,
                    reason="needs wg-quick and root (wg-quick strip re-executes itself through sudo)")
def test_strip_agrees_with_real_wg_quick(tmp_path):
    path = tmp_path / "wgcfgtest0.conf"
    path.write_text(FULL.replace("SaveConfig = false\n", ""))
    os.chmod(path, 0o600)
    out = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True, check=True).stdout
    ours = load_config(path).strip_wg_quick()
    theirs = parse(out, name="wgcfgtest0")
    # wg-quick keeps comments, so our `# Name` and `# FailoverEndpoints` lines survive its strip; wg ignores them.
    assert [p.name for p in theirs.peers] == ["alice", None]
    assert theirs.peers[0].failover_endpoints == [("198.51.100.8", 51820), ("2001:db8::8", 51820)]
    for p in theirs.peers:
        p.name = None
        p.failover_endpoints = []
    assert theirs == ours


# --- files --------------------------------------------------------------------------


def write(path, text: str, mode: int = 0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_load_config(tmp_path):
    p = write(tmp_path / "wg0.conf", FULL)
    c = load_config(p)
    assert c.name == "wg0" and c == parse(FULL, name="wg0")


def test_load_refuses_readable_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "wg0.conf", FULL, 0o644)
    with pytest.raises(ConfigError) as e:
        load_config("wg0.conf")
    assert str(e.value) == "wg0.conf is readable by others (mode 0644): chmod 600 wg0.conf"
    assert PRIV_B64 not in str(e.value)


def test_load_refuses_group_writable_file(tmp_path):
    p = write(tmp_path / "wg0.conf", FULL, 0o620)
    with pytest.raises(ConfigError, match=r"writable by others \(mode 0620\): chmod 600"):
        load_config(p)


def test_load_errors_name_the_path(tmp_path):
    p = write(tmp_path / "wg1.conf", iface("MTU = 10\n"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}:3: MTU 10 is out of range 576-65535"


def test_load_missing_and_undecodable(tmp_path):
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_config(tmp_path / "wg0.conf")
    p = tmp_path / "wg2.conf"
    p.write_bytes(iface().encode() + b"# caf\xe9\n")
    os.chmod(p, 0o600)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert (e.value.line, e.value.message) == (3, "not UTF-8 text")


@pytest.mark.parametrize("path, name", [("wg0.conf", "wg0"), ("/etc/wireguard/wgvpn0.conf", "wgvpn0"),
                                        ("a_b=c+d.e-f.conf", "a_b=c+d.e-f"), ("x" * 15 + ".conf", "x" * 15)])
def test_interface_name_from_path(path, name):
    assert interface_name_from_path(path) == name


@pytest.mark.parametrize("path", ["x" * 16 + ".conf", "wg 0.conf", "wg0.txt", "wg0", ".conf",
                                  "wg\u00e9.conf", "wg0.conf.bak"])
def test_bad_interface_names(path):
    with pytest.raises(ConfigError, match="must be an interface name"):
        interface_name_from_path(path)


def test_load_checks_name_before_reading(tmp_path):
    p = write(tmp_path / "wg0.config", FULL)
    with pytest.raises(ConfigError, match="followed by .conf"):
        load_config(p)


# --- the real wg(8) accepts what we strip ----------------------------------------------


@pytest.mark.netns
def test_real_wg_setconf_accepts_stripped_file(netns_factory):
    """`wg setconf` on a wireguard-go device takes our stripped file; `wg showconf` reads back the same."""
    topo = netns_factory("tcf")
    ns = topo.netns("a")
    ifname = topo.unique_ifname("tcf")
    wireguard_go(ns, ifname, PRIV_B64, 40001)
    # Host names would need DNS inside the namespace: use addresses here.
    c = parse(FULL.replace("vpn.example.com:4500", "[2001:db8::9]:4500"))
    ns.run(["wg", "setconf", ifname, "/dev/stdin"], input=c.to_setconf_text())
    shown = parse(ns.run(["wg", "showconf", ifname]).stdout)
    mine = c.strip_wg_quick()
    assert shown.interface == mine.interface
    assert len(shown.peers) == len(mine.peers)
    for p in mine.peers:
        q = shown.peer(p.public_key)
        assert q is not None
        assert (q.preshared_key, q.endpoint) == (p.preshared_key, p.endpoint)
        assert q.persistent_keepalive == (p.persistent_keepalive or None)  # showconf omits "off"
        assert sorted(q.allowed_networks(), key=str) == sorted(p.allowed_networks(), key=str)
