"""Two kinds of error, kept apart as h11 does.

RemoteError: something a peer (or anyone on the network) sent is not
acceptable. It is dropped without a reply; `reason` is a short fixed string
used as a counter label, so it never carries key material or packet bytes.

LocalError: our own caller misused the API (a bad key length, an unknown
peer). That is a bug on our side and raises.
"""


class RemoteError(Exception):
    reason = "invalid"

    def __init__(self, detail: str = ""):
        super().__init__(detail or self.reason)
        self.detail = detail


class MalformedMessage(RemoteError):
    reason = "malformed"


class AuthenticationFailed(RemoteError):
    reason = "authentication"


class UnknownPeer(RemoteError):
    reason = "unknown_peer"


class UnknownReceiver(RemoteError):
    reason = "unknown_receiver"


class ReplayedTimestamp(RemoteError):
    reason = "replayed_timestamp"


class HandshakeFlood(RemoteError):
    reason = "handshake_flood"


class InvalidMac(RemoteError):
    reason = "invalid_mac1"


class CookieRequired(RemoteError):
    """Under load and no valid mac2: the caller answers with a cookie reply."""

    reason = "cookie_required"


class RateLimited(RemoteError):
    """Under load, a source sent handshake messages faster than its limit."""

    reason = "ratelimited"


class Replayed(RemoteError):
    reason = "replayed"


class ExpiredKey(RemoteError):
    reason = "expired_key"


class DisallowedSource(RemoteError):
    reason = "disallowed_source"


class InvalidInnerPacket(RemoteError):
    """An authenticated transport message whose plaintext is not a whole IPv4/IPv6 packet."""

    reason = "invalid_inner_packet"


class UnexpectedMessage(RemoteError):
    reason = "unexpected"


# Drops that are no sender's fault: our own state has nowhere to put the packet.
NO_ROUTE = "no_route"
NO_ENDPOINT = "no_endpoint"
INVALID_PEER_KEY = "invalid_peer_key"
NO_PRIVATE_KEY = "no_private_key"


class LocalError(Exception):
    """Misuse of the protocol API by our own code."""
