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

from ..core.errors import BadArgumentError, BadInputError, as_index
from ..core.finite import check_result
from ..core.layers import LayerInfo, LayerTap, cached_geometry, check_runnable, geometry_key, run_until_stopped
from ..core.progress import ProgressFn, each
from ..core.rules import ReverseRules
from ..core.state import model_device, model_dtype, preserved_model


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
               rules: ReverseRules | None = None, *, batched: bool = False, check: bool = True
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Runs ``model`` on ``x`` until every layer in ``layers`` has produced its output, and
    stops there (one forward for any number of layers), under ``rules`` (default: the
    plain gradient).

    Returns ({layer: its output for the image, (C, H, W) or (D,)}, the input leaf that
    requires grad); with ``batched`` the outputs keep the batch dimension. The input is
    cast to the model's device and dtype. With ``check`` a deconvnet/guided forward that
    fell back to the gradient somewhere is reported (:meth:`ReverseRules.check`: a
    warning, or an error when strict). Call inside ``preserved_model``: the model is set
    to eval.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    rules = rules or ReverseRules("gradient")
    check_runnable(model, rules=rules.method != "gradient")
    x = x.detach().to(model_device(model, x.device), model_dtype(model, x.dtype)).requires_grad_(True)
    def protect(_name: str, t: torch.Tensor) -> torch.Tensor:
        # the rest of the forward sees a copy: an in-place op above cannot change the output kept
        return t.clone()

    model.eval()
    with LayerTap(model, names, replace=protect, stop=True) as tap, torch.enable_grad(), rules:
        run_until_stopped(model, x)
    tap.check()
    if check:
        rules.check()
    found = {name: (t if batched else t[0]) for name, t in tap.outputs.items()}
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


