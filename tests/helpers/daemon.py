"""A fake daemon: a real control socket (tunnel/control.py) answered by a function, served from a thread.

    with fake_daemon("wg0", socket_dir, "errno=0\\n\\n") as seen:   # a fixed answer
        provision.add_client(...)                                   # talks to it like to `tunnel up`
    assert seen[0].startswith("set=1")

The handler may also be a function of the request text (e.g. the real UAPI
on an in-memory Device: `lambda text: uapi.handle(text, ctx)`). Or serve an
existing ControlServer with `serving(server)`. The thread stops, and the
socket is removed, when the block ends, whatever happens inside it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

from tunnel import control


@contextlib.contextmanager
def serving(server: control.ControlServer) -> Iterator[control.ControlServer]:
    """Run SERVER's loop callback in a thread for the block (as the data plane would)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.on_readable()
            stop.wait(0.005)

    thread = threading.Thread(target=loop, name="fake-daemon")
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def fake_daemon(ifname: str, socket_dir: str, answer: str | Callable[[str], str]) -> Iterator[list[str]]:
    """A daemon for IFNAME in SOCKET_DIR answering ANSWER (text, or a function of the request); yields the requests seen."""
    seen: list[str] = []

    def handler(text: str) -> str:
        seen.append(text)
        return answer(text) if callable(answer) else answer

    server = control.ControlServer(ifname, handler, socket_dir)
    try:
        with serving(server):
            yield seen
    finally:
        server.close()
