"""Occlusion sensitivity (Zeiler & Fergus 2014, §4.2 / Fig. 7), with exact incremental inference.

A grey square slides over the image; for every occluder position one forward pass
gives all four of the paper's panels at once:

(b) the total activation of the feature map (of ``layer``, by default the last conv
    layer, "layer 5") that is strongest on the unoccluded image,
(c) that map's deconvnet projection on the unoccluded image (one extra pass),
(d) the probability of the chosen class (default: the unoccluded image's top class),
(e) the most probable class.

Positions follow captum's ``Occlusion``: the occluder's top-left corner steps by
``stride`` from 0, ``ceil((H - window) / stride) + 1`` positions per side, so a 224-px
image with a 32-px window and stride 8 gives 25 x 25 positions; when the stride does
not divide ``H - window`` the last square runs past the bottom/right edge and is
clipped there, so every pixel is occluded by some position. ``fill`` is the occluder's value in
the model's *normalised* input space: the default 0 is the dataset mean, i.e. the
paper's grey square.

Incremental inference (Nakandala, Kumar & Papakonstantinou, SIGMOD 2019, "Krypton"):
an occluder changes only the part of each layer's maps that its receptive field
reaches. For models whose forward is ``classifier(flatten([avgpool](features(x))))``
with ``features`` a plain ``nn.Sequential`` of convolutions, max/avg pools and
pointwise layers (ReLU & co., LRN, eval-mode batch-norm, dropout) — AlexNet, ZFNet,
VGG — the unoccluded image's maps are cached at every layer and, per position, each
layer is recomputed only on the region its changed input reaches (the input patch is
cut from the cached map, the previous layer's recomputed region pasted in, and the
layer's own kernel/stride/padding applied; pooling padding and ceil mode are
reproduced with an explicit -inf border). Regions have one size per layer for all
positions (border positions shift theirs inward), so all positions of a batch run as
one batched call per layer. Above ``features`` the model runs normally. The result
equals full recomputation up to float rounding (tests/test_occlusion.py); any other
model (ResNet, GoogLeNet, your own) falls back to batched full recomputation.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..core.errors import BadArgumentError, as_index
from ..core.layers import LayerTap, check_runnable, geometry_key, last_conv_layer, layer_geometry
from ..core.layers import run_until_stopped as _run
from ..core.state import model_device, model_dtype, preserved_model
from .deconv import check_input, project, top_units
from .occlusion_engine import NotIncremental, incremental_engine, occluder_mask

#: Window and stride as fractions of the image side when not given: 32 and 8 px at 224
#: (25 × 25 positions). The one occlusion default: the saliency method uses it too.
DEFAULT_WINDOW = 32 / 224
DEFAULT_STRIDE = 8 / 224


@dataclass(frozen=True)
class OcclusionResult:
    """The four panels of Fig. 7 for one image, each an (H', W') map over occluder positions.

    ``tops``/``lefts``: the occluder's top-left corner (input px) per map row/column.
    ``activation`` (b): total activation of ``layer``'s channel ``channel`` (the map that is
    strongest on the unoccluded image; its strongest unit is at ``unit`` = (y, x) in the map).
    ``projection`` (c): that unit's deconvnet projection (C, H, W) on the unoccluded image,
    ``projection_box`` its receptive field (top, bottom, left, right), or None if not asked.
    ``probability`` (d): softmax probability of class ``target``; ``top_class`` (e) and
    ``top_probability``: the most probable class per position. ``*_clean``: the same on the
    unoccluded image. ``method``: "incremental" or "full". ``timings``: seconds per stage.
    """

    window: tuple[int, int]
    stride: tuple[int, int]
    tops: torch.Tensor
    lefts: torch.Tensor
    fill: float | tuple[float, ...]
    layer: str
    channel: int
    unit: tuple[int, int]
    activation: torch.Tensor
    activation_clean: float
    projection: torch.Tensor | None
    projection_box: tuple[int, int, int, int] | None
    target: int
    probability: torch.Tensor
    probability_clean: float
    top_class: torch.Tensor
    top_probability: torch.Tensor
    clean_class: int
    clean_top: list[tuple[int, float]]
    method: str
    timings: dict[str, float] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # the image's (H, W): edge squares are clipped to it

    @property
    def drop(self) -> torch.Tensor:
        """Probability drop of the target class, (H', W'): high where the occluder hurts."""
        return self.probability_clean - self.probability

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.tops), len(self.lefts)

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """The occluder square at map position (i, j): (top, bottom, left, right), exclusive,
        clipped to the image (the last row/column of positions may run past its edge)."""
        top, left = int(self.tops[i]), int(self.lefts[j])
        bottom, right = top + self.window[0], left + self.window[1]
        if self.size is not None:
            bottom, right = min(bottom, self.size[0]), min(right, self.size[1])
        return top, bottom, left, right


# --------------------------------------------------------------------------- arguments

def _pair(value, name: str) -> tuple[int, int]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in items):
        raise BadArgumentError(f"{name} must be a positive integer or a (height, width) pair, got {value!r}")
    if any(v < 1 for v in items):
        raise BadArgumentError(f"{name} must be positive, got {value!r}")
    return int(items[0]), int(items[1])


def _geometry(size: tuple[int, int], window, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    h, w = size
    if window is None:
        window = (max(1, round(h * DEFAULT_WINDOW)), max(1, round(w * DEFAULT_WINDOW)))
    if stride is None:
        stride = (max(1, round(h * DEFAULT_STRIDE)), max(1, round(w * DEFAULT_STRIDE)))
    window, stride = _pair(window, "occlusion window"), _pair(stride, "occlusion stride")
    if window[0] > h or window[1] > w:
        raise BadArgumentError(f"occlusion window {window[0]}×{window[1]} is larger than the {h}×{w} image")
    return window, stride


def positions(size: tuple[int, int], window, stride) -> tuple[torch.Tensor, torch.Tensor]:
    """Occluder top rows and left columns, as 1-D long tensors: captum's convention,
    ``k · stride`` for k = 0 .. ceil((side - window) / stride), the last square clipped
    at the edge when the stride does not divide ``side - window``."""
    (wh, ww), (sh, sw) = _geometry(size, window, stride)
    return (torch.arange(0, -(-(size[0] - wh) // sh) + 1) * sh,
            torch.arange(0, -(-(size[1] - ww) // sw) + 1) * sw)


def _fill(fill, channels: int) -> tuple[torch.Tensor, float | tuple[float, ...]]:
    values = fill.tolist() if isinstance(fill, torch.Tensor) else fill
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [float(values)] * channels
        shown: float | tuple[float, ...] = float(fill)
    elif isinstance(values, (list, tuple)) and len(values) == channels and \
            all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        shown = tuple(float(v) for v in values)
    else:
        raise BadArgumentError(f"fill must be a number or {channels} numbers (one per channel), got {fill!r}")
    if not all(math.isfinite(v) for v in values):
        raise BadArgumentError(f"fill must be finite, got {fill!r}")
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1), shown


def default_layer(model: nn.Module, input_size: tuple[int, int, int]) -> str:
    """The model's last conv feature map (:func:`vizcnn.core.layers.last_conv_layer`: ``conv5``
    for the AlexNet family and ZFNet, ``conv5_3`` for VGG-16, ``layer4``, ``inception5b``)."""
    return last_conv_layer(model, input_size)


# --------------------------------------------------------------------------- shared helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- incremental engine


# --------------------------------------------------------------------------- the public entry points

def occlude(model: nn.Module, x: torch.Tensor, *, window: int | tuple[int, int] | None = None,
            stride: int | tuple[int, int] | None = None, layer: str | None = None, target: int | None = None,
            fill: float | Sequence[float] = 0.0, batch_size: int = 64, incremental: str | bool = "auto",
            projection: bool = True) -> OcclusionResult:
    """Occlusion sensitivity, all four panels of Zeiler & Fergus Fig. 7 from one sweep.

    x: one normalised image (1, C, H, W) or (C, H, W). window, stride: px (int or
    (height, width)); default 1/7 and 1/28 of the image side (32 and 8 px at 224², i.e.
    25 × 25 positions). layer: the map of panel (b) (a friendly name or module path;
    default :func:`default_layer`). target: class index of panel (d) (default: the
    unoccluded image's top class). fill: the occluder's value in normalised input space
    (0 = the dataset mean, the paper's grey; or one value per channel). batch_size:
    occluded images per forward. incremental: "auto" (incremental where the model allows,
    else full recomputation), True (incremental or BadArgumentError), False (full).
    projection: compute panel (c) (one forward + backward).

    Runs forward only, under no_grad, on the model's device; the model is left as it was.
    """
    x = check_input(x)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    if incremental not in ("auto", True, False):
        raise BadArgumentError(f"incremental must be 'auto', True or False, got {incremental!r}")
    if target is not None:
        target = as_index(target, "target")
        if target < 0:
            raise BadArgumentError(f"target must be a non-negative class index, got {target!r}")
    c, h, w = x.shape[1:]
    window, stride = _geometry((h, w), window, stride)
    fill_t, fill_shown = _fill(fill, c)
    layer = layer or default_layer(model, (c, h, w))
    check_runnable(model)
    tap = LayerTap(model, layer, record=lambda _n, t: t.detach().clone())
    (path, call), = tap.targets.values()
    device = model_device(model, x.device)
    x = x.detach().to(device=device, dtype=model_dtype(model, x.dtype))
    tops, lefts = positions((h, w), window, stride)
    timings: dict[str, float] = {}

    with preserved_model(model), torch.no_grad():
        model.eval()
        _sync(device)
        t0 = time.perf_counter()
        with tap:
            logits = _run(model, x)  # shape errors from inputs the model cannot take: BadInputError
        tap.check()
        fmap = tap[layer][0]
        if fmap.dim() != 3:
            raise BadArgumentError(f"panel (b) needs a spatial feature map; layer {layer!r} gives "
                                   f"{tuple(fmap.shape)}")
        if logits.dim() != 2:
            raise BadArgumentError(f"the model's output must be (N, classes) scores, got {tuple(logits.shape)}")
        probs = logits.float().softmax(1)[0]
        classes = probs.shape[0]
        if target is not None and target >= classes:
            raise BadArgumentError(f"target {target} out of range: the classifier has classes 0..{classes - 1}")
        clean_class = int(probs.argmax())
        target = clean_class if target is None else int(target)
        best = top_units(fmap, 1)
        channel, unit = int(best.channel[0]), (int(best.y[0]), int(best.x[0]))
        top5 = probs.topk(min(5, classes))
        _sync(device)
        timings["clean"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        engine, method = None, "full"
        if incremental in ("auto", True):
            try:
                engine = incremental_engine(model, x, logits, path, call, window, tops, lefts, fill_t)
                method = "incremental"
            except NotIncremental as e:
                if incremental is True:
                    raise BadArgumentError(f"incremental occlusion does not apply to {type(model).__name__}: "
                                           f"{e}") from None
        n = len(tops) * len(lefts)
        grid = torch.arange(n)
        out_logits, totals = [], []
        if engine is not None:
            for start in range(0, n, batch_size):
                sel = grid[start:start + batch_size]
                last, total = engine.run(sel // len(lefts), sel % len(lefts), channel)
                out_logits.append(engine.tail(last).float())
                totals.append(total.float())
        else:
            out_logits, totals = _full(model, x, tops, lefts, window, fill_t, batch_size, layer, channel)
        scores = torch.cat(out_logits).softmax(1)
        total = torch.cat(totals)
        _sync(device)
        timings["occlusion"] = time.perf_counter() - t0

    shape = (len(tops), len(lefts))
    proj, box = None, None
    if projection:

        t0 = time.perf_counter()
        proj = project(model, x, layer, channel, unit).detach()
        info = layer_geometry(model, (c, h, w)).get(geometry_key(model, layer))
        box = info.box(*unit, h, w) if info is not None else (0, h, 0, w)
        _sync(device)
        timings["projection"] = time.perf_counter() - t0
    top_p, top_c = scores.max(1)
    return OcclusionResult(
        window=window, stride=stride, tops=tops, lefts=lefts, fill=fill_shown, layer=layer, channel=channel,
        unit=unit, activation=total.view(shape).cpu(), activation_clean=float(fmap[channel].sum()),
        projection=None if proj is None else proj.cpu(), projection_box=box, target=target,
        probability=scores[:, target].view(shape).cpu(), probability_clean=float(probs[target]),
        top_class=top_c.view(shape).cpu(), top_probability=top_p.view(shape).cpu(), clean_class=clean_class,
        clean_top=[(int(i), float(p)) for p, i in zip(top5.values, top5.indices)], method=method,
        timings={k: round(v, 4) for k, v in timings.items()}, size=(h, w))


def occlusion_map(model: nn.Module, x: torch.Tensor, target: int | None = None, *,
                  window: int | tuple[int, int] | None = None, stride: int | tuple[int, int] | None = None,
                  fill: float | Sequence[float] = 0.0, batch_size: int = 64) -> torch.Tensor:
    """The probability drop of class ``target`` (default: the top class) per occluder
    position, (H', W'): p(unoccluded) - p(occluded); high where the occluder hurts.
    Same arguments as :func:`occlude` (incremental where the model allows)."""
    return occlude(model, x, window=window, stride=stride, target=target, fill=fill, batch_size=batch_size,
                   projection=False).drop


def _full(model, x, tops, lefts, window, fill, batch_size, layer, channel):
    """Full recomputation: every occluded image through the whole model, in batches."""
    device = x.device
    h, w = x.shape[-2:]
    fill = fill.to(device=device, dtype=x.dtype)
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    ty, tx = tops.to(device), lefts.to(device)
    n = len(tops) * len(lefts)
    grid = torch.arange(n, device=device)
    out_logits, totals = [], []
    with LayerTap(model, layer, record=lambda _n, t: t[:, channel].sum(dim=(1, 2), dtype=torch.float64)) as tap:
        for start in range(0, n, batch_size):
            sel = grid[start:start + batch_size]
            b = len(sel)
            mask = occluder_mask(rows.expand(b, -1), cols.expand(b, -1), ty[sel // len(lefts)],
                                  tx[sel % len(lefts)], window)
            out_logits.append(model(torch.where(mask, fill, x)).float())
            totals.append(tap[layer].float())
    return out_logits, totals


__all__ = ["OcclusionResult", "occlude", "occlusion_map", "positions", "default_layer", "DEFAULT_WINDOW",
           "DEFAULT_STRIDE"]
