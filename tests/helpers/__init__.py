"""Helpers shared by several test files, in one place.

    netns.py       namespaces, veths, wireguard-go as the reference peer (the harness)
    tunnelproc.py  `tunnel up` as a process in a namespace; pings and hashed transfers (resumable too)
    server.py      `tunnel server` as a process in a namespace (init, up, add-client, stop, down)
    capture.py     every frame a namespace sends through one link (the proof of no leak)
    daemon.py      a fake daemon: a real control socket answered by a function, in a thread
    packets.py     packet builders and reference checksums
    planes.py      two DataPlanes wired together in memory, on a fake clock
    fuzzing.py     fuzz inputs: a device with a live session, its datagrams, mutations
    fuzz_plane.py  the data-plane fuzz (tests and bench/fuzz_dataplane.py)

tests.netns and tests.integration.tunnelproc, the old names of the first
two, still import (tests/conftest.py aliases them) for tests written before
the move.
"""
