"""Reverse rules: the deconvnet, guided backprop and the gradient as one backward pass.

Zeiler & Fergus's deconvnet is the backward pass with each ReLU's backward replaced
(Springenberg et al. 2014, §3.4). With R the signal coming down and f the ReLU's
forward input:

    gradient   R · 1(f > 0)
    deconvnet  R · 1(R > 0)
    guided     R · 1(f > 0) · 1(R > 0)

Max-pool backward already routes through the switches, convolution backward is the
transposed filter, concatenation splits and addition copies: autograd supplies all of
that for any graph. What remains is to catch *every* ReLU the forward runs. Peers hook
``nn.ReLU`` modules and so miss torchvision GoogLeNet's ``F.relu(x, inplace=True)``;
here a ``TorchFunctionMode`` sees every call of ``F.relu``, ``torch.relu``,
``Tensor.relu`` and their in-place variants, whether from a module, a reused module or
plain functional code, and swaps in an autograd function with the chosen backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .errors import BadArgumentError

METHODS = ("deconvnet", "guided", "gradient")
LRN_RULES = ("identity", "gradient")

_RELU = {F.relu: False, torch.relu: False, torch.Tensor.relu: False,
         F.relu_: True, torch.relu_: True, torch.Tensor.relu_: True}


class _ReLU(torch.autograd.Function):
    """max(x, 0) forward; the rule's backward. In-place calls stay in place."""

    @staticmethod
    def forward(x: torch.Tensor, rule: str, inplace: bool) -> torch.Tensor:
        return x.clamp_min_(0) if inplace else x.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, rule, inplace = inputs
        ctx.rule = rule
        if inplace:
            ctx.mark_dirty(x)
        if rule != "deconvnet":  # the deconvnet's rule needs nothing from the forward
            ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.rule == "deconvnet":
            return grad.clamp_min(0), None, None
        (out,) = ctx.saved_tensors
        grad = grad * (out > 0)  # out > 0 exactly where the forward input f > 0
        return (grad.clamp_min(0) if ctx.rule == "guided" else grad), None, None


def _straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Value y, gradient of the identity in x."""
    return x + (y - x).detach()


class ReverseRules(TorchFunctionMode):
    """While active, every ReLU the forward runs back-propagates with ``method``'s rule,
    and local response (contrast) normalization back-propagates as the identity when
    ``lrn="identity"`` (the usual deconvnet convention).

    ``relu_calls`` counts the ReLUs caught, so callers and tests can see the coverage.
    """

    def __init__(self, method: str = "deconvnet", *, lrn: str = "identity"):
        super().__init__()
        if method not in METHODS:
            raise BadArgumentError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if lrn not in LRN_RULES:
            raise BadArgumentError(f"unknown lrn rule {lrn!r}; choose one of {', '.join(LRN_RULES)}")
        self.method, self.lrn = method, lrn
        self.relu_calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU and isinstance(args[0], torch.Tensor):
            self.relu_calls += 1
            x = args[0]
            if self.method != "gradient" and x.requires_grad:
                inplace = _RELU[func] or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
                if inplace and (x._is_view() or x.is_leaf):  # autograd forbids marking these dirty
                    inplace = False
                return _ReLU.apply(x, self.method, inplace)
        elif func is F.local_response_norm and self.lrn == "identity" and args[0].requires_grad:
            with torch.no_grad():
                y = func(*args, **kwargs)
            return _straight_through(args[0], y)
        return func(*args, **kwargs)
