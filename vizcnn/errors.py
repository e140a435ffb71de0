"""vizcnn's error types: one hierarchy, one-line messages that name the bad value."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class VizcnnError(Exception):
    """Base of every error vizcnn raises on purpose (bad input, bad arguments).

    The CLI turns these into a one-line message and exit code 2.
    """


class BadInputError(VizcnnError, ValueError):
    """An input file or tensor that cannot be used (unreadable image, bad checkpoint, NaN)."""


class BadArgumentError(VizcnnError, ValueError):
    """An argument outside its valid range (channel, position, size, method)."""


class UnknownNameError(VizcnnError, KeyError):
    """A model or layer name that does not exist; the message lists the close matches."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        choices = list(choices)
        close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choices: {', '.join(choices[:20])}"
        if not close and len(choices) > 20:
            hint += ", ..."
        super().__init__(f"unknown {kind} {name!r}; {hint}")
        self.name = name
        self.close_matches = close

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
