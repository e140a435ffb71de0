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
import torch.nn.functional as F
from torch import nn

from .deconv import check_input, top_units
from .errors import BadArgumentError, BadInputError
from .errors import as_index
from .layers import ELEMENTWISE, LayerTap, check_runnable, geometry_key, last_conv_layer, layer_geometry
from .layers import run_until_stopped as _run
from .state import model_device, model_dtype, preserved_model

#: Window and stride as fractions of the image side when not given: 32 and 8 px at 224.
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
    """The model's last conv feature map (:func:`vizcnn.layers.last_conv_layer`: ``conv5``
    for the AlexNet family and ZFNet, ``conv5_3`` for VGG-16, ``layer4``, ``inception5b``)."""
    return last_conv_layer(model, input_size)


# --------------------------------------------------------------------------- shared helpers

def _crops(src: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crops (B, C, h, w) of one map (1, C, H, W) at corners (ys[b], xs[b]), in one indexing
    op on the map's (h, w)-window view (few large ops beat many small ones on busy CPUs)."""
    windows = src[0].unfold(1, h, 1).unfold(2, w, 1)  # (C, H-h+1, W-w+1, h, w), a view
    return windows.permute(1, 2, 0, 3, 4)[ys, xs]


def _paste(dst: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, values: torch.Tensor) -> None:
    """Writes values[b] (C, h, w) into dst[b] (C, H, W) at corner (ys[b], xs[b]), in one scatter."""
    b, c, h, w = values.shape
    width = dst.shape[-1]
    rows = ys[:, None] + torch.arange(h, device=ys.device)
    cols = xs[:, None] + torch.arange(w, device=xs.device)
    flat = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, h * w)
    dst.view(b, c, -1).scatter_(2, flat.expand(b, c, h * w), values.reshape(b, c, h * w))


def _occluder_mask(rows: torch.Tensor, cols: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor,
                   window: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) True where pixel (rows[b], cols[b]) lies under occluder b."""
    in_rows = (rows >= tops[:, None]) & (rows < tops[:, None] + window[0])
    in_cols = (cols >= lefts[:, None]) & (cols < lefts[:, None] + window[1])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- incremental engine

class NotIncremental(Exception):
    """The model's structure does not allow exact incremental occlusion (the reason says why)."""


@dataclass(frozen=True)
class _Spatial:
    kind: str  # conv | max | avg
    module: nn.Module
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]  # top/left padding; the far side follows from the cached map sizes
    dilation: tuple[int, int]
    pad_value: float

    @property
    def extent(self) -> tuple[int, int]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        m = self.module
        if self.kind == "conv":
            return F.conv2d(window, m.weight, m.bias, self.stride, 0, self.dilation, m.groups)
        if self.kind == "max":
            return F.max_pool2d(window, self.kernel, self.stride, 0, self.dilation)
        return F.avg_pool2d(window, self.kernel, self.stride, 0)


