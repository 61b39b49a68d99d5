"""Every size, limit and label of the protocol, in one place.

Names follow the WireGuard whitepaper (section 6.1 "Protocol constants" and
section 5.4 "Messages"). The first half is the specification: changing any of
it breaks interoperability. The second half is ours: tuning that a peer
cannot observe on the wire.
"""

# ---------------------------------------------------------------------------
# Specification constants (whitepaper; identical in every implementation)
# ---------------------------------------------------------------------------

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

# Message types (first byte, followed by three reserved zero bytes).
MESSAGE_HANDSHAKE_INITIATION = 1
MESSAGE_HANDSHAKE_RESPONSE = 2
MESSAGE_HANDSHAKE_COOKIE = 3
MESSAGE_TRANSPORT_DATA = 4

# Primitive sizes.
KEY_LEN = 32  # X25519 keys, chaining keys, symmetric keys
HASH_LEN = 32  # BLAKE2s-256
MAC_LEN = 16  # keyed BLAKE2s-128 (mac1, mac2)
AEAD_TAG_LEN = 16  # Poly1305
TIMESTAMP_LEN = 12  # TAI64N
COOKIE_LEN = 16
COOKIE_NONCE_LEN = 24  # XChaCha20-Poly1305 nonce

# Message sizes.
HANDSHAKE_INITIATION_SIZE = 148
HANDSHAKE_RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16  # type(4) receiver(4) counter(8)
KEEPALIVE_SIZE = TRANSPORT_HEADER_SIZE + AEAD_TAG_LEN  # 32: empty encrypted payload
TRANSPORT_MIN_SIZE = KEEPALIVE_SIZE
# Offsets of mac1 and mac2 in the handshake messages: they cover everything before them.
INITIATION_MAC1_OFFSET = HANDSHAKE_INITIATION_SIZE - 2 * MAC_LEN  # 116
RESPONSE_MAC1_OFFSET = HANDSHAKE_RESPONSE_SIZE - 2 * MAC_LEN  # 60

# Transport data plaintext is zero-padded to a multiple of this.
PADDING_MULTIPLE = 16

# Timers and limits (whitepaper 6.1).
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0

# Cookie secret lifetime (whitepaper 5.4.7) and the margin a received cookie
# is trusted for below it.
COOKIE_SECRET_MAX_AGE = 120.0
COOKIE_SECRET_LATENCY = 5.0

# The replay window (whitepaper 5.4.6, RFC 6479): 8192 bits kept, of which
# one 64-bit word is the moving block, so 8128 packets of reordering are tolerated.
COUNTER_BITS_TOTAL = 8192
COUNTER_REDUNDANT_BITS = 64
COUNTER_WINDOW_SIZE = COUNTER_BITS_TOTAL - COUNTER_REDUNDANT_BITS  # 8128

# ---------------------------------------------------------------------------
# Implementation constants (ours; not visible on the wire)
# ---------------------------------------------------------------------------

# Random jitter added to each REKEY_TIMEOUT retry (as the kernel: up to 1/3 s).
REKEY_TIMEOUT_JITTER_MAX = 1.0 / 3.0
# Fewest seconds between two initiations we accept from one peer (wireguard-go
# and the kernel: 50 per second); faster ones are dropped as a flood.
HANDSHAKE_INITIATION_MIN_INTERVAL = 1.0 / 50.0
# Packets held per peer while no session exists; the oldest is dropped first.
MAX_STAGED_PACKETS = 128
# Maximum size of an IP packet we accept from the device or the network.
MAX_PACKET_SIZE = 65535
# Default tunnel MTU, as wg-quick: 1500 minus the IPv6 + UDP + WireGuard overhead.
DEFAULT_MTU = 1420
DEFAULT_PORT = 51820
# IPv4 (20) / IPv6 (40) + UDP (8) + transport header (16) + tag (16).
OVERHEAD_IPV4 = 20 + 8 + TRANSPORT_HEADER_SIZE + AEAD_TAG_LEN
OVERHEAD_IPV6 = 40 + 8 + TRANSPORT_HEADER_SIZE + AEAD_TAG_LEN
# Handshakes we still process per second when under load (cookie-less ones
# get a cookie reply instead); the caller decides when we are under load.
MAX_QUEUED_HANDSHAKES = 4096
# Handshake messages with a valid mac2 under load, per source (IPv4 address
# or IPv6 /64): as the kernel's ratelimiter.c and wireguard-go.
RATELIMIT_PER_SECOND = 20
RATELIMIT_BURST = 5
RATELIMIT_EXPIRE_SECONDS = 1.0
# Sources tracked at once; past this a new source is refused (kernel: bounded by RAM, at least 8192).
RATELIMIT_MAX_ENTRIES = 65536
