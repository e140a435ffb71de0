"""Results that come out NaN or Inf are errors, not pictures.

A forward pass can be finite while the backward overflows (weights scaled ×1e5: every
deconvnet projection NaN). :func:`check_result` looks at a projection, map or statistic
as it is made: under ``strict`` (the CLI's setting, :func:`finite_policy`, or a call's
own ``strict=True``) it raises :class:`NonFiniteError`, a one-line
:class:`~vizcnn.core.errors.BadInputError` naming what came out non-finite (the layer and
method, forward or backward) and the dtype that overflowed, before anything is written;
otherwise it warns (:class:`NonFiniteWarning`, same text) and the NaN/Inf values stay in
the result as the mark.
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import BadInputError

if TYPE_CHECKING:
    import torch


class NonFiniteError(BadInputError):
    """A projection, map or statistic came out NaN or Inf."""


class NonFiniteWarning(UserWarning):
    """A projection, map or statistic came out NaN or Inf (outside ``strict``); the values stay in the result."""


_STRICT: contextvars.ContextVar[bool] = contextvars.ContextVar("vizcnn_finite_strict", default=False)


@contextlib.contextmanager
def finite_policy(strict: bool = True) -> Iterator[None]:
    """Inside the block :func:`check_result` raises (``strict``) or warns by default."""
    token = _STRICT.set(bool(strict))
    try:
        yield
    finally:
        _STRICT.reset(token)


def check_result(t: torch.Tensor, what: str, *, dtype: torch.dtype | None = None, strict: bool | None = None) -> bool:
    """True when ``t`` is finite. Otherwise raises :class:`NonFiniteError` (``strict``, or
    the enclosing :func:`finite_policy`'s) or warns and returns False. ``what`` names it
    ("the deconvnet projection of layer 'conv3' (backward)"); ``dtype``: the dtype the
    computation ran in (default ``t``'s)."""
    import torch

    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
        return True
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return True
    n, total = int(bad.sum()), t.numel()
    kind = str(dtype or t.dtype).replace("torch.", "")
    message = (f"{what} came out NaN or Inf in {n} of {total} values: the numbers overflowed {kind} (weights or "
               f"inputs too large); nothing was written")
    if _STRICT.get() if strict is None else strict:
        raise NonFiniteError(message)
    warnings.warn(NonFiniteWarning(message), stacklevel=3)
    return False


__all__ = ["NonFiniteError", "NonFiniteWarning", "check_result", "finite_policy"]
