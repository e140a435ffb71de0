"""Reverse rules: the deconvnet, guided backprop and the gradient as one backward pass.

Zeiler & Fergus's deconvnet is the backward pass with each rectifier's backward replaced
(Springenberg et al. 2014, §3.4). With R the signal coming down, f the rectifier's
forward input and u its upper bound (∞ for ReLU, 6 for ReLU6):

    gradient   autograd's own backward (R · 1(0 < f < u) up to ties at the bounds)
    deconvnet  R · 1(R > 0)
    guided     R · 1(0 < f < u) · 1(R > 0)

Max-pool backward already routes through the switches, convolution backward is the
transposed filter, concatenation splits and addition copies: autograd supplies all of
that for any graph. What remains is to catch *every* rectifier the forward runs. Peers
hook ``nn.ReLU`` modules and so miss torchvision GoogLeNet's ``F.relu(x, inplace=True)``
and MobileNetV2's ``ReLU6``; here a ``TorchFunctionMode`` sees every call, whether from
a module, a reused module or plain functional code, and swaps in an autograd function
with the chosen backward. A rectifier is any of

- ``relu`` (``F.relu``, ``torch.relu``, ``Tensor.relu`` and the in-place ``relu_``);
- ``relu6`` and ``hardtanh`` with a lower bound of 0 (``nn.ReLU6``, ``F.hardtanh(x, 0, u)``);
- ``clamp``/``clip``/``clamp_min`` with ``min=0`` (any ``max``), functional, method or in place;
- ``threshold(x, 0, 0)`` (``nn.Threshold(0, 0)``, ``F.threshold``, ``torch.threshold_``).

Activations with no deconvnet rule (LeakyReLU, ELU, SiLU, GELU, Hardswish, Mish,
sigmoid, tanh, …) back-propagate as their gradient under every method. The engine
counts them; :meth:`ReverseRules.check` turns "no rectifier caught" or "activations
without a rule ran" into an :class:`~vizcnn.core.errors.ActivationWarning`, or with
``strict`` an :class:`~vizcnn.core.errors.ActivationError`. :func:`activation_policy` sets
the defaults (strict, the LRN rule) and collects the messages for a whole command.
"""
from __future__ import annotations

import contextvars
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .errors import ActivationError, ActivationWarning, BadArgumentError

METHODS = ("deconvnet", "guided", "gradient")
LRN_RULES = ("identity", "gradient")


# --------------------------------------------------------------------------- what a call is

def _get(*names):
    """The attributes that exist (torch versions differ in which aliases they have)."""
    out = []
    for owner, name in names:
        f = getattr(owner, name, None)
        if f is not None:
            out.append(f)
    return out


_T, _NN, _TN = torch, torch._C._nn, torch.Tensor

# func -> (display name, parameter names after the input, in place, kind)
_SIGNATURES: dict = {}


def _add(funcs, name: str, params: tuple[str, ...], inplace: bool, kind: str) -> None:
    for f in funcs:
        _SIGNATURES.setdefault(f, (name, params, inplace, kind))


_add([F.relu], "ReLU", ("inplace",), False, "relu")
_add([torch.relu, _TN.relu], "ReLU", (), False, "relu")
_add([F.relu_, torch.relu_, _TN.relu_], "ReLU", (), True, "relu")
_add([F.relu6], "ReLU6", ("inplace",), False, "relu6")
_add([F.hardtanh], "Hardtanh", ("min_val", "max_val", "inplace"), False, "hardtanh")
_add(_get((_NN, "hardtanh")), "Hardtanh", ("min_val", "max_val"), False, "hardtanh")
_add([F.hardtanh_, *_get((_NN, "hardtanh_"))], "Hardtanh", ("min_val", "max_val"), True, "hardtanh")
_add(_get((_NN, "relu6")), "ReLU6", (), False, "relu6")
_add(_get((_NN, "relu6_")), "ReLU6", (), True, "relu6")
_add(_get((_T, "clamp"), (_T, "clip"), (_TN, "clamp"), (_TN, "clip")), "clamp", ("min", "max"), False, "clamp")
_add(_get((_T, "clamp_"), (_T, "clip_"), (_TN, "clamp_"), (_TN, "clip_")), "clamp", ("min", "max"), True,
     "clamp")
_add(_get((_T, "clamp_min"), (_TN, "clamp_min")), "clamp_min", ("min",), False, "clamp")
_add(_get((_T, "clamp_min_"), (_TN, "clamp_min_")), "clamp_min", ("min",), True, "clamp")
_add([F.threshold], "Threshold", ("threshold", "value", "inplace"), False, "threshold")
_add(_get((_T, "threshold")), "Threshold", ("threshold", "value"), False, "threshold")
_add(_get((F, "threshold_"), (_T, "threshold_")), "Threshold", ("threshold", "value"), True, "threshold")

