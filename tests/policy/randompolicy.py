"""Seeded random policies, clients and packets, and a naive reference for what a policy means.

The reference reads the policy as plain JSON data and the clients as plain
tuples, with its own tiny parser: it shares no code with server/policy, so
agreement with `decide` and with the compiled sets means something.
"""

from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import dataclass

from server.policy import ClientRef, GatewayContext

GATEWAY = GatewayContext.make(["10.8.0.1/24", "fd08::1/64"], ["10.8.0.1"], ["tcp/8443"])
PORTS = [0, 21, 22, 23, 53, 79, 80, 81, 443, 5432, 8000, 8050, 8100, 8101, 8443, 65535]


@dataclass
class Scenario:
    data: dict
    clients: list[ClientRef]
    pool: list[str] | None = None  # destination addresses worth trying

    @property
    def text(self) -> str:
        return json.dumps(self.data, indent=1)


def random_scenario(rng: random.Random) -> Scenario:
    hosts = {}
    for i in range(rng.randint(0, 4)):
        if rng.random() < 0.7:
            plen = rng.choice([24, 28, 30, 32, 32])
            net = ipaddress.ip_network(f"10.1.{rng.randint(0, 2)}.{rng.randint(0, 255)}/{plen}", strict=False)
        else:
            plen = rng.choice([64, 120, 128])
            net = ipaddress.ip_network(f"fd01::{rng.randint(0, 3):x}:{rng.randint(0, 255):x}/{plen}", strict=False)
        hosts[f"h{i}"] = str(net.network_address) if net.num_addresses == 1 else str(net)
    clients = []
    for i in range(rng.randint(1, 7)):
        addrs = [f"10.8.0.{i + 2}"] + ([f"fd08::{i + 2:x}"] if rng.random() < 0.5 else [])
        if rng.random() < 0.1:
            addrs.append(f"10.9.{i}.0/24")  # a routed subnet
        groups = frozenset(f"g{g}" for g in range(4) if rng.random() < 0.35)
        clients.append(ClientRef(f"c{i}", addrs, groups, admitted=rng.random() < 0.9))
    names = [c.name for c in clients]
    data: dict = {"hosts": hosts}
    if rng.random() < 0.4:
        data["groups"] = {"group:g4": rng.sample(names, rng.randint(0, len(names)))}
    groups = [f"group:g{g}" for g in range(5)]
    acls = []
    for _ in range(rng.randint(0, 8)):
        proto = rng.choice([None, None, "tcp", "udp", "icmp"])
        src = [rng.choice(["*"] + groups + names) for _ in range(rng.randint(1, 2))]
        dst = []
        for _ in range(rng.randint(1, 3)):
            host = rng.choice(["*", "lit", "lit6", "name", "client", "group"])
            host = {
                "lit": f"10.1.{rng.randint(0, 2)}.{rng.choice([0, 5, 64, 128])}/{rng.choice([24, 25, 26, 32])}",
                "lit6": f"[fd01::{rng.randint(0, 3):x}:0/{rng.choice([112, 120, 128])}]",
                "name": rng.choice(list(hosts) or ["*"]),
                "client": rng.choice(names),
                "group": rng.choice(groups),
            }.get(host, host)
            if host.startswith("10.1.") and host.endswith("/32"):
                host = host[:-3]
            else:  # host bits are an error: make literals proper networks
                if host.startswith("10.1."):
                    host = str(ipaddress.ip_network(host, strict=False))
                elif host.startswith("[fd01"):
                    host = f"[{ipaddress.ip_network(host[1:-1], strict=False)}]"
            if proto == "icmp":
                ports = "*"
            else:
                ports = rng.choice(["*", "22", "80,443", "8000-8100", "53",
                                    f"{rng.randint(0, 90)}-{rng.randint(90, 600)}", "21,22,23,8443"])
            dst.append(f"{host}:{ports}")
        rule = {"action": "accept", "src": src, "dst": dst}
        if proto:
            rule["proto"] = proto
        acls.append(rule)
    data["acls"] = acls
    if rng.random() < 0.5:
        data["dns"] = {rng.choice(groups + names): rng.sample(["10.1.0.53", "10.8.0.1", "fd01::53"], rng.randint(1, 2))}
    return Scenario(data, clients)


def random_packet(rng: random.Random, sc: Scenario) -> tuple[str | None, str, int | None, str]:
    names = [c.name for c in sc.clients]
    src = rng.choice(names + [None]) if rng.random() < 0.1 else rng.choice(names)
    if sc.pool is None:
        sc.pool = ["10.8.0.1", "fd08::1", "10.1.0.53", "fd01::53", "8.8.8.8", "224.0.0.5", "255.255.255.255",
                   "ff02::1"]
        for h in sc.data["hosts"].values():
            net = ipaddress.ip_network(h)
            sc.pool += [str(net.network_address), str(net.broadcast_address),
                        str(net.network_address + rng.randrange(net.num_addresses))]
        for c in sc.clients:
            sc.pool += [a.split("/")[0] for a in c.addresses]
    pool = sc.pool + [f"10.1.{rng.randint(0, 2)}.{rng.randint(0, 255)}",
                      f"fd01::{rng.randint(0, 3):x}:{rng.randint(0, 300):x}",
             f"10.9.{rng.randint(0, 7)}.{rng.randint(0, 255)}"]
    proto = rng.choice(["tcp", "udp", "icmp"])
    port = None if proto == "icmp" else (rng.choice(PORTS) if rng.random() < 0.8 else rng.randint(0, 65535))
    return src, rng.choice(pool), port, proto


