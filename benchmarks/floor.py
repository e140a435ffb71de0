"""The arithmetic floor of a pass: its FLOPs over the best throughput this machine showed
in the same run. A true lower bound on the time of any implementation that does at
least those FLOPs: nothing computes faster than the fastest dense kernel measured.

* :func:`peak_flops_per_second`: the best of a dense float32 matmul and every conv layer
  of the benchmarked models, each timed at its own shape (batch 1 and batch 8).
* :func:`projection_flops`: what k deconvnet projections of an image's top-k units of one
  layer cost at least: one forward truncated at the layer (it finds the units) plus k
  input-gradient backward passes (no weight gradients), or, where vizcnn projects
  through receptive-field crops, plus k forward + backward passes over the crops,
  whichever is smaller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from vizcnn.core.layers import cached_geometry, geometry_key
from vizcnn.methods.deconv import CROP_BELOW, Activations, _windows, forward_to

from .common import matmul_flops_per_second, median_seconds


def conv_flops_per_second(model: nn.Module, input_size: tuple[int, int, int], device: torch.device) -> float:
    """The best FLOP/s of ``model``'s conv layers, each run alone at its own input shape
    (batch 1 and 8), forward only (2 FLOPs per multiply-add)."""
    shapes: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda m, inp: shapes.append((m, tuple(inp[0].shape[1:]))))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    best = 0.0
    for conv, shape in shapes:
        for batch in (1, 8):
            x = torch.randn(batch, *shape, device=device)
            with torch.no_grad():
                out = conv(x)
                seconds = median_seconds(lambda: F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding,
                                                          conv.dilation, conv.groups), device, repeats=3)
            macs = out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
            best = max(best, 2 * macs / seconds)
    return best


def peak_flops_per_second(device: torch.device, models: list[tuple[nn.Module, tuple[int, int, int]]]) -> float:
    """The best dense throughput measured now: matmul or any conv layer of ``models``."""
    return max([matmul_flops_per_second(device)] + [conv_flops_per_second(m, s, device) for m, s in models])


class CountFlops(TorchDispatchMode):
    """Counts FLOPs as FlopCounterMode does (its registry: matmuls and convolutions, 2 per
    multiply-add) without its module tracker, which cannot follow ``autograd.grad``: so
    vizcnn's own batched projections can be counted too."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def _counted(fn) -> int:
    counter = CountFlops()
    with counter:
        fn()
    return counter.total


def forward_backward_flops(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[int, int]:
    """(FLOPs of one forward truncated at ``layer``, FLOPs of one input-gradient backward
    from one of its units) for input x (1, C, H, W); parameters get no gradients."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        state = {}

        def forward():
            state["acts"], _ = forward_to(model, x, layer, check=False)

        fwd = _counted(forward)

        def backward():
            act = state["acts"][layer]
            seed = torch.zeros_like(act)
            seed.view(-1)[int(act.detach().argmax())] = 1
            act.backward(seed)

        both = _counted(lambda: (forward(), backward()))
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return fwd, both - fwd


def projection_flops(model: nn.Module, x: torch.Tensor, layer: str, k: int, units: Activations | None = None) -> int:
    """The FLOPs k projections of ``layer`` need at least (module docstring). With
    ``units`` (the k units projected), the crop floor sums each unit's own window (the
    one vizcnn crops); without, it takes k times the smallest (the corner unit's)."""
    fwd, bwd = forward_backward_flops(model, x, layer)
    whole = fwd + k * bwd
    info = cached_geometry(model, tuple(x.shape[1:]))[geometry_key(model, layer)]
    h, w = x.shape[-2:]
    if len(info.shape) == 3 and info.rf[0] * info.rf[1] < CROP_BELOW * h * w:
        sizes: dict[tuple[int, int], int] = {}
        windows = _windows(info, units, h, w) if units is not None else [info.box(0, 0, h, w)] * k
        total = fwd  # the forward that finds the units (the benchmarks project an image's top-k)
        for top, bottom, left, right in windows:
            size = (bottom - top, right - left)
            if size not in sizes:
                sizes[size] = sum(forward_backward_flops(model, x[:, :, :size[0], :size[1]], layer))
            total += sizes[size]
        return min(whole, total)
    return whole


def floor_ms(flops: int, flops_per_s: float) -> float:
    return flops / flops_per_s * 1e3


__all__ = ["CountFlops", "peak_flops_per_second", "conv_flops_per_second", "forward_backward_flops", "projection_flops",
           "floor_ms"]