#: Activations with no deconvnet rule: they back-propagate as their gradient.
_UNRULED: dict = {}
for _name, _funcs in {
    "LeakyReLU": _get((F, "leaky_relu"), (F, "leaky_relu_"), (_NN, "leaky_relu"), (_NN, "leaky_relu_")),
    "PReLU": _get((F, "prelu"), (_T, "prelu")),
    "RReLU": _get((F, "rrelu"), (F, "rrelu_"), (_T, "rrelu"), (_T, "rrelu_")),
    "ELU": _get((F, "elu"), (F, "elu_"), (_NN, "elu"), (_NN, "elu_")),
    "SELU": _get((F, "selu"), (F, "selu_"), (_T, "selu"), (_T, "selu_")),
    "CELU": _get((F, "celu"), (F, "celu_"), (_T, "celu"), (_T, "celu_")),
    "GELU": _get((F, "gelu"), (_NN, "gelu")),
    "SiLU": _get((F, "silu"), (_NN, "silu"), (_NN, "silu_")),
    "Mish": _get((F, "mish"), (_NN, "mish"), (_NN, "mish_")),
    "Hardswish": _get((F, "hardswish"), (_NN, "hardswish"), (_NN, "hardswish_")),
    "Hardsigmoid": _get((F, "hardsigmoid"), (_NN, "hardsigmoid"), (_NN, "hardsigmoid_")),
    "Softplus": _get((F, "softplus"), (_NN, "softplus")),
    "Softsign": _get((F, "softsign"),),
    "Tanhshrink": _get((F, "tanhshrink"),),
    "LogSigmoid": _get((F, "logsigmoid"), (_NN, "log_sigmoid")),
    "Sigmoid": _get((F, "sigmoid"), (_T, "sigmoid"), (_T, "sigmoid_"), (_TN, "sigmoid"), (_TN, "sigmoid_")),
    "Tanh": _get((F, "tanh"), (_T, "tanh"), (_T, "tanh_"), (_TN, "tanh"), (_TN, "tanh_")),
}.items():
    for _f in _funcs:
        _UNRULED.setdefault(_f, _name)


#: Layers with filters (their calls are counted: a forward through two or more of them
#: without any rectifier is what a network of uncaught rectifiers looks like).
_FILTERS = set(_get((F, "conv1d"), (F, "conv2d"), (F, "conv3d"), (F, "conv_transpose1d"), (F, "conv_transpose2d"),
                    (F, "conv_transpose3d"), (F, "linear"), (_T, "conv2d"), (_T, "conv1d"), (_T, "conv3d")))


def _number(v) -> float | None:
    """A Python or NumPy number, or a one-element tensor off the meta device, as a float."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1 and v.device.type != "meta":
        return float(v)
    try:
        import numpy as np

        if isinstance(v, np.number):
            return float(v)
    except ImportError:  # pragma: no cover
        pass
    return None


@dataclass(frozen=True)
class Rectifier:
    """One rectifier call: its display name, upper bound (inf for none) and whether it
    works in place."""

    name: str
    upper: float
    inplace: bool


def rectifier(func, args, kwargs) -> Rectifier | None:
    """The rectifier a torch function call is, or None (also for ``clamp`` with a lower
    bound other than 0, ``hardtanh(x, -1, 1)`` or ``threshold(x, 0.5, 0)``)."""
    sig = _SIGNATURES.get(func)
    if sig is None or not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
        return None
    name, params, inplace, kind = sig
    given = dict(zip(params, args[1:]))
    given.update({k: v for k, v in kwargs.items() if k in params})
    inplace = inplace or bool(given.get("inplace", False))
    if kind == "relu":
        return Rectifier("ReLU", math.inf, inplace)
    if kind == "relu6":
        return Rectifier("ReLU6", 6.0, inplace)
    if kind == "hardtanh":
        lo, hi = _number(given.get("min_val", -1.0)), _number(given.get("max_val", 1.0))
        if lo != 0 or hi is None or not hi > 0:
            return None
        return Rectifier("ReLU6" if hi == 6 else f"Hardtanh(0, {hi:g})", hi, inplace)
    if kind == "clamp":
        lo = _number(given.get("min"))
        hi = given.get("max")
        hi_v = math.inf if hi is None else _number(hi)
        if lo != 0 or hi_v is None or not hi_v > 0:
            return None
        return Rectifier("clamp(min=0)" if hi_v == math.inf else f"clamp(0, {hi_v:g})", hi_v, inplace)
    if kind == "threshold":
        if _number(given.get("threshold")) != 0 or _number(given.get("value")) != 0:
            return None
        return Rectifier("threshold(0, 0)", math.inf, inplace)
    return None  # pragma: no cover


def unruled(func, args, kwargs) -> str | None:
    """The name of an activation with no deconvnet rule that this call runs, or None."""
    name = _UNRULED.get(func)
    if name is not None:
        return name
    sig = _SIGNATURES.get(func)
    if sig is not None and sig[3] == "hardtanh" and args and isinstance(args[0], torch.Tensor):
        return "Hardtanh"  # a hardtanh that is not a rectifier (its lower bound is not 0)
    return None


# --------------------------------------------------------------------------- the backward rules

class _Rectify(torch.autograd.Function):
    """The rectifier's own forward (the original call); the rule's backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, run: Callable[[], torch.Tensor], rule: str, upper: float,
                inplace: bool, nan_passes: bool = True) -> torch.Tensor:
        ctx.rule = rule
        out = run()
        if inplace:
            ctx.mark_dirty(x)
        if rule == "gradient":
            # autograd's own in-place backward, bit for bit, from a private mask of the output:
            # the built-in one keeps the output itself, which a later in-place op (the same
            # in-place ReLU module called again on it) overwrites. Inside (0, u) passes; a NaN
            # passes except through clamp (``nan_passes``: PyTorch's formulas differ there).
            mask = ~(out <= 0) if nan_passes else out > 0
            if upper != math.inf:
                mask &= ~(out >= upper) if nan_passes else out < upper
            ctx.save_for_backward(mask)
        if rule == "guided":  # where the forward let the signal through: 0 < f < upper
            mask = out > 0
            if upper != math.inf:
                mask &= out < upper
            ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.rule == "deconvnet":
            return grad.clamp_min(0), None, None, None, None, None
        (mask,) = ctx.saved_tensors
        if ctx.rule == "gradient":
            return torch.where(mask, grad, 0), None, None, None, None, None
        return grad.clamp_min(0) * mask, None, None, None, None, None


