"""Demonstration and measurement tooling: `tunnel demo`, `tunnel bench`.

Not part of the shared library: it drives the `tunnel` program from outside
(network namespaces, iperf3, wireguard-go) the way a user or a test would,
and plugs its commands into the `tunnel` console script as the server does
(the "tunnel.commands" entry points `demo` and `bench`). tunnel/ never
imports it.
"""
