"""Why the data plane itself dropped something: its I/O and its queues.

Protocol drops (replayed, authentication, unknown_receiver, no_route...) are
the core's, named in tunnel/protocol/errors.py and counted there; these are
the only other reasons, all counted in the same Counters.drops.
"""

BAD_SUPER_PACKET = "bad_super_packet"  # the TUN gave a super-packet we cannot split
NOT_IP = "not_ip"  # the TUN gave something that is not an IPv4/IPv6 packet
TOO_BIG = "too_big"  # a packet that no UDP datagram can carry
# Our own datagram to a peer came back into our tunnel (its endpoint is routed through it):
# sealing it again would loop forever, as the kernel's ELOOP check says.
ROUTING_LOOP = "routing_loop"
UDP_SEND_BUSY = "udp_send_busy"  # the socket's send buffer is full
UDP_SEND_ERROR = "udp_send_error"
NO_SOCKET_FOR_FAMILY = "no_socket_for_family"  # an endpoint of a family we have no socket for
UDP_RECV_ERROR = "udp_recv_error"  # ICMP errors surface as ECONNREFUSED and the like
TUN_WRITE_BUSY = "tun_write_busy"
TUN_WRITE_ERROR = "tun_write_error"
HANDSHAKE_QUEUE_FULL = "handshake_queue_full"
# Dropped by the kernel at our UDP sockets before we read them: not shaped like a
# WireGuard message (the socket filter, tunnel/udpfilter.py) or the receive buffer
# full. The kernel counts both in one per-socket counter; read once a second.
UDP_KERNEL_DROPS = "udp_kernel_drops"
