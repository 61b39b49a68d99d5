"""No object that holds a private or preshared key prints it (issue 9, item 10).

A repr ends up in logs, tracebacks and debuggers; each class below holds a
private key, a preshared key, session keys or a client's whole config, and
neither its repr nor its str may show any of them, in raw, hex or base64
form (nor a 10-character piece of one).
"""

from __future__ import annotations

import base64

import pytest

from server.provision import AddedClient
from server.reconcile import DesiredPeer
from server.registry.model import Client, ServerSettings, Snapshot, User
from server.render import client_config
from tests.protocol.pair import established_pair
from tunnel import uapi
from tunnel.config import Config, InterfaceConfig, PeerConfig, parse_config
from tunnel.protocol.crypto import DH_PUBKEY, PrivateKey, encode_key
from tunnel.protocol.noise import SessionKeys, StaticIdentity

PRIV = bytes(range(100, 132))
PSK = bytes(range(150, 182))
PUB = DH_PUBKEY(bytes(range(1, 33)))


def forms(secret: bytes) -> list[str]:
    texts = [repr(secret), secret.hex(), encode_key(secret), base64.b64encode(secret).decode().rstrip("=")]
    out = []
    for t in texts:
        out += [t[i:i + 10] for i in range(0, len(t) - 9)]
    return out


def assert_hidden(obj, *secrets: bytes) -> None:
    shown = repr(obj) + "\n" + str(obj)
    for secret in secrets:
        leaked = [f for f in forms(secret) if f in shown]
        assert not leaked, f"{type(obj).__name__} shows key material {leaked[:2]}: {shown[:300]}"


def _config() -> Config:
    return Config(InterfaceConfig(private_key=PRIV), [PeerConfig(public_key=PUB, preshared_key=PSK)], name="wg0")


def _settings() -> ServerSettings:
    return ServerSettings(private_key=encode_key(PRIV), endpoint="vpn.example.com", pools=("10.8.0.0/24",))


def _client() -> Client:
    return Client("alice", encode_key(PUB), preshared_key=encode_key(PSK), private_key=encode_key(PRIV),
                  ipv4="10.8.0.2")


OBJECTS = {
    "InterfaceConfig": lambda: _config().interface,
    "PeerConfig": lambda: _config().peers[0],
    "Config": _config,
    "parsed Config": lambda: parse_config(_config().to_text(), name="wg0"),
    "PrivateKey": lambda: PrivateKey(PRIV),
    "StaticIdentity": lambda: StaticIdentity(PRIV),
    "SessionKeys": lambda: SessionKeys(PRIV, PSK, 1, 2, True),
    "uapi.Context": lambda: uapi.Context(device=None, private_key=PRIV, listen_port=1, fwmark=0, now=lambda: 0.0),
    "uapi.PeerChange": lambda: uapi.PeerChange(PUB, preshared_key=PSK),
    "uapi.SetRequest": lambda: uapi.SetRequest(private_key=PRIV, peers=[uapi.PeerChange(PUB, preshared_key=PSK)]),
    "ServerSettings": _settings,
    "Client": _client,
    "User": lambda: User("bob", password_hash=PRIV.hex(), totp_secret=encode_key(PSK)),
    "Snapshot": lambda: Snapshot(1, _settings(), (_client(),), None, (), ()),
    "DesiredPeer": lambda: DesiredPeer("alice", PSK, ("10.8.0.2/32",)),
    "AddedClient": lambda: AddedClient("alice", client_config(_settings(), _client()), ["10.8.0.2/32"], (), None,
                                       "applied"),
}


@pytest.mark.parametrize("name", list(OBJECTS))
def test_no_key_in_repr(name):
    assert_hidden(OBJECTS[name](), PRIV, PSK)


def test_no_key_in_the_protocol_state_of_a_live_session():
    """Device, Peer, Handshake, Keypair, cookie state: after a real handshake, with a PSK."""
    net, a, b = established_pair(psk=PSK)
    device = a.device
    peer = a.peer_of(b)
    private = device.identity.private.raw
    session = peer.current
    assert session is not None
    objects = [device, peer, peer.handshake, session, peer.cookie, device.cookie_checker, device.identity,
               device.allowed_ips, device.ratelimiter, b.device, b.peer_of(a).handshake]
    # The handshake's own secrets at their most: just after an initiation.
    a.initiate(b, deliver=False)
    objects.append(peer.handshake)
    for obj in objects:
        assert_hidden(obj, private, PSK, b.device.identity.private.raw)
        if peer.handshake.ephemeral_private:
            assert_hidden(obj, bytes(peer.handshake.ephemeral_private), peer.handshake.chaining_key)
