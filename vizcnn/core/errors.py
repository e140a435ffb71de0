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


class ActivationError(VizcnnError, RuntimeError):
    """``strict``: a deconvnet or guided projection would fall back to the gradient (no
    rectifier caught, or activations without a deconvnet rule ran)."""


class ActivationWarning(UserWarning):
    """A deconvnet or guided projection fell back to the gradient somewhere: the forward
    caught no rectifier, or ran activations that have no deconvnet rule (LeakyReLU, SiLU,
    GELU, ...). ``method``, ``rectifiers`` ({kind: calls}) and ``activations`` ({name:
    calls}) say what ran."""

    def __init__(self, message: str, *, method: str = "", rectifiers: dict | None = None,
                 activations: dict | None = None):
        super().__init__(message)
        self.method = method
        self.rectifiers = dict(rectifiers or {})
        self.activations = dict(activations or {})


def as_index(value, what: str = "index") -> int:
    """An integer-like value as an int: a Python or NumPy integer, an integral float
    (``3.0``) or a one-element integer or integral tensor; a BadArgumentError naming the
    value for anything else (bool, 2.5, a string, a tensor of several values)."""
    import math
    import numbers

    if isinstance(value, bool):
        raise BadArgumentError(f"{what} must be an integer, got {value!r}")
    if hasattr(value, "numel") and hasattr(value, "item"):  # a tensor (or an array) of one value
        if value.numel() != 1 or getattr(getattr(value, "dtype", None), "is_complex", False):
            raise BadArgumentError(f"{what} must be one integer, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    elif hasattr(value, "item") and getattr(value, "shape", None) == ():  # a 0-d numpy array
        value = value.item()
    if isinstance(value, bool):
        raise BadArgumentError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        return int(value)
    raise BadArgumentError(f"{what} must be an integer, got {value!r}")


__all__ = ["VizcnnError", "BadInputError", "BadArgumentError", "UnknownNameError", "ActivationError",
           "ActivationWarning", "as_index"]
