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


class Replayed(RemoteError):
    reason = "replayed"


class ExpiredKey(RemoteError):
    reason = "expired_key"


class DisallowedSource(RemoteError):
    reason = "disallowed_source"


class UnexpectedMessage(RemoteError):
    reason = "unexpected"


class LocalError(Exception):
    """Misuse of the protocol API by our own code."""
