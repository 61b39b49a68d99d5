"""Bandwidth limits per client on the server's tunnel interface, enforced by the kernel (tc).

Download (toward a client) is shaped by HTB on the tunnel device's egress;
upload (from a client) by HTB on the egress of an ifb device that the
tunnel device's ingress redirects to (tc mirred). Both classify with a u32
hash on the client's tunnel address, so the cost per packet does not grow
with the number of clients. shaper.py has the API and the rules it keeps,
plan.py the layout and how burst, quantum and queue are chosen.

Why these mechanisms (bench/shaping_mechanisms.py measures them):
- shaping, not policing: an nftables policer per client (a named `limit`
  looked up by address) keeps no queue, but its byte bucket holds a whole
  second of the rate on top of the burst (nft_limit.c: tokens_max =
  unit * (rate + burst) / rate), so a 5 Mbit/s client measured ~5.9 Mbit/s
  over 5 s, with 3-6 times the retransmissions of HTB; HTB holds the rate
  (4.8 Mbit/s of TCP payload = 5 Mbit/s of IP packets) at the price of a
  queue (see plan.MIN_QUEUE);
- u32 hashing, not an nftables map setting `meta priority`: the map works
  for download (netdev egress hook of the tunnel device), but packets that
  tc redirects from an ingress skip the netfilter egress hook of the ifb
  (the kernel marks them nf_skip_egress), so upload cannot be classified
  that way; flower, fw, basic, matchall, skbedit and police are not in
  every kernel (not in the one this was built on), u32 and mirred are.
  One classifier for both sides, all of it in tc.
"""

from .ifb import ifb_name
from .shaper import ClientLimit, Shaper
from .tc import ShapingError

__all__ = ["ClientLimit", "Shaper", "ShapingError", "ifb_name"]
