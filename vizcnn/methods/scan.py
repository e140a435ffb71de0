"""One pass over a dataset: per-unit top-k activations and dead-filter statistics.

Both are streaming, mergeable reductions kept on the model's device: each batch runs one
truncated forward (:class:`vizcnn.core.extract.Extractor`, stopped at the deepest requested
layer) and updates the running results with tensor operations only — no ``.item()``,
no copy to the host inside the loop. Under ``torchrun`` (or any initialised
``torch.distributed`` process group) each rank takes a strided shard of the images and
the per-rank results are merged exactly (``all_gather`` for top-k, sums and maxima for
the statistics); only rank 0 renders and writes.

**Top-k order.** Candidates are ranked by activation value (descending), then global
image index, then y, then x (ascending): among equal values the earliest image, then
the first position in row-major order, wins. The order is exact, whatever the batch
size, number of workers or ranks. Inside a batch it comes from one ``torch.topk`` over
int64 keys that pack (the value's order-preserving 32-bit pattern, position in the
batch) and so are all distinct; the running and merged results are ordered by a stable
lexicographic sort. ``-0.0`` counts as ``0.0``. By default every position competes, so
several of a unit's winners may come from one image; with ``distinct_images`` each image
competes only with its strongest position (the first in row-major order on ties).

**Dead-filter statistics.** Per layer and filter: the fraction of positions (images ×
H × W) where the recorded output is > 0 ("fires"), its mean and maximum, and the L2 norm
of the filter's weights in the convolution (or linear layer) that feeds it. Friendly
names (``conv3``) record the rectified output, so > 0 is the ReLU firing; for a module
path of a convolution itself the raw output is tested for > 0. The feeding convolution
is the module itself when it has a weight, else the closest preceding Conv2d/Linear in
the same ``nn.Sequential`` with only element-wise modules (ReLU, batch-norm, LRN,
dropout) in between; otherwise the weight norm is unknown (None). A filter is *dead*
when it fires on fewer than ``min_firing`` of the positions (default 1e-3) or its
maximum is at most ``min_max`` (default 1e-6) times the largest maximum of its layer.
Counts and maxima merge exactly; sums are float64 sums of per-image float32 sums.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..core.batch import Batch, Skipped
from ..core.errors import BadArgumentError, BadInputError
from ..core.finite import check_result
from ..core.extract import Extractor
from ..core.layers import LayerInfo, feeding_weight, geometry_key, layer_geometry
from ..core.progress import ProgressFn, each
from ..core.rules import ReverseRules
from ..core.state import model_device, preserved_model
from .deconv import Activations, backproject, forward_to

log = logging.getLogger("vizcnn.data")

#: Image index of an empty top-k slot while the pass runs (sorts after every real image).
EMPTY = torch.iinfo(torch.int64).max
MIN_FIRING = 1e-3
MIN_MAX = 1e-6
ORDER = "value descending, then image index, y, x ascending"


# --------------------------------------------------------------------------- results


@dataclass
class TopK:
    """A layer's top-k per unit, best first: (C, k) tensors. ``image`` is the global image
    index (-1 in slots left empty when the data held fewer than k candidates)."""

    value: torch.Tensor
    image: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor

    def cpu(self) -> "TopK":
        return TopK(*(t.cpu() for t in (self.value, self.image, self.y, self.x)))


@dataclass
class FilterStats:
    """A layer's per-filter statistics: counts (C,) int64, sums (C,) float64, maxima (C,)
    float32 over ``positions`` positions (images × H × W) per filter."""

    positions: int
    fires: torch.Tensor
    total: torch.Tensor
    max: torch.Tensor
    weight_norm: torch.Tensor | None = None
    conv: str | None = None  # module path of the feeding convolution

    @property
    def firing(self) -> torch.Tensor:
        """Fraction of positions where each filter fires (> 0), (C,) float64."""
        return self.fires.double() / max(self.positions, 1)

    @property
    def mean(self) -> torch.Tensor:
        """Mean activation over all positions, (C,) float64."""
        return self.total / max(self.positions, 1)

    def dead(self, min_firing: float = MIN_FIRING, min_max: float = MIN_MAX) -> torch.Tensor:
        """(C,) bool: fires on fewer than ``min_firing`` of the positions, or its maximum is
        at most ``min_max`` × the layer's largest maximum."""
        largest = self.max.max().clamp_min(0)
        return (self.firing < min_firing) | (self.max <= min_max * largest)

    def cpu(self) -> "FilterStats":
        return FilterStats(self.positions, self.fires.cpu(), self.total.cpu(), self.max.cpu(),
                           None if self.weight_norm is None else self.weight_norm.cpu(), self.conv)