def _saved_tensor_hooks_active() -> bool:
    """Whether saved-tensors hooks are active (checkpointing, offloading); True where this
    torch cannot say (the gradient then keeps autograd's own backward everywhere)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is None or top(False) is not None


def _straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Value y, gradient of the identity in x."""
    return x + (y - x).detach()


# --------------------------------------------------------------------------- policy

@dataclass
class _Policy:
    strict: bool = False
    lrn: str = "identity"
    notes: list[str] | None = None  # None: the default policy, which collects nothing
    echo: Callable[[str], None] | None = None
    seen: set = field(default_factory=set)


_POLICY: contextvars.ContextVar[_Policy] = contextvars.ContextVar("vizcnn_activation_policy", default=_Policy())


@contextmanager
def activation_policy(*, strict: bool = False, lrn: str = "identity", notes: list[str] | None = None,
                      echo: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """Defaults for every projection run inside the block: ``strict`` (a fallback to the
    gradient is an error, not a warning) and the deconvnet's LRN rule. Each distinct
    fallback message is appended to ``notes`` (a new list when None; yielded), and
    passed to ``echo`` instead of being issued as a Python warning when ``echo`` is
    given. The CLI wraps each command in one."""
    if lrn not in LRN_RULES:
        raise BadArgumentError(f"unknown lrn rule {lrn!r}; choose one of {', '.join(LRN_RULES)}")
    notes = [] if notes is None else notes
    token = _POLICY.set(_Policy(bool(strict), lrn, notes, echo))
    try:
        yield notes
    finally:
        _POLICY.reset(token)


def current_policy() -> _Policy:
    return _POLICY.get()


# --------------------------------------------------------------------------- the mode

class ReverseRules(TorchFunctionMode):
    """While active, every rectifier the forward runs back-propagates with ``method``'s
    rule, and local response (contrast) normalization back-propagates as the identity
    for the deconvnet and guided backprop when ``lrn="identity"`` (the usual deconvnet
    convention; ``method="gradient"`` always differentiates LRN: it is the gradient).

    ``rectifiers`` counts the rectifier calls by kind (``relu_calls``: their total),
    ``unruled`` the activation calls that have no deconvnet rule and ``filter_calls``
    the convolution and linear calls, so callers and tests can see the coverage;
    :meth:`check` reports a silent fallback. ``lrn`` and
    ``strict`` default to :func:`activation_policy`'s (``identity``, False).
    """

    def __init__(self, method: str = "deconvnet", *, lrn: str | None = None, strict: bool | None = None):
        super().__init__()
        if method not in METHODS:
            raise BadArgumentError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        policy = current_policy()
        lrn = policy.lrn if lrn is None else lrn
        if lrn not in LRN_RULES:
            raise BadArgumentError(f"unknown lrn rule {lrn!r}; choose one of {', '.join(LRN_RULES)}")
        self.method, self.lrn = method, lrn
        self.strict = policy.strict if strict is None else bool(strict)
        self.rectifiers: Counter[str] = Counter()
        self.unruled: Counter[str] = Counter()
        self.filter_calls = 0

    @property
    def relu_calls(self) -> int:
        """Rectifier calls caught (every kind)."""
        return sum(self.rectifiers.values())

    def reset(self) -> None:
        self.rectifiers.clear()
        self.unruled.clear()
        self.filter_calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SIGNATURES:
            r = rectifier(func, args, kwargs)
            if r is not None:
                self.rectifiers[r.name] += 1
                x = args[0]
                # the gradient keeps autograd's backward, except in place (see _Rectify) outside
                # saved-tensor hooks (activation checkpointing recomputes without this mode and
                # wants the same saved tensors)
                ruled = self.method != "gradient" or (r.inplace and not _saved_tensor_hooks_active())
                if ruled and x.requires_grad and torch.is_grad_enabled():
                    return self._rectify(func, args, kwargs, r)
                return func(*args, **kwargs)
        if func in _UNRULED or func in _SIGNATURES:
            name = unruled(func, args, kwargs)
            if name is not None:
                self.unruled[name] += 1
        elif func in _FILTERS:
            self.filter_calls += 1
        elif func is F.local_response_norm and self.method != "gradient" and self.lrn == "identity" \
                and isinstance(args[0], torch.Tensor) and args[0].requires_grad and torch.is_grad_enabled():
            with torch.no_grad():
                y = func(*args, **kwargs)
            return _straight_through(args[0], y)
        return func(*args, **kwargs)

    def _rectify(self, func, args, kwargs, r: Rectifier) -> torch.Tensor:
        x = args[0]
        if r.inplace and x.is_leaf:  # PyTorch refuses this in place: let it say so
            return func(*args, **kwargs)
        if r.inplace and x._is_view():
            # autograd cannot mark a view dirty from a custom function: rectify a copy and
            # write it back (autograd records the copy, so the gradient flows through the rule)
            y = _Rectify.apply(x, lambda: func(x.detach().clone(), *args[1:], **kwargs), self.method, r.upper,
                               False, not r.name.startswith("clamp"))
            return x.copy_(y)
        return _Rectify.apply(x, lambda: func(*args, **kwargs), self.method, r.upper, r.inplace,
                              not r.name.startswith("clamp"))

    # ----------------------------------------------------------------------- reporting

    def message(self) -> str | None:
        """What fell back to the gradient in the forward run so far, or None: activations
        without a rule ran, or no rectifier was caught although the forward ran some
        nonlinearity (an activation without a rule) or two or more convolution/linear
        layers (a first convolution's raw output has no nonlinearity below it: its
        deconvnet is its gradient by definition, and nothing is said)."""
        if self.method == "gradient":
            return None
        parts = []
        if not self.rectifiers and (self.unruled or self.filter_calls >= 2):
            parts.append("the forward ran no rectifier (ReLU, ReLU6, clamp(min=0), threshold(0, 0)), so the map "
                         "is the plain gradient")
        if self.unruled:
            listed = ", ".join(f"{name} ×{n}" for name, n in self.unruled.most_common())
            total = sum(self.unruled.values())
            caught = f" ({self.relu_calls} rectifier call(s) caught)" if self.rectifiers else ""
            parts.append(f"{total} activation call(s) have no {self.method} rule and pass as their gradient: "
                         f"{listed}{caught}")
        return f"{self.method}: " + "; ".join(parts) if parts else None

    def check(self, strict: bool | None = None) -> str | None:
        """Reports a silent fallback (see :meth:`message`): an ActivationError when strict,
        else a note to the active :func:`activation_policy` or an ActivationWarning.
        Returns the message (None when every activation had its rule)."""
        msg = self.message()
        if msg is None:
            return None
        if self.strict if strict is None else strict:
            raise ActivationError(f"{msg} (strict: refusing to fall back to the gradient)")
        policy = current_policy()
        # once per kind of fallback (counts differ from layer to layer: the first is said)
        kind = (self.method, not self.rectifiers, tuple(sorted(self.unruled)))
        if policy.notes is not None and kind not in policy.seen:
            policy.notes.append(msg)
        if policy.echo is not None:
            if kind not in policy.seen:
                policy.echo(msg)
        else:
            warnings.warn(ActivationWarning(msg, method=self.method, rectifiers=dict(self.rectifiers),
                                            activations=dict(self.unruled)), stacklevel=3)
        policy.seen.add(kind)
        return msg


__all__ = ["METHODS", "LRN_RULES", "ReverseRules", "Rectifier", "rectifier", "unruled", "activation_policy",
           "current_policy"]