# -- the reference ---------------------------------------------------------------


def reference(sc: Scenario, src: str | None, dst: str, port: int | None, proto: str,
              gw: GatewayContext = GATEWAY) -> tuple[bool, int | None]:
    """(accepted, index of the deciding rule or None), straight from the data."""
    addr = ipaddress.ip_address(dst)
    dns53 = proto in ("tcp", "udp") and port == 53
    if addr.is_multicast or addr in ipaddress.ip_network("240.0.0.0/4"):
        return False, None
    if addr in gw.addresses and any(s.proto == proto and s.port == port for s in gw.local_services):
        return True, None
    clients = {c.name: c for c in sc.clients}
    client = clients.get(src) if src else None
    if client is None or not client.admitted:
        return (dns53 and addr in gw.dns_servers), None
    file_groups = sc.data.get("groups", {})
    groups = {"group:" + g for g in client.groups} | {g for g, m in file_groups.items() if client.name in m}

    def members(group: str) -> list:
        return [c for c in sc.clients if group in ({"group:" + g for g in c.groups}
                                                   | {g for g, m in file_groups.items() if c.name in m})]

    if dns53:
        dns = sc.data.get("dns", {})
        own = None
        if client.name in dns:
            own = dns[client.name]
        elif any(k in groups for k in dns):
            own = [s for k, v in dns.items() if k in groups for s in v]
        if own is not None:
            return addr in {ipaddress.ip_address(s) for s in own}, None
        if addr in gw.dns_servers:
            return True, None
    for index, rule in enumerate(sc.data.get("acls", [])):
        if not any(s == "*" or s == client.name or s in groups for s in rule["src"]):
            continue
        if proto not in ([rule["proto"]] if "proto" in rule else ["tcp", "udp", "icmp"]):
            continue
        for d in rule["dst"]:
            host, _, ports = d.rpartition(":")
            host = host.strip("[]")
            if host == "*":
                nets = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            elif host in sc.data["hosts"]:
                nets = [ipaddress.ip_network(sc.data["hosts"][host])]
            elif host.startswith("group:"):
                nets = [ipaddress.ip_network(a) for c in members(host) for a in c.addresses]
            elif host in clients:
                nets = [ipaddress.ip_network(a) for a in clients[host].addresses]
            else:
                nets = [ipaddress.ip_network(host)]
            if not any(addr in n for n in nets):
                continue
            if proto == "icmp" or ports == "*":
                return True, index
            for part in ports.split(","):
                lo, _, hi = part.partition("-")
                if int(lo) <= port <= int(hi or lo):
                    return True, index
    return False, None


# -- a policy at scale (bench/policy_scale.py, and nft -c of a big ruleset) -------------

SCALE_CLIENT = "10.8.0.10"
SCALE_SERVER = "10.1.0.2"


def scale_scenario(n_clients: int, n_rules: int, seed: int = 1) -> tuple[str, list[ClientRef]]:
    """N clients in 10 groups (some in two), M rules mostly by group over 300 hosts and subnets.

    clients[8] (SCALE_CLIENT, group g8) may reach SCALE_SERVER:5201 by the last rule.
    """
    rng = random.Random(seed)
    groups = [f"g{i}" for i in range(10)]
    clients = []
    for i in range(n_clients):
        a = 2 + i
        mine = {groups[i % 10]} | ({rng.choice(groups)} if rng.random() < 0.3 else set())
        clients.append(ClientRef(f"user{i:04d}", [f"10.8.{a >> 8}.{a & 255}", f"fd08::{a:x}"], frozenset(mine)))
    hosts = {f"h{i}": f"10.1.{i // 200}.{10 + i % 200}" for i in range(200)}
    hosts |= {f"net{i}": f"10.{2 + i // 64}.{(i % 64) * 4}.0/22" for i in range(60)}
    hosts |= {f"v6h{i}": f"fd01::{i:x}" for i in range(40)}
    names = list(hosts)
    acls = []
    for _ in range(n_rules - 1):
        src = [f"group:{rng.choice(groups)}"] if rng.random() < 0.9 else [rng.choice(clients).name]
        dst = []
        for _ in range(rng.randint(1, 3)):
            host = rng.choice(names) if rng.random() < 0.85 else f"group:{rng.choice(groups)}"
            ports = rng.choice(["22", "80,443", "8000-8999", "*", "5432", "3306,5432", "53",
                                f"{rng.randint(1024, 30000)}-{rng.randint(30000, 60000)}",
                                str(rng.randint(1, 65535))])
            dst.append(f"{host}:{ports}")
        rule = {"action": "accept", "src": src, "dst": dst}
        proto = rng.choice([None, None, "tcp", "udp"])
        if proto:
            rule["proto"] = proto
        acls.append(rule)
    acls.append({"action": "accept", "src": ["group:g8"], "dst": [f"{SCALE_SERVER}:5201"]})
    policy = {"hosts": hosts, "acls": acls,
              "tests": [{"src": clients[8].name, "accept": [f"{SCALE_SERVER}:5201"], "deny": [f"{SCALE_SERVER}:9999"]}],
              "dns": {"group:g9": ["10.1.0.53"]}}
    return json.dumps(policy, indent=1), clients