@dataclass
class ScanResult:
    """What one pass found. ``images``: images used (all ranks); ``skipped``: those that
    could not be read, by global index; ``seconds``: the pass's wall time (slowest rank)."""

    topk: dict[str, TopK]
    stats: dict[str, FilterStats]
    images: int
    skipped: list[Skipped]
    seconds: float
    world_size: int = 1
    rank: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


# --------------------------------------------------------------------------- reductions


def host_branching(device: torch.device) -> bool:
    """Whether the pass may branch on tensor contents: on the CPU reading a value costs
    nothing; on an accelerator it would wait for the device, so the pass computes
    masked results instead."""
    return device.type == "cpu"


def order(value: torch.Tensor, image: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The permutation of each row (dim 1) that sorts by value descending, then image,
    y, x ascending: four stable sorts, least significant key first."""
    perm = torch.argsort(x, dim=1, stable=True)
    for key, descending in ((y, False), (image, False), (value, True)):
        perm = perm.gather(1, torch.argsort(key.gather(1, perm), dim=1, stable=True, descending=descending))
    return perm


def _keep_best(k: int, value, image, y, x) -> tuple[torch.Tensor, ...]:
    perm = order(value, image, y, x)[:, :k]
    return tuple(t.gather(1, perm) for t in (value, image, y, x))


class LayerReducer:
    """Streaming reductions of one layer's output: the top-k per channel (when ``top``)
    and the per-filter statistics (when ``stats``), from one channel-major copy of each
    batch's activations. See the module docstring for the order of the top-k."""

    def __init__(self, channels: int, device: torch.device, *, top: int | None = None,
                 distinct_images: bool = False, stats: bool = False):
        self.k, self.distinct, self.stats = top, distinct_images, stats
        if top:
            self.value = torch.full((channels, top), -torch.inf, device=device)
            self.image = torch.full((channels, top), EMPTY, dtype=torch.long, device=device)
            self.y = torch.zeros((channels, top), dtype=torch.long, device=device)
            self.x = torch.zeros((channels, top), dtype=torch.long, device=device)
        if stats:
            self.positions = 0
            self.fires = torch.zeros(channels, dtype=torch.long, device=device)
            self.total = torch.zeros(channels, dtype=torch.float64, device=device)
            self.max = torch.full((channels,), -torch.inf, device=device)
        self._rev: dict[tuple[int, str], torch.Tensor] = {}
        self._buffers: dict[str, torch.Tensor] = {}

    def _scratch(self, name: str, shape: tuple[int, ...], dtype, device) -> torch.Tensor:
        """A buffer kept from batch to batch: a fresh large CPU allocation each batch costs
        page faults comparable to the work done in it."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.device != device:
            buf = self._buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def _reversed_positions(self, m: int, device) -> torch.Tensor:
        """m - arange(m) as int32: larger for earlier positions, 0 never used."""
        key = (m, str(device))
        if key not in self._rev:
            self._rev[key] = m - torch.arange(m, dtype=torch.int32, device=device)
        return self._rev[key]

    def update(self, act: torch.Tensor, index: torch.Tensor) -> None:
        """act: (N, C, H, W) or (N, C); index: (N,) global image indices, on act's device."""
        if act.dim() == 2:
            act = act[:, :, None, None]
        n, c, h, w = act.shape
        hw, m = h * w, n * h * w
        if m >= 2 ** 31:
            raise BadArgumentError(f"a batch of {n} images gives {m} positions per unit; use a smaller batch")
        flat = self._scratch("flat", (c, n, hw), torch.float32, act.device)
        flat.copy_(act.reshape(n, c, hw).transpose(0, 1))
        if self.k:
            if self.distinct:
                self._update_distinct(flat, index, w)
            else:
                self._update_all(flat.view(c, m), index, hw, w)
        if self.stats:
            self.positions += m
            f = flat.view(c, m)
            # sign(max(x, 0)) is 1 where x fires, else 0: its float sum counts exactly below 2**24
            # per batch, and runs several times faster on the CPU than a sum of booleans.
            if m < 2 ** 24:
                sign = torch.sign(f, out=self._scratch("sign", (c, m), torch.float32, f.device))
                self.fires += sign.clamp_(min=0).sum(dim=1).long()
            else:
                self.fires += (f > 0).sum(dim=1)
            # Per-image sums first: the result does not depend on how images are batched.
            self.total += flat.sum(dim=2).double().sum(dim=1)
            if not self.k:  # with a top-k, the maximum is its first entry
                self.max = torch.maximum(self.max, flat.view(c, m).amax(dim=1))

    def _update_all(self, flat: torch.Tensor, index: torch.Tensor, hw: int, w: int) -> None:
        c, m = flat.shape
        k = min(self.k, m)
        # torch.topk finds the k largest values exactly but breaks ties arbitrarily. Where
        # the k-th value also occurs beyond the k slots (a "boundary tie", seen by taking
        # k + 1), only the entries above it are kept and the slots left go to the first
        # positions (row-major, image order) holding exactly the k-th value.
        value, where = flat.topk(min(k + 1, m), dim=1)
        boundary = value[:, k] == value[:, k - 1] if m > k else torch.zeros(c, dtype=torch.bool, device=flat.device)
        value, where = value[:, :k], where[:, :k]
        kth = value[:, -1:]
        valid = (value > kth) | ~boundary[:, None]
        rev = torch.zeros((c, k), dtype=torch.int32, device=flat.device)
        if host_branching(flat.device):
            rows = boundary.nonzero().flatten()  # on the CPU this costs no device wait
            if len(rows):
                rev[rows] = torch.where(flat[rows] == kth[rows], self._reversed_positions(m, flat.device),
                                        0).topk(k, dim=1).values
        else:  # every row, masked: no host sync on an accelerator
            rev = torch.where(flat == kth, self._reversed_positions(m, flat.device), 0).topk(k, dim=1).values
            rev = rev * boundary[:, None]
        valid = torch.cat([valid, rev > 0], dim=1)
        value = torch.cat([value, kth.expand(c, k)], dim=1)
        where = torch.cat([where, (m - rev).long()], dim=1)
        pos = where % hw
        self._merge(value, torch.where(valid, index.take(where.clamp(max=m - 1) // hw), EMPTY), pos // w, pos % w)

    def _update_distinct(self, flat: torch.Tensor, index: torch.Tensor, w: int) -> None:
        c, n, hw = flat.shape
        value, pos = flat.max(dim=2)  # each image's strongest position; torch.max returns the first on ties
        self._merge(value, index.expand(c, n), pos // w, pos % w)

    def _merge(self, value, image, y, x) -> None:
        value = torch.where(image == EMPTY, -torch.inf, value + 0.0)  # + 0.0: -0.0 → 0.0
        self.value, self.image, self.y, self.x = _keep_best(
            self.k, *(torch.cat(p, dim=1) for p in zip((self.value, self.image, self.y, self.x),
                                                         (value, image, y, x))))

    def all_reduce(self, group=None) -> None:
        """Merges every rank's results into this one (the same on every rank)."""
        if self.k:
            packed = torch.stack([self.value.view(torch.int32).to(torch.int64), self.image, self.y, self.x])
            parts = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, packed, group=group)
            merged = torch.cat(parts, dim=2)
            value = merged[0].to(torch.int32).view(torch.float32)
            self.value, self.image, self.y, self.x = _keep_best(self.k, value, merged[1], merged[2], merged[3])
        if self.stats:
            positions = torch.tensor([self.positions], dtype=torch.float64, device=self.fires.device)
            for t in (self.fires, self.total, positions):
                dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
            dist.all_reduce(self.max, op=dist.ReduceOp.MAX, group=group)
            self.positions = int(positions.item())

    def topk(self) -> TopK:
        image = torch.where(self.image == EMPTY, -1, self.image)
        return TopK(self.value.clone(), image, self.y.clone(), self.x.clone())

    def filter_stats(self, weight_norm: torch.Tensor | None = None, conv: str | None = None) -> FilterStats:
        top = self.value[:, 0] if self.k else self.max
        return FilterStats(self.positions, self.fires.clone(), self.total.clone(), top.clone(), weight_norm, conv)


def rank_and_world(group) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _check_finite(act: torch.Tensor, layer: str) -> None:
    """A one-line BadInputError naming ``layer`` when its activations hold inf or NaN
    (finite but huge weights overflow float32): checked before anything is drawn or
    written, so no figure of blanks labelled "(inf)" ever replaces a result."""
    if not torch.isfinite(act).all():
        raise BadInputError(f"layer {layer}: activations overflow to inf or NaN (weights or inputs too large "
                            f"for {str(act.dtype).replace('torch.', '')}); nothing was written")


#: The most winners per unit a pass keeps (each unit's k winners live in memory, for every unit).
MAX_TOP = 1000


def scan_batches(model: nn.Module, batches: Iterable[Batch], input_size: tuple[int, int, int], *,
                 topk_layers: Sequence[str] = (), stats_layers: Sequence[str] = (), top: int = 9,
                 distinct_images: bool = False, group=None, geometry: dict | None = None,
                 observers: Sequence = ()) -> ScanResult:
    """The pass itself over ready batches (see :func:`scan`); each batch's global indices
    must increase, as :func:`vizcnn.io.sources.loader` yields them. ``input_size`` (C, H, W)
    gives each layer's channel count before any batch arrives (a rank may get none),
    from ``geometry`` (``layer_geometry(model, input_size)``) when given, else from a
    forward of one blank image.

    ``observers``: further streamed reductions of the same forward, each with
    ``layers`` (names, recorded with the others), ``update(outputs, index)`` per batch
    ({layer: (N, ...) tensor}, (N,) global indices) and ``all_reduce(group)`` once
    under several ranks (``vizcnn.methods.atlas.UnitMaxima``)."""
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_TOP:
        raise BadArgumentError(f"top must be an integer from 1 to {MAX_TOP}, got {top!r}")
    topk_layers, stats_layers = list(dict.fromkeys(topk_layers)), list(dict.fromkeys(stats_layers))
    layers = list(dict.fromkeys([*topk_layers, *stats_layers, *(n for ob in observers for n in ob.layers)]))
    if not layers:
        raise BadArgumentError("nothing to compute: give at least one layer for top-k or statistics")
    device = model_device(model)
    images, skipped = 0, []
    with Extractor(model, layers) as ex:
        model.eval()  # restored on exit
        if geometry:
            shapes = {n: tuple(geometry[geometry_key(model, n)].shape) for n in layers}
        else:  # one blank image tells each layer's channels (a rank may get no batch at all)
            probe = ex.run(torch.zeros((1, *input_size), device=device))
            shapes = {n: tuple(probe[n].shape[1:]) for n in layers}
        for name, shape in shapes.items():
            if len(shape) not in (1, 3):
                raise BadArgumentError(f"layer {name!r} gives outputs of shape {shape}; need (C, H, W) or (C,)")
        reducers = {n: LayerReducer(shapes[n][0], device, top=top if n in topk_layers else None,
                                    distinct_images=distinct_images, stats=n in stats_layers)
                    for n in layers if n in topk_layers or n in stats_layers}
        start = time.perf_counter()
        for batch in batches:
            for s in batch.skipped:  # read_image's reasons start with the path
                reason = s.reason if s.path in s.reason else f"{s.path}: {s.reason}"
                log.warning("skipped image %d: %s", s.index, reason)
            skipped.extend(batch.skipped)
            if batch.x is None:
                continue
            images += len(batch.index)
            x = batch.x.to(device, non_blocking=True)
            index = batch.index.to(device, non_blocking=True)
            outs = ex.run(x)
            for name in layers:
                _check_finite(outs[name], name)
            for name, reducer in reducers.items():
                reducer.update(outs[name], index)
            for ob in observers:
                ob.update(outs, index)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    rank, world = rank_and_world(group)
    if world > 1:
        for reducer in reducers.values():
            reducer.all_reduce(group)
        for ob in observers:
            ob.all_reduce(group)
        counts = torch.tensor([float(images), seconds], dtype=torch.float64, device=device)
        total = counts.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX, group=group)
        images, seconds = int(total[0].item()), float(counts[1].item())
        gathered: list = [None] * world
        dist.all_gather_object(gathered, skipped, group=group)
        skipped = sorted((s for part in gathered for s in part), key=lambda s: s.index)
    if images == 0:  # nothing to rank or count: an empty figure would look like a result
        raise BadInputError(f"no readable images ({len(skipped)} skipped)")
    out_stats = {}
    for name in stats_layers:
        conv, weight = feeding_weight(model, name)
        norm = None
        if weight is not None and weight.shape[0] == shapes[name][0]:
            norm = weight.detach().flatten(1).norm(dim=1).to(device)
        out_stats[name] = reducers[name].filter_stats(norm, conv if norm is not None else None)
    return ScanResult({n: reducers[n].topk() for n in topk_layers}, out_stats, images, skipped, seconds, world, rank)


# --------------------------------------------------------------------------- distributed


@contextmanager
def distributed(device: torch.device):
    """Joins the process group ``torchrun`` describes (RANK, WORLD_SIZE, MASTER_ADDR… in
    the environment) for the duration, with gloo on the CPU and nccl on CUDA (each rank
    on GPU LOCAL_RANK). Yields (rank, world size, device). Outside torchrun, or when a
    group is already initialised, it changes nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    owned = False
    if dist.is_available() and not dist.is_initialized() and world > 1 and "RANK" in os.environ:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owned = True
    try:
        rank, world = rank_and_world(None)
        yield rank, world, device
    finally:
        if owned:
            # every rank leaves together: a rank that tears gloo down while another still works
            # (rank 0 writing the outputs) could abort in gloo's threads ("terminate called")
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()


# --------------------------------------------------------------------------- projections


def _plain_digits(text: str) -> bool:
    """ASCII digits only (``"²".isdigit()`` is True, but ``int("²")`` fails)."""
    text = text.strip()
    return bool(text) and text.isascii() and text.isdigit() and len(text) <= 18


def parse_units(units: str | Sequence[int] | None, channels: int, *, default: int | None = None) -> list[int]:
    """``"all"`` → every unit; ``"0-15"``, ``"3,7,9"``, ``"0-3,10"`` or a list of ints;
    None → the first ``default`` units (every unit when ``default`` is None)."""
    if units is None:
        return list(range(channels if default is None else min(default, channels)))
    if isinstance(units, str) and units.strip().lower() == "all":
        return list(range(channels))
    chosen: list[int] = []
    if isinstance(units, str):
        for part in units.split(","):
            lo, dash, hi = part.strip().partition("-")
            if not _plain_digits(lo) or (dash and not _plain_digits(hi)):
                raise BadArgumentError(f"units {units!r}: write e.g. 0-15, 3,7,9 or all")
            a, b = int(lo), int(hi) if dash else int(lo)
            if b < a:
                raise BadArgumentError(f"units {units!r}: range {a}-{b} is empty")
            if b >= channels:  # checked before the range is built: 0-10000000000 costs nothing
                raise BadArgumentError(f"units {units!r}: {b} out of range: the layer has units 0..{channels - 1}")
            chosen.extend(range(a, b + 1))
    else:
        chosen = [int(u) for u in units]
    bad = [u for u in chosen if not 0 <= u < channels]
    if bad:
        raise BadArgumentError(f"units {bad[:5]} out of range: the layer has units 0..{channels - 1}")
    return list(dict.fromkeys(chosen))


@dataclass
class Projection:
    """One winner projected: the deconvnet projection (C, h, w) and the image patch
    (h, w, C) cropped to the unit's receptive field box (top, bottom, left, right)."""

    unit: int
    rank: int
    image: int
    value: float
    projection: torch.Tensor
    patch: np.ndarray
    box: tuple[int, int, int, int]


def backproject_winners(model: nn.Module, read: Callable[[int], tuple[np.ndarray, torch.Tensor] | None],
                        input_size: tuple[int, int, int], layer: str, topk: TopK, units: Sequence[int], *,
                        method: str = "deconvnet", batch_size: int = 64, geometry: LayerInfo | None = None,
                        progress: ProgressFn | None = None) -> dict[tuple[int, int], Projection]:
    """Projects the winners of ``units`` back to pixels, grouped by image: per image one
    forward (truncated at ``layer``) and batched backward passes for all its winners.

    ``read(i)`` gives image i again as (H×W×C display image, normalised (C, H, W)
    tensor), or None when it can no longer be read (its winners are left out); the
    images are the caller's (``vizcnn.api.project_winners`` reads them from an
    ImageSource). Returns {(unit, rank): Projection}. ``geometry``: the layer's
    LayerInfo when the caller has it.
    """
    cpu = topk.cpu()
    geometry = geometry or layer_geometry(model, tuple(input_size))[geometry_key(model, layer)]
    _, h, w = input_size
    by_image: dict[int, list[tuple[int, int]]] = {}
    for u in units:
        for r in range(cpu.image.shape[1]):
            i = int(cpu.image[u, r])
            if i >= 0:
                by_image.setdefault(i, []).append((u, r))
    device = model_device(model)
    out: dict[tuple[int, int], Projection] = {}
    with preserved_model(model):
        for i in each(progress, f"projecting {layer}'s winners (images)", sorted(by_image)):
            image = read(i)
            if image is None:
                continue
            shown, x = image
            acts, leaf = forward_to(model, x[None].to(device), [layer], ReverseRules(method))
            act = acts[layer]
            wins = by_image[i]
            ch = torch.tensor([u for u, _ in wins], device=device)
            ys = torch.tensor([int(cpu.y[u, r]) for u, r in wins], device=device)
            xs = torch.tensor([int(cpu.x[u, r]) for u, r in wins], device=device)
            seed = act[ch, ys, xs] if act.dim() == 3 else act[ch]
            proj = backproject(act, leaf, Activations(ch, ys, xs, seed.detach()),
                               batch_size=batch_size).detach().cpu()
            check_result(proj, f"the {method} projection of layer {layer!r} (backward, winners in image {i})",
                         dtype=act.dtype)
            for j, (u, r) in enumerate(wins):
                box = geometry.box(int(cpu.y[u, r]), int(cpu.x[u, r]), h, w) if act.dim() == 3 else (0, h, 0, w)
                t, b, left, right = box
                out[(u, r)] = Projection(u, r, i, float(cpu.value[u, r]), proj[j][:, t:b, left:right].clone(),
                                         shown[t:b, left:right], box)
    return out


# --------------------------------------------------------------------------- reports


__all__ = ["TopK", "FilterStats", "ScanResult", "LayerReducer", "Projection", "order", "scan_batches",
           "backproject_winners", "parse_units", "host_branching", "distributed", "rank_and_world", "MIN_FIRING",
           "MIN_MAX", "ORDER"]
