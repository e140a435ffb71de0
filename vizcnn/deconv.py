"""Projecting feature activations back to pixel space (Zeiler & Fergus 2014, §2.1).

One forward per image, stopped at the target layer; many neurons per backward
(``torch.autograd.grad(..., is_grads_batched=True)``); gradients only with respect
to the input, never the parameters.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import BadArgumentError, BadInputError
from .extract import StopForward, run_until_stopped
from .layers import LayerInfo, cached_geometry, resolve_layer
from .rules import ReverseRules
from .state import preserved_model


@dataclass(frozen=True)
class Activations:
    """Chosen units of one layer in one image; 1-D tensors of equal length."""

    channel: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    value: torch.Tensor

    def __len__(self) -> int:
        return len(self.channel)


def check_input(x: torch.Tensor) -> torch.Tensor:
    """One image as (1, C, H, W) (a (C, H, W) tensor gains the batch dimension)."""
    if not isinstance(x, torch.Tensor):
        raise BadArgumentError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise BadArgumentError(f"input must be one image shaped (1, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise BadArgumentError(f"input must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise BadInputError("input holds NaN or Inf values")
    return x


def forward_to(model: nn.Module, x: torch.Tensor, layers: str | Sequence[str],
               rules: ReverseRules | None = None, *, batched: bool = False
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Runs ``model`` on ``x`` until every layer in ``layers`` has produced its output, and
    stops there (one forward for any number of layers).

    Returns ({layer: its output for the image, (C, H, W) or (D,)}, the input leaf that
    requires grad); with ``batched`` the outputs keep the batch dimension. Call inside
    ``preserved_model``: the model is set to eval.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    targets = {name: resolve_layer(model, name) for name in names}
    modules = dict(model.named_modules())
    device = next((p.device for p in model.parameters()), x.device)
    x = x.detach().to(device).requires_grad_(True)
    seen: dict[str, list[torch.Tensor]] = {path: [] for path, _ in targets.values()}
    found: dict[str, torch.Tensor] = {}

    def hook(path: str):
        def record(_m, _inp, out):
            seen[path].append(out[0] if isinstance(out, (tuple, list)) else out)
            for name, (p, call) in targets.items():
                if p == path and call == len(seen[path]) - 1:
                    found[name] = seen[path][call] if batched else seen[path][call][0]
            if len(found) == len(targets):
                raise StopForward
        return record

    model.eval()
    handles = [modules[path].register_forward_hook(hook(path)) for path in seen]
    try:
        with torch.enable_grad(), (rules or ReverseRules("gradient")):
            run_until_stopped(model, x)
    finally:
        for h in handles:
            h.remove()
    for name, (path, call) in targets.items():
        if name not in found:
            raise BadArgumentError(f"layer {name!r} ran {len(seen[path])} time(s) in the forward pass; "
                                   f"call index {call} does not exist")
    return found, x


def strongest(act: torch.Tensor, channels: Sequence[int]) -> Activations:
    """Each channel's strongest activation (first in row-major order on ties)."""
    act = act.detach()
    flat = act[list(channels)].flatten(1)
    value, index = flat.max(dim=1)
    width = act.shape[-1]
    return Activations(torch.as_tensor(list(channels), device=act.device), index // width, index % width, value)


def top_units(act: torch.Tensor, k: int) -> Activations:
    """The k strongest channels of a (C, H, W) map, each at its maximum; ties go to the
    lower channel index."""
    if act.dim() != 3:
        raise BadArgumentError(f"top activations need a spatial layer (C, H, W); this layer gives {tuple(act.shape)}")
    if not isinstance(k, int) or k < 1:
        raise BadArgumentError(f"k must be a positive integer, got {k!r}")
    best = strongest(act, range(act.shape[0]))
    order = torch.sort(best.value, descending=True, stable=True).indices[:k]
    return Activations(best.channel[order], best.y[order], best.x[order], best.value[order])


def backproject(act: torch.Tensor, x: torch.Tensor, units: Activations, *, chunk: int = 32,
                retain_graph: bool = False) -> torch.Tensor:
    """Projects each unit back to the input in batched backward passes.

    The seed at the layer is the unit's own activation with every other activation
    zero (Zeiler & Fergus). Returns (K, C_in, H_in, W_in). ``retain_graph`` keeps the
    forward graph for further projections from other layers of the same forward.
    """
    out = []
    k = len(units)
    for start in range(0, k, chunk):
        sel = slice(start, min(start + chunk, k))
        n = sel.stop - sel.start
        seeds = torch.zeros((n, *act.shape), dtype=act.dtype, device=act.device)
        index = torch.arange(n, device=act.device)
        if act.dim() == 3:
            seeds[index, units.channel[sel], units.y[sel], units.x[sel]] = units.value[sel].detach()
        else:
            seeds[index, units.channel[sel]] = units.value[sel].detach()
        keep = retain_graph or sel.stop < k
        if n == 1:  # vmap's set-up costs more than it saves for one unit
            (grad,) = torch.autograd.grad(act, x, seeds[0], retain_graph=keep)
        else:
            (grad,) = torch.autograd.grad(act, x, seeds, retain_graph=keep, is_grads_batched=True)
        out.append(grad[:, 0] if n > 1 else grad)
    return torch.cat(out)


#: Project through a crop of the input when the units' receptive field covers less than
#: this fraction of the image: below it, the smaller forward and backward pay for the
#: extra (batched) forward over the crops.
CROP_BELOW = 0.25


def _windows(info: LayerInfo, units: Activations, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """For each unit, the input window (top, bottom, left, right) that holds its receptive
    field and starts on a multiple of the layer's jump, so the crop's grid of units lines
    up with the image's at every layer. Windows at the border end at the border, where
    the model's own padding applies as it does on the whole image."""
    windows = []
    for y, x in zip(units.y.tolist(), units.x.tolist()):
        top, bottom, left, right = info.box(y, x, height, width)
        top, left = top - top % info.jump[0], left - left % info.jump[1]
        windows.append((top, bottom, left, right))
    return windows


def backproject_cropped(model: nn.Module, x: torch.Tensor, layer: str, units: Activations, info: LayerInfo,
                        rules: ReverseRules) -> torch.Tensor:
    """The same projections as :func:`backproject`, computed on crops of the input around
    each unit's receptive field: one batched forward and backward per crop size instead
    of a backward over the whole image. Exact: a unit depends on nothing outside its
    receptive field, and each crop starts on the unit grid.
    """
    h, w = x.shape[-2:]
    windows = _windows(info, units, h, w)
    out = torch.zeros((len(units), *x.shape[1:]), dtype=x.dtype, device=x.device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (t, b, l_, r) in enumerate(windows):
        groups.setdefault((b - t, r - l_), []).append(i)
    for index in groups.values():
        crops = torch.cat([x[:, :, windows[i][0]:windows[i][1], windows[i][2]:windows[i][3]] for i in index])
        crops = crops.detach().requires_grad_(True)
        acts, leaf = forward_to(model, crops, layer, rules, batched=True)
        act = acts[layer]
        n = torch.arange(len(index), device=x.device)
        ys = units.y[index] - torch.tensor([windows[i][0] // info.jump[0] for i in index], device=x.device)
        xs = units.x[index] - torch.tensor([windows[i][2] // info.jump[1] for i in index], device=x.device)
        seeds = torch.zeros_like(act)
        seeds[n, units.channel[index], ys, xs] = units.value[index].detach()
        (grad,) = torch.autograd.grad(act, leaf, seeds)
        for j, i in enumerate(index):
            t, b, l_, r = windows[i]
            out[i, :, t:b, l_:r] = grad[j]
    return out


def _project(model: nn.Module, x: torch.Tensor, layer: str, act: torch.Tensor, leaf: torch.Tensor,
             units: Activations, rules: ReverseRules) -> torch.Tensor:
    """Projections of ``units`` of ``layer``: through crops when their receptive field is
    small against the image (see :data:`CROP_BELOW`), else in batched backward passes
    over the graph of the forward that found them."""
    h, w = x.shape[-2:]
    if act.dim() == 3 and len(units) > 0:
        info = cached_geometry(model, tuple(x.shape[1:]))[layer]
        if info.rf[0] * info.rf[1] < CROP_BELOW * h * w:
            return backproject_cropped(model, x.to(leaf.device), layer, units, info, rules)
    return backproject(act, leaf, units)


def _units(act: torch.Tensor, channel, position) -> tuple[Activations, bool]:
    single = isinstance(channel, int)
    channels = [channel] if single else list(channel)
    n = act.shape[0]
    if not channels or any(not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < n for c in channels):
        raise BadArgumentError(f"channel {channel!r} out of range: the layer has channels 0..{n - 1}")
    if position is None:
        return (strongest(act, channels) if act.dim() == 3 else
                Activations(torch.tensor(channels, device=act.device), *(torch.zeros(len(channels), dtype=torch.long,
                            device=act.device),) * 2, act[channels])), single
    if act.dim() != 3:
        raise BadArgumentError("position only applies to spatial layers")
    y, x_ = position
    h, w = act.shape[1:]
    if not (isinstance(y, int) and isinstance(x_, int) and 0 <= y < h and 0 <= x_ < w):
        raise BadArgumentError(f"position {tuple(position)!r} out of range: the layer's map is {h}×{w}")
    ys = torch.full((len(channels),), y, device=act.device)
    xs = torch.full((len(channels),), x_, device=act.device)
    return Activations(torch.tensor(channels, device=act.device), ys, xs, act[channels, y, x_]), single


def project(model: nn.Module, x: torch.Tensor, layer: str, channel: int | Sequence[int],
            position: tuple[int, int] | None = None, *, method: str = "deconvnet",
            lrn: str = "identity") -> torch.Tensor:
    """Projects activations of ``layer`` back to input space.

    x: one image (1, C, H, W) or (C, H, W), already normalised for the model.
    channel: an int (returns (C, H, W)) or a sequence (returns (K, C, H, W), one per channel).
    position: (y, x) in the layer's map; None picks each channel's strongest activation.
    method: ``deconvnet`` | ``guided`` | ``gradient``. lrn: ``identity`` | ``gradient``.
    The model is left exactly as it was (mode, flags, no hooks), also on error.
    """
    x = check_input(x)
    rules = ReverseRules(method, lrn=lrn)
    with preserved_model(model):
        acts, leaf = forward_to(model, x, layer, rules)
        act = acts[layer]
        units, single = _units(act, channel, position)
        proj = _project(model, x, layer, act, leaf, units, rules)
    return proj[0] if single else proj


def project_top(model: nn.Module, x: torch.Tensor, layer: str, k: int = 9, *, method: str = "deconvnet",
                lrn: str = "identity") -> tuple[Activations, torch.Tensor]:
    """The k strongest channels of ``layer`` in this image, each at its maximum, and their
    projections (K, C, H, W) — one forward, batched backward."""
    x = check_input(x)
    rules = ReverseRules(method, lrn=lrn)
    with preserved_model(model):
        acts, leaf = forward_to(model, x, layer, rules)
        act = acts[layer]
        units = top_units(act, k)
        proj = _project(model, x, layer, act, leaf, units, rules)
    return units, proj


def top_activations(model: nn.Module, x: torch.Tensor, layer: str, k: int = 9) -> Activations:
    """The k strongest channels of ``layer`` in this image, each at its maximum."""
    x = check_input(x)
    with preserved_model(model), torch.no_grad():
        acts, _ = forward_to(model, x, layer)
        return top_units(acts[layer].detach(), k)
