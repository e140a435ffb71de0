"""The deconvnet written out step by step, as Zeiler & Fergus describe it (§2.1, Fig. 1).

For plain sequential models (LeNet-5, the AlexNet family, ZFNet, VGG ``features``):
forward, recording each max-pool's switches; then from the chosen activation down:
unpool with the switches, rectify, filter with the transposed filters. This is the
readable reference the rule-based engine (``vizcnn.core.rules``) is tested against; the
engine is what vizcnn uses, because it works on any graph.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import BadArgumentError
from ..core.layers import resolve_layer
from ..models.lenet5 import ConnectionTableConv2d, ScaledTanh, Subsampling


def sequential_layers(model: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]]:
    """The (prefix, [(name, module)]) chain a sequential model runs, in order."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return "features.", list(features.named_children())
    return "", list(model.named_children())


def _unpool(r: torch.Tensor, switches: torch.Tensor, size: torch.Size) -> torch.Tensor:
    # Overlapping pools send several windows to one location: the reconstructions add.
    n, c = r.shape[:2]
    out = torch.zeros(n, c, size[-2] * size[-1], dtype=r.dtype)
    return out.scatter_add_(2, switches.flatten(2), r.flatten(2)).view(n, c, *size[-2:])


def _transposed_conv(r: torch.Tensor, weight: torch.Tensor, m, size: torch.Size) -> torch.Tensor:
    stride, padding, dilation = m.stride, m.padding, getattr(m, "dilation", (1, 1))
    k = weight.shape[-2:]
    extra = [size[-2 + i] - ((r.shape[-2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + 1)
             for i in range(2)]
    return F.conv_transpose2d(r, weight, None, stride, padding, extra, getattr(m, "groups", 1), dilation)


def rectifier_bound(m: nn.Module) -> float | None:
    """The upper bound of a rectifier module (inf for ReLU and threshold(0, 0), 6 for
    ReLU6, u for Hardtanh(0, u)); None for any other module."""
    if isinstance(m, nn.ReLU):
        return math.inf
    if isinstance(m, nn.Hardtanh) and m.min_val == 0 and m.max_val > 0:  # ReLU6 is a Hardtanh(0, 6)
        return float(m.max_val)
    if isinstance(m, nn.Threshold) and m.threshold == 0 and m.value == 0:
        return math.inf
    return None


def _vjp(m: nn.Module, f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """r pulled back through module m at its input f: the module's own gradient."""
    with torch.enable_grad():
        f = f.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(m(f.clone()), f, r)
    return g


@torch.no_grad()
def deconvnet_sequential(model: nn.Module, x: torch.Tensor, layer: str, channel: int, position: tuple[int, int],
                         *, method: str = "deconvnet", lrn: str = "identity") -> torch.Tensor:
    """Projects activation (channel, y, x) of ``layer`` to the input of a sequential model.

    x: (1, C, H, W). Returns (C, H, W). ``method`` selects the rectifier rule, with f
    the rectifier's input and u its upper bound (inf for ReLU, 6 for ReLU6):
    deconvnet R · 1(R > 0); guided R · 1(0 < f < u) · 1(R > 0); gradient R · 1(0 < f < u).
    Contrast normalization passes as the identity for the deconvnet and guided backprop
    when ``lrn="identity"``, else (and always for the gradient) as its own gradient.
    """
    path, _ = resolve_layer(model, layer)
    prefix, chain = sequential_layers(model)
    names = [prefix + n for n, _ in chain]
    if path not in names:
        raise BadArgumentError(f"{layer!r} is not in the sequential chain of {type(model).__name__}")
    chain = chain[: names.index(path) + 1]

    inputs, switches = [], {}
    h = x
    for i, (_, m) in enumerate(chain):
        inputs.append(h)
        if isinstance(m, nn.MaxPool2d):
            h, switches[i] = F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation,
                                          ceil_mode=m.ceil_mode, return_indices=True)
        else:
            h = m(h.clone())  # an in-place module must not overwrite the input kept

    y, x_ = position
    r = torch.zeros_like(h)
    r[0, channel, y, x_] = h[0, channel, y, x_]
    for i in reversed(range(len(chain))):
        m, f = chain[i][1], inputs[i]
        upper = rectifier_bound(m)
        if upper is not None:
            if method in ("guided", "gradient"):
                r = r * ((f > 0) & (f < upper))
            if method in ("guided", "deconvnet"):
                r = r.clamp_min(0)
        elif isinstance(m, nn.MaxPool2d):
            r = _unpool(r, switches[i], f.shape)
        elif isinstance(m, nn.Conv2d):
            r = _transposed_conv(r, m.weight, m, f.shape)
        elif isinstance(m, ConnectionTableConv2d):
            r = _transposed_conv(r, m.full_weight, m, f.shape)
        elif isinstance(m, Subsampling):  # sum of each 2×2 block × coefficient: its transpose copies back
            r = (r * m.weight.view(1, -1, 1, 1)).repeat_interleave(2, -2).repeat_interleave(2, -1)
            r = F.pad(r, (0, f.shape[-1] - r.shape[-1], 0, f.shape[-2] - r.shape[-2]))
        elif isinstance(m, ScaledTanh):  # not a rectifier: its own derivative
            r = r * 1.7159 * (2 / 3) * (1 - torch.tanh(2 * f / 3) ** 2)
        elif isinstance(m, nn.LocalResponseNorm):
            if method == "gradient" or lrn == "gradient":
                r = _vjp(m, f, r)
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            pass
        else:
            raise BadArgumentError(f"the sequential reference has no reverse step for {type(m).__name__}")
    return r[0]


__all__ = ["deconvnet_sequential", "rectifier_bound", "sequential_layers"]
