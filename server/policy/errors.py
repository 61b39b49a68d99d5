"""The errors of the policy package: each one is a line for the admin, never a traceback."""

from __future__ import annotations


class PolicyError(ValueError):
    """A policy file we refuse: `str()` is "FILE:LINE: what is wrong" (just the message when no file is involved)."""

    def __init__(self, message: str, filename: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.filename = filename
        self.line = line
        if filename is None and line is None:  # not about a place in a file (e.g. explain's arguments)
            super().__init__(message)
            return
        where = filename or "<policy>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


class PolicyCheckError(PolicyError):
    """A policy that parses but does not fit the clients it is checked against, or whose tests fail.

    `problems` holds every line (one per problem); `str()` joins them.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        ValueError.__init__(self, "\n".join(self.problems))
        self.message = self.problems[0] if self.problems else ""
        self.filename = None
        self.line = None