def backproject(act: torch.Tensor, x: torch.Tensor, units: Activations, *, batch_size: int = 32,
                retain_graph: bool = False) -> torch.Tensor:
    """Projects each unit back to the input in batched backward passes.

    The seed at the layer is the unit's own activation with every other activation
    zero (Zeiler & Fergus). Returns (K, C_in, H_in, W_in). ``retain_graph`` keeps the
    forward graph for further projections from other layers of the same forward.
    """
    out = []
    k = len(units)
    for start in range(0, k, batch_size):
        sel = slice(start, min(start + batch_size, k))
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
                        rules: ReverseRules, *, which: Sequence[int] | None = None,
                        batch_size: int | None = None) -> torch.Tensor:
    """The same projections as :func:`backproject`, computed on crops of the input around
    each unit's receptive field: one batched forward and backward per crop size instead
    of a backward over the whole image. Exact: a unit depends on nothing outside its
    receptive field, and each crop starts on the unit grid.

    x: (N, C, H, W); unit i is read from image ``which[i]`` (default 0 for every unit),
    so the winners of many images and units share each forward. ``batch_size``: at
    most this many crops per forward (default all of one size).
    """
    h, w = x.shape[-2:]
    windows = _windows(info, units, h, w)
    which = [0] * len(units) if which is None else [int(i) for i in which]
    out = torch.zeros((len(units), *x.shape[1:]), dtype=x.dtype, device=x.device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (t, b, l_, r) in enumerate(windows):
        groups.setdefault((b - t, r - l_), []).append(i)
    step = batch_size or len(units) or 1
    chunks = [index[s:s + step] for index in groups.values() for s in range(0, len(index), step)]
    for index in chunks:
        crops = torch.cat([x[which[i]:which[i] + 1, :, windows[i][0]:windows[i][1], windows[i][2]:windows[i][3]]
                           for i in index])
        crops = crops.detach().requires_grad_(True)
        acts, leaf = forward_to(model, crops, layer, rules, batched=True, check=False)
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
    """Projections of ``units`` of ``layer``: through crops when the layer is local (every
    op from the input is known local, ``vizcnn.core.geometry``) and its receptive field is
    small against the image (see :data:`CROP_BELOW`), else in batched backward passes over
    the graph of the forward that found them."""
    h, w = x.shape[-2:]
    if act.dim() == 3 and len(units) > 0:
        info = cached_geometry(model, tuple(x.shape[1:]))[geometry_key(model, layer)]
        if info.local and info.rf[0] * info.rf[1] < CROP_BELOW * h * w:
            return backproject_cropped(model, x.to(leaf), layer, units, info, rules)
    return backproject(act, leaf, units)


def _is_sequence(channel) -> bool:
    if isinstance(channel, torch.Tensor):
        return channel.dim() > 0
    return isinstance(channel, Sequence) and not isinstance(channel, str) or \
        (hasattr(channel, "shape") and getattr(channel, "shape", ()) != ())


def _units(act: torch.Tensor, channel, position) -> tuple[Activations, bool]:
    single = not _is_sequence(channel)
    n = act.shape[0]
    try:
        channels = [as_index(channel, "channel")] if single else [as_index(c, "channel") for c in channel]
    except BadArgumentError as e:
        raise BadArgumentError(f"{e}: the layer has channels 0..{n - 1}") from None
    if not channels or any(not 0 <= c < n for c in channels):
        raise BadArgumentError(f"channel {channel!r} out of range: the layer has channels 0..{n - 1}")
    if position is None:
        return (strongest(act, channels) if act.dim() == 3 else
                Activations(torch.tensor(channels, device=act.device), *(torch.zeros(len(channels), dtype=torch.long,
                            device=act.device),) * 2, act[channels])), single
    if act.dim() != 3:
        raise BadArgumentError("position only applies to spatial layers")
    h, w = act.shape[1:]
    try:
        y, x_ = (as_index(v, "position") for v in position)
    except (BadArgumentError, TypeError, ValueError):
        raise BadArgumentError(f"position must be (y, x) integers in the layer's {h}×{w} map, got {position!r}") \
            from None
    if not (0 <= y < h and 0 <= x_ < w):
        raise BadArgumentError(f"position {tuple(position)!r} out of range: the layer's map is {h}×{w}")
    ys = torch.full((len(channels),), y, device=act.device)
    xs = torch.full((len(channels),), x_, device=act.device)
    return Activations(torch.tensor(channels, device=act.device), ys, xs, act[channels, y, x_]), single


def project(model: nn.Module, x: torch.Tensor, layer: str, channel: int | Sequence[int],
            position: tuple[int, int] | None = None, *, method: str = "deconvnet",
            lrn: str | None = None, strict: bool | None = None) -> torch.Tensor:
    """Projects activations of ``layer`` back to input space.

    x: one image (1, C, H, W) or (C, H, W), already normalised for the model.
    channel: an int (returns (C, H, W)) or a sequence (returns (K, C, H, W), one per
    channel); NumPy integers, integral floats and 0-d tensors are accepted.
    position: (y, x) in the layer's map; None picks each channel's strongest activation.

    Seed convention: a projection is seeded with the unit's own activation and zero
    everywhere else in the layer (Zeiler & Fergus), so ``method="gradient"`` returns
    ``a · ∂a/∂x`` for the unit's activation a, not the bare gradient ∂a/∂x.

    method: ``deconvnet`` (rectify the signal coming down at every rectifier),
    ``guided`` (also keep only where the forward passed: 0 < f < upper bound) or
    ``gradient`` (autograd's own backward: the true gradient, LRN included).
    lrn: how the deconvnet and guided backprop pass local response normalization:
    ``identity`` (the deconvnet convention, the default) or ``gradient``; it never
    changes ``method="gradient"``. strict: raise :class:`~vizcnn.core.errors.ActivationError`
    instead of warning (:class:`~vizcnn.core.errors.ActivationWarning`) when the deconvnet or
    guided rule caught no rectifier or the forward ran activations without a rule
    (LeakyReLU, SiLU, GELU, ...). ``lrn`` and ``strict`` default to
    :func:`vizcnn.core.rules.activation_policy`'s (``identity``, False).
    The model is left exactly as it was (mode, flags, no hooks), also on error.
    """
    x = check_input(x)
    rules = ReverseRules(method, lrn=lrn, strict=strict)
    with preserved_model(model):
        acts, leaf = forward_to(model, x, layer, rules)
        act = acts[layer]
        units, single = _units(act, channel, position)
        proj = _project(model, x, layer, act, leaf, units, rules)
    check_result(proj, f"the {method} projection of layer {layer!r} (backward)", dtype=act.dtype, strict=strict)
    return proj[0] if single else proj


def project_top(model: nn.Module, x: torch.Tensor, layer: str, k: int = 9, *, method: str = "deconvnet",
                lrn: str | None = None, strict: bool | None = None) -> tuple[Activations, torch.Tensor]:
    """The k strongest channels of ``layer`` in this image, each at its maximum, and their
    projections (K, C, H, W) — one forward, batched backward. Seeds, ``method``, ``lrn``
    and ``strict`` as in :func:`project`."""
    x = check_input(x)
    k = as_index(k, "k")
    rules = ReverseRules(method, lrn=lrn, strict=strict)
    with preserved_model(model):
        acts, leaf = forward_to(model, x, layer, rules)
        act = acts[layer]
        units = top_units(act, k)
        proj = _project(model, x, layer, act, leaf, units, rules)
    check_result(proj, f"the {method} projection of layer {layer!r} (backward)", dtype=act.dtype, strict=strict)
    return units, proj


def top_activations(model: nn.Module, x: torch.Tensor, layer: str, k: int = 9) -> Activations:
    """The k strongest channels of ``layer`` in this image, each at its maximum."""
    x = check_input(x)
    with preserved_model(model), torch.no_grad():
        acts, _ = forward_to(model, x, layer)
        return top_units(acts[layer].detach(), k)


def deconv_layers(model: nn.Module, x: torch.Tensor, layers: Sequence[str], *, top: int = 9,
                  channel: int | None = None, method: str = "deconvnet", lrn: str | None = None,
                  strict: bool | None = None, progress: ProgressFn | None = None
                  ) -> dict[str, tuple[Activations, torch.Tensor]]:
    """For each layer: its ``top`` strongest channels in the image (or just ``channel``),
    and their projections (K, C, H, W). One forward to the deepest layer serves all.
    ``lrn`` and ``strict`` as in :func:`vizcnn.methods.deconv.project`."""
    x = check_input(x)
    channel = None if channel is None else as_index(channel, "channel")
    with preserved_model(model):
        acts, leaf = forward_to(model, x, layers, ReverseRules(method, lrn=lrn, strict=strict))
        result = {}
        for i, name in enumerate(each(progress, "projecting", layers)):
            act = acts[name]
            if act.dim() != 3:
                raise BadArgumentError(f"layer {name!r} is not a spatial feature map (output {tuple(act.shape)})")
            if channel is not None:
                if not 0 <= channel < act.shape[0]:
                    raise BadArgumentError(f"channel {channel} out of range: layer {name!r} has channels "
                                           f"0..{act.shape[0] - 1}")
                units = strongest(act, [channel])
            else:
                units = top_units(act, top)
            proj = backproject(act, leaf, units, retain_graph=i < len(layers) - 1)
            check_result(proj, f"the {method} projection of layer {name!r} (backward)", dtype=act.dtype, strict=strict)
            result[name] = (units, proj.detach())
    return result


__all__ = ["Activations", "project", "project_top", "top_activations", "deconv_layers", "forward_to", "backproject",
           "backproject_cropped", "strongest", "top_units", "check_input", "CROP_BELOW"]
