"""Exact incremental occlusion (Nakandala, Kumar & Papakonstantinou, SIGMOD 2019,
"Krypton"): per occluder position each layer of ``features`` is recomputed only where
the occluder's change reaches (see :mod:`vizcnn.methods.occlusion`, which decides when
it applies and falls back to full recomputation)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.layers import ELEMENTWISE, LayerTap


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


def occluder_mask(rows: torch.Tensor, cols: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor,
                   window: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) True where pixel (rows[b], cols[b]) lies under occluder b."""
    in_rows = (rows >= tops[:, None]) & (rows < tops[:, None] + window[0])
    in_cols = (cols >= lefts[:, None]) & (cols < lefts[:, None] + window[1])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


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
        mask = occluder_mask(ry[:, None] + torch.arange(h, device=x.device),
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


def incremental_engine(model, x, logits, path, call, window, tops, lefts, fill) -> IncrementalOcclusion:
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


__all__ = ["IncrementalOcclusion", "NotIncremental", "incremental_engine", "occluder_mask"]
