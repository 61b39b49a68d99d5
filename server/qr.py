"""A client configuration as a QR code: in the terminal, as PNG, as SVG.

The WireGuard apps (Android, iOS) import a wg-quick file from a QR code
whose text is the whole file. The `qrcode` package computes the modules;
drawing them is ours (PNG through zlib, so no Pillow is needed).

Rules kept here:
- the picture holds the client's private key: files are written 0600,
  atomically, like any other secret (tunnel/secrets.py);
- terminal output draws light modules as block characters and dark ones as
  blanks, which is right on the usual dark terminal; `invert` for light ones;
- `qrcode` is optional (the `server` extra): without it every call raises
  QrUnavailable, which the command line prints as one line (it is a
  click exception: `tunnel server add-client` has no other place to catch it).
"""

from __future__ import annotations

import struct
import zlib

from tunnel.cli import Fail
from tunnel.secrets import write_private_file

QUIET_ZONE = 4  # modules of margin the QR specification asks for


class QrUnavailable(Fail):
    """The qrcode package is not installed."""


INSTALL_HINT = "the qrcode package (pip install 'tunnel[server]')"


def available() -> bool:
    """Whether the optional qrcode package is installed (asked before anything is changed)."""
    import importlib.util

    return importlib.util.find_spec("qrcode") is not None


def matrix(text: str) -> list[list[bool]]:
    """Rows of modules, True = dark, with the quiet zone included."""
    try:
        import qrcode  # optional package
        from qrcode.constants import ERROR_CORRECT_L
    except ImportError:
        raise QrUnavailable("QR codes need the qrcode package (pip install 'tunnel[server]'), "
                            "or use --no-qr") from None

    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_L, border=QUIET_ZONE)
    qr.add_data(text.encode("utf-8"))
    qr.make(fit=True)
    return [list(row) for row in qr.get_matrix()]


def terminal(text: str, invert: bool = False) -> str:
    """Two module rows per text line, with half-block characters."""
    rows = matrix(text)
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    glyph = {(False, False): "█", (False, True): "▀", (True, False): "▄", (True, True): " "}
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2]):
        if invert:
            top, bottom = [not m for m in top], [not m for m in bottom]
        lines.append("".join(glyph[(t, b)] for t, b in zip(top, bottom)))
    return "\n".join(lines) + "\n"


def png_bytes(text: str, scale: int = 8) -> bytes:
    """An 8-bit greyscale PNG, SCALE pixels per module."""
    rows = matrix(text)
    size = len(rows) * scale
    raw = bytearray()
    for row in rows:
        line = bytearray([0])  # filter type 0 (None) for each scanline
        for dark in row:
            line += (b"\x00" if dark else b"\xff") * scale
        raw += bytes(line) * scale

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)  # greyscale, 8 bits
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) \
        + chunk(b"IEND", b"")


def svg_text(text: str, scale: int = 8) -> str:
    rows = matrix(text)
    size = len(rows)
    path = "".join(f"M{x},{y}h1v1h-1z" for y, row in enumerate(rows) for x, dark in enumerate(row) if dark)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size * scale}" height="{size * scale}" '
        f'viewBox="0 0 {size} {size}" shape-rendering="crispEdges">'
        f'<rect width="{size}" height="{size}" fill="#fff"/><path fill="#000" d="{path}"/></svg>\n'
    )


def write_png(text: str, path: str, scale: int = 8) -> None:
    write_private_file(path, png_bytes(text, scale))


def write_svg(text: str, path: str, scale: int = 8) -> None:
    write_private_file(path, svg_text(text, scale))
