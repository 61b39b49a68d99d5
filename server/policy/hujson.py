"""HuJSON: JSON with `//` and `/* */` comments and trailing commas, parsed into nodes that keep their line.

Rules kept here:
- the grammar is RFC 8259 JSON plus exactly two things: comments wherever
  whitespace may stand, and one optional comma before a closing `]` or `}`
  (Tailscale's policy files); nothing else is relaxed (no single quotes, no
  bare keys, no NaN);
- every value comes back as a `Node` carrying the line it starts on, and an
  object remembers the line of each key, so that the policy model can say
  "policy.hujson:14: ..." about any value it refuses;
- any input either parses or raises `PolicyError` naming the file and line:
  never another exception (duplicate keys and nesting deeper than
  MAX_DEPTH included: a duplicated key is an editing mistake that would
  silently drop a rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import PolicyError

MAX_DEPTH = 64

_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_WS = " \t\r\n"


@dataclass
class Node:
    """One parsed value: `value` is a str, int, float, bool, None, list[Node] or dict[str, Node]."""

    value: Any
    line: int
    key_lines: dict[str, int] = field(default_factory=dict)  # objects only

    @property
    def kind(self) -> str:
        v = self.value
        if isinstance(v, bool):
            return "boolean"
        if v is None:
            return "null"
        if isinstance(v, (int, float)):
            return "number"
        return {str: "string", list: "array", dict: "object"}[type(v)]

    def plain(self) -> Any:
        """The value as ordinary Python data (lines dropped)."""
        if isinstance(self.value, list):
            return [n.plain() for n in self.value]
        if isinstance(self.value, dict):
            return {k: n.plain() for k, n in self.value.items()}
        return self.value


def parse(text: str, filename: str = "<policy>") -> Node:
    """Parse HuJSON TEXT; errors name FILENAME and the line."""
    return _Parser(text, filename).document()


class _Parser:
    def __init__(self, text: str, filename: str) -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        self.s = text
        self.i = 0
        self.line = 1
        self.filename = filename

    def fail(self, message: str, line: int | None = None) -> PolicyError:
        return PolicyError(message, self.filename, self.line if line is None else line)

    def document(self) -> Node:
        self.skip()
        if self.i >= len(self.s):
            raise self.fail("empty file: expected a JSON object")
        node = self.value(0)
        self.skip()
        if self.i < len(self.s):
            raise self.fail(f"unexpected {self.describe()} after the end of the document")
        return node

    # -- whitespace and comments ---------------------------------------------

    def skip(self) -> None:
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c in _WS:
                if c == "\n":
                    self.line += 1
                self.i += 1
            elif s.startswith("//", self.i):
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end
            elif s.startswith("/*", self.i):
                start_line = self.line
                end = s.find("*/", self.i + 2)
                if end < 0:
                    raise self.fail("unterminated /* comment", start_line)
                self.line += s.count("\n", self.i, end)
                self.i = end + 2
            else:
                return

    def describe(self) -> str:
        if self.i >= len(self.s):
            return "end of file"
        c = self.s[self.i]
        return f"{c!r}" if c.isprintable() else f"character U+{ord(c):04X}"

    # -- values ---------------------------------------------------------------

    def value(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels")
        if self.i >= len(self.s):
            raise self.fail("unexpected end of file: expected a value")
        c = self.s[self.i]
        line = self.line
        if c == "{":
            return self.obj(depth)
        if c == "[":
            return self.array(depth)
        if c == '"':
            return Node(self.string(), line)
        if c == "-" or c.isdigit():
            return Node(self.number(), line)
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.s.startswith(word, self.i):
                end = self.i + len(word)
                if end < len(self.s) and (self.s[end].isalnum() or self.s[end] == "_"):
                    break
                self.i = end
                return Node(val, line)
        if c == "'":
            raise self.fail("strings must use double quotes")
        raise self.fail(f"unexpected {self.describe()}: expected a value")

    def obj(self, depth: int) -> Node:
        node = Node({}, self.line)
        self.i += 1  # {
        while True:
            self.skip()
            if self.i < len(self.s) and self.s[self.i] == "}":
                self.i += 1
                return node
            if self.i >= len(self.s):
                raise self.fail(f"unterminated object (opened on line {node.line})")
            if self.s[self.i] != '"':
                raise self.fail(f"unexpected {self.describe()}: expected a quoted key or '}}'")
            key_line = self.line
            key = self.string()
            if key in node.value:
                raise self.fail(f"duplicate key {key!r} (first on line {node.key_lines[key]})", key_line)
            self.skip()
            if self.i >= len(self.s) or self.s[self.i] != ":":
                raise self.fail(f"unexpected {self.describe()}: expected ':' after key {key!r}")
            self.i += 1
            self.skip()
            node.value[key] = self.value(depth + 1)
            node.key_lines[key] = key_line
            self.skip()
            if self.i < len(self.s) and self.s[self.i] == ",":
                self.i += 1
                continue
            if self.i < len(self.s) and self.s[self.i] == "}":
                self.i += 1
                return node
            if self.i >= len(self.s):
                raise self.fail(f"unterminated object (opened on line {node.line})")
            raise self.fail(f"unexpected {self.describe()}: expected ',' or '}}'")

    def array(self, depth: int) -> Node:
        node = Node([], self.line)
        self.i += 1  # [
        while True:
            self.skip()
            if self.i < len(self.s) and self.s[self.i] == "]":
                self.i += 1
                return node
            if self.i >= len(self.s):
                raise self.fail(f"unterminated array (opened on line {node.line})")
            if self.s[self.i] == ",":
                raise self.fail("unexpected ',': expected a value")
            node.value.append(self.value(depth + 1))
            self.skip()
            if self.i < len(self.s) and self.s[self.i] == ",":
                self.i += 1
                continue
            if self.i < len(self.s) and self.s[self.i] == "]":
                self.i += 1
                return node
            if self.i >= len(self.s):
                raise self.fail(f"unterminated array (opened on line {node.line})")
            raise self.fail(f"unexpected {self.describe()}: expected ',' or ']'")

    def string(self) -> str:
        s, n = self.s, len(self.s)
        start_line = self.line
        self.i += 1  # opening quote
        out: list[str] = []
        while True:
            if self.i >= n:
                raise self.fail("unterminated string", start_line)
            c = s[self.i]
            if c == '"':
                self.i += 1
                return "".join(out)
            if c == "\\":
                if self.i + 1 >= n:
                    raise self.fail("unterminated string", start_line)
                e = s[self.i + 1]
                if e in _ESCAPES:
                    out.append(_ESCAPES[e])
                    self.i += 2
                elif e == "u":
                    out.append(self.unicode_escape())
                else:
                    raise self.fail(f"invalid escape '\\{e}' in string")
            elif ord(c) < 0x20:
                what = "line break" if c == "\n" else f"control character U+{ord(c):04X}"
                raise self.fail(f"{what} inside a string (unterminated string?)")
            else:
                out.append(c)
                self.i += 1

    def hex4(self) -> int:
        digits = self.s[self.i + 2:self.i + 6]
        if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise self.fail("invalid \\u escape: expected four hex digits")
        self.i += 6
        return int(digits, 16)

    def unicode_escape(self) -> str:
        cp = self.hex4()
        if 0xD800 <= cp < 0xDC00:  # a high surrogate must be followed by a low one
            if self.s.startswith("\\u", self.i):
                low = self.hex4()
                if 0xDC00 <= low < 0xE000:
                    return chr(0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00))
            raise self.fail("invalid \\u escape: unpaired surrogate")
        if 0xDC00 <= cp < 0xE000:
            raise self.fail("invalid \\u escape: unpaired surrogate")
        return chr(cp)

    def number(self) -> int | float:
        s, n, start = self.s, len(self.s), self.i
        j = start
        if s[j] == "-":
            j += 1
        if j < n and s[j] == "0":
            j += 1
        elif j < n and s[j].isdigit():
            while j < n and s[j].isdigit():
                j += 1
        else:
            raise self.fail("invalid number")
        is_float = False
        if j < n and s[j] == ".":
            j += 1
            if not (j < n and s[j].isdigit()):
                raise self.fail("invalid number: expected digits after '.'")
            while j < n and s[j].isdigit():
                j += 1
            is_float = True
        if j < n and s[j] in "eE":
            j += 1
            if j < n and s[j] in "+-":
                j += 1
            if not (j < n and s[j].isdigit()):
                raise self.fail("invalid number: expected digits in the exponent")
            while j < n and s[j].isdigit():
                j += 1
            is_float = True
        if j < n and (s[j].isalnum() or s[j] in "._"):
            raise self.fail(f"invalid number {s[start:j + 1]!r}")
        self.i = j
        text = s[start:j]
        return float(text) if is_float else int(text)
