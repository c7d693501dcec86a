"""User-facing errors: one line, a source location where there is one, exit code 2.

Every error a user can cause (bad DSL, bad shapes, unknown preset, corrupt or
missing files, too little memory) is a TgcError; the command line prints
`str(err)` and exits 2. `str(err)` is one line (a message that wraps a library's
multi-line error is joined into one), followed for DSL errors by the offending
source line and a caret. Anything else escaping is a bug in tgc.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    col: int
    text: str = ""  # the offending source line, shown under the message

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class TgcError(Exception):
    """An error caused by the user's input; printed as one line (plus the source line) and exit 2."""

    def __init__(self, message: str, loc: Loc | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc

    def __str__(self) -> str:
        # one line whatever the message holds (a wrapped library error can span several)
        msg = " ".join(line.strip() for line in str(self.message).splitlines() if line.strip())
        if self.loc is None:
            return f"error: {msg}"
        s = f"{self.loc}: error: {msg}"
        if self.loc.text:
            s += f"\n    {self.loc.text.rstrip()}\n    {' ' * (self.loc.col - 1)}^"
        return s


class DslSyntaxError(TgcError):
    pass


class ShapeError(TgcError):
    pass