def _twice(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _step(name: str, m: nn.Module) -> _Spatial | None:
    """How one module of ``features`` is recomputed: a spatial step, or None (pointwise)."""
    t = type(m)
    if t is nn.Conv2d:
        if m.padding_mode != "zeros":
            raise NotIncremental(f"features.{name}: padding_mode {m.padding_mode!r}")
        k, d = _twice(m.kernel_size), _twice(m.dilation)
        if isinstance(m.padding, str):
            pad = (0, 0) if m.padding == "valid" else tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
        else:
            pad = _twice(m.padding)
        step = _Spatial("conv", m, k, _twice(m.stride), pad, d, 0.0)
    elif t is nn.MaxPool2d:
        if m.return_indices:
            raise NotIncremental(f"features.{name}: max pool returning indices")
        k = _twice(m.kernel_size)
        step = _Spatial("max", m, k, _twice(m.stride or m.kernel_size), _twice(m.padding), _twice(m.dilation),
                        float("-inf"))
    elif t is nn.AvgPool2d:
        k, pad = _twice(m.kernel_size), _twice(m.padding)
        if m.ceil_mode or m.divisor_override is not None or (any(pad) and not m.count_include_pad):
            raise NotIncremental(f"features.{name}: average pool with ceil mode, a divisor override or "
                                 f"padding excluded from the count")
        step = _Spatial("avg", m, k, _twice(m.stride or m.kernel_size), pad, (1, 1), 0.0)
    elif (t in ELEMENTWISE and not issubclass(t, nn.modules.batchnorm._BatchNorm)) or \
            (t is nn.BatchNorm2d and m.track_running_stats and m.running_mean is not None):
        return None
    else:
        raise NotIncremental(f"features.{name} is a {t.__name__}, which is not a convolution, pool or "
                             f"pointwise layer")
    if any(s > e for s, e in zip(step.stride, step.extent)):
        raise NotIncremental(f"features.{name}: stride larger than the kernel leaves gaps")
    return step


@dataclass(frozen=True)
class _Plan:
    """One spatial dimension of one step: where each position's recomputed region lies.

    Region of the step's output: [start, start + size). Window of its input needed to
    compute that region: [wstart, wstart + wsize) (may reach into padding). ``offset``:
    where the previous step's region sits inside that window.
    """

    start: np.ndarray
    size: int
    wstart: np.ndarray
    wsize: int
    offset: np.ndarray


def _plan_dim(corner: np.ndarray, window: int, sizes: list[int], steps: list[_Spatial | None],
              full: set[int], d: int) -> tuple[tuple[np.ndarray, int], list[_Plan | None]]:
    """Plans one dimension (d = 0 rows, 1 columns) for every occluder corner.

    sizes[i]: the side of step i's input map (sizes[-1]: the last output). ``full``: maps
    (indices into sizes) that must be right everywhere, not just where later steps look.
    Returns the input region (starts, size) and one _Plan per spatial step.
    """
    n = len(steps)
    # live[i]: map i matters only on [0, live[i]) (floor-mode pools and convs drop the far edge).
    live = list(sizes)
    for i in reversed(range(n)):
        s = steps[i]
        if i not in full:
            used = live[i + 1] if s is None else (live[i + 1] - 1) * s.stride[d] - s.padding[d] + s.extent[d]
            live[i] = min(sizes[i], used)
    size = min(window, live[0])
    start = np.clip(corner, 0, live[0] - size)
    first = (start, size)
    plans: list[_Plan | None] = []
    for i, s in enumerate(steps):
        if s is None:
            plans.append(None)
            continue
        k, st, p = s.extent[d], s.stride[d], s.padding[d]
        lo = np.maximum(-((-(start + p - k + 1)) // st), 0)  # ceil division
        hi = np.minimum((start + size - 1 + p) // st, live[i + 1] - 1)
        out = min(int((hi - lo).max()) + 1, live[i + 1])
        new = np.clip(lo, 0, live[i + 1] - out)
        wstart, wsize = new * st - p, (out - 1) * st + k
        if (wstart > start).any() or (wstart + wsize < start + size).any():
            raise NotIncremental("a recomputed region does not cover the changed region")  # never seen
        plans.append(_Plan(new, out, wstart, wsize, start - wstart))
        start, size = new, out
    return first, plans


class IncrementalOcclusion:
    """Exact incremental occlusion for a ``features`` + ``classifier`` model.

    >>> inc = IncrementalOcclusion(model, x, window=(32, 32), tops=tops, lefts=lefts, fill=fill)
    >>> last, totals = inc.run(rows, cols, channel=c)
    >>> logits = inc.tail(last)

    Built from the unoccluded image x (1, C, H, W), whose maps it caches at every layer
    of ``features``. ``run`` takes position indices into ``tops``/``lefts`` (two lists of
    B ints) and returns the last feature map of the occluded images (B, C', H', W'),
    exactly as ``model.features`` computes it, and, when ``channel`` is given, that
    channel's total activation in ``features[layer_index]``'s output (B,). Raises
    NotIncremental when ``features`` holds a layer it cannot recompute by regions.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, *, window: tuple[int, int], tops: torch.Tensor,
                 lefts: torch.Tensor, fill: torch.Tensor, layer_index: int | None = None):
        features = getattr(model, "features", None)
        if not isinstance(features, nn.Sequential) or len(features) == 0:
            raise NotIncremental(f"{type(model).__name__} has no `features` nn.Sequential")
        self.model, self.window = model, window
        self.modules = list(features)
        self.steps = [_step(name, m) for name, m in features.named_children()]
        self.layer_index = len(self.modules) - 1 if layer_index is None else layer_index
        maps = [x]
        with torch.no_grad():
            for m in self.modules:  # clone before in-place layers: every map is kept
                maps.append(m(maps[-1].clone() if getattr(m, "inplace", False) else maps[-1]))
        if any(a.dim() != 4 for a in maps):
            raise NotIncremental("a layer of `features` does not give a 4-D map")
        self.maps = maps
        self.fill = fill.to(device=x.device, dtype=x.dtype)
        self.tops, self.lefts = tops.to(x.device), lefts.to(x.device)
        plans = []
        for d, corners in ((0, tops), (1, lefts)):
            plans.append(_plan_dim(corners.numpy(), window[d], [a.shape[2 + d] for a in maps], self.steps,
                                   {self.layer_index + 1}, d))
        (ys, h), (xs, w) = plans[0][0], plans[1][0]
        t = lambda v: torch.as_tensor(v, device=x.device)  # noqa: E731
        # region[i]: (row starts, height, column starts, width) of the recomputed part of map i
        self.region = [(t(ys), h, t(xs), w)]
        self.padded: list[torch.Tensor | None] = []
        self.windows: list[tuple | None] = []
        for i, s in enumerate(self.steps):
            py, px = plans[0][1][i], plans[1][1][i]
            if s is None:
                self.region.append(self.region[-1])
                self.padded.append(None)
                self.windows.append(None)
                continue
            a = maps[i]
            pt, pl = max(0, -int(py.wstart.min())), max(0, -int(px.wstart.min()))
            pb = max(0, int((py.wstart + py.wsize).max()) - a.shape[2])
            pr = max(0, int((px.wstart + px.wsize).max()) - a.shape[3])
            self.padded.append(F.pad(a, (pl, pr, pt, pb), value=s.pad_value) if pl + pr + pt + pb else a)
            self.windows.append((t(py.wstart + pt), py.wsize, t(px.wstart + pl), px.wsize, t(py.offset), t(px.offset)))
            self.region.append((t(py.start), py.size, t(px.start), px.size))

    def run(self, iy: torch.Tensor, ix: torch.Tensor, channel: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.maps[0]
        iy, ix = torch.as_tensor(iy, device=x.device), torch.as_tensor(ix, device=x.device)
        ys, h, xs, w = self.region[0]
        ry, rx = ys[iy], xs[ix]
        patch = _crops(x, ry, rx, h, w)
        mask = _occluder_mask(ry[:, None] + torch.arange(h, device=x.device),
                              rx[:, None] + torch.arange(w, device=x.device), self.tops[iy], self.lefts[ix],
                              self.window)
        u = torch.where(mask, self.fill, patch)
        totals = None
        for i, (m, s) in enumerate(zip(self.modules, self.steps)):
            if s is None:
                u = m(u)
            else:
                wy, wh, wx, ww, oy, ox = self.windows[i]
                window = _crops(self.padded[i], wy[iy], wx[ix], wh, ww)
                _paste(window, oy[iy], ox[ix], u)
                u = s(window)
            if i == self.layer_index and channel is not None:
                totals = self._total(i + 1, iy, ix, u, channel)
        last = self.maps[-1].expand(len(iy), -1, -1, -1).clone()
        ys, _, xs, _ = self.region[-1]
        _paste(last, ys[iy], xs[ix], u)
        return last, totals

    def _total(self, k: int, iy: torch.Tensor, ix: torch.Tensor, u: torch.Tensor, channel: int) -> torch.Tensor:
        """Total of one channel of map k: the cached total, minus the cached values in the
        recomputed region (from an integral image), plus the recomputed ones."""
        ys, h, xs, w = self.region[k]
        integral = F.pad(self.maps[k][0, channel].double().cumsum(0).cumsum(1), (1, 0, 1, 0))
        y0, x0 = ys[iy], xs[ix]
        old = integral[y0 + h, x0 + w] - integral[y0, x0 + w] - integral[y0 + h, x0] + integral[y0, x0]
        new = u[:, channel].sum(dim=(1, 2), dtype=torch.float64)
        return (integral[-1, -1] - old + new).to(u.dtype)

    def tail_input(self, last: torch.Tensor) -> torch.Tensor:
        """What the classifier receives: flatten([avgpool](last feature map))."""
        avgpool = getattr(self.model, "avgpool", None)
        return torch.flatten(avgpool(last) if isinstance(avgpool, nn.Module) else last, 1)

    def tail(self, last: torch.Tensor) -> torch.Tensor:
        """The model above ``features``: [avgpool], flatten, classifier."""
        return self.model.classifier(self.tail_input(last))


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
                engine = _incremental_engine(model, x, logits, path, call, window, tops, lefts, fill_t)
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
        from .deconv import project

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


def _incremental_engine(model, x, logits, path, call, window, tops, lefts, fill) -> IncrementalOcclusion:
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise NotIncremental(f"{type(model).__name__} has no `features` nn.Sequential")
    keys = list(features._modules)
    if path == "features":
        index = len(keys) - 1
    elif path.startswith("features.") and path[len("features."):] in keys and call == 0:
        index = keys.index(path[len("features."):])
    else:
        raise NotIncremental(f"layer {path!r} is not a layer of `features`")
    engine = IncrementalOcclusion(model, x, window=window, tops=tops, lefts=lefts, fill=fill, layer_index=index)
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Module):
        raise NotIncremental(f"{type(model).__name__} has no `classifier`")
    # The forward must be classifier(flatten([avgpool](features(x)))) and return the classifier's
    # output: check what the classifier receives and what the model returns.
    received = LayerTap(model, "classifier", inputs=True, record=lambda _n, t: t.clone())
    given = LayerTap(model, "classifier")
    try:
        with received, given:
            returned = model(x)
        expected = engine.tail_input(engine.maps[-1])
    except (RuntimeError, AttributeError, TypeError) as e:
        raise NotIncremental(f"the model is not features → [avgpool] → flatten → classifier ({e})") from None
    seen = {"in": received.outputs.get("classifier"), "out": given.outputs.get("classifier")}

    def same(a, b) -> bool:
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max().clamp_min(1e-12)))

    if not (same(seen.get("in"), expected) and seen.get("out") is returned and same(returned, logits)):
        raise NotIncremental("the model's forward is not features → [avgpool] → flatten → classifier")
    return engine


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
            mask = _occluder_mask(rows.expand(b, -1), cols.expand(b, -1), ty[sel // len(lefts)],
                                  tx[sel % len(lefts)], window)
            out_logits.append(model(torch.where(mask, fill, x)).float())
            totals.append(tap[layer].float())
    return out_logits, totals


__all__ = ["OcclusionResult", "occlude", "occlusion_map", "positions", "default_layer", "IncrementalOcclusion",
           "NotIncremental"]
