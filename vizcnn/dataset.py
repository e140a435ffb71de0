"""One pass over a dataset: per-unit top-k activations and dead-filter statistics.

Both are streaming, mergeable reductions kept on the model's device: each batch runs one
truncated forward (:class:`vizcnn.extract.Extractor`, stopped at the deepest requested
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
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .data import Batch, ImageSource, Skipped, load, loader
from .errors import BadArgumentError, BadInputError
from .extract import Extractor
from .layers import feeding_layer, geometry_key, layer_geometry, resolve_layer
from .progress import ProgressFn, each
from .state import model_device

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


def feeding_weight(model: nn.Module, layer: str) -> tuple[str, torch.Tensor] | tuple[None, None]:
    """(module path, (C_out, ...) weight) of the convolution or linear layer whose filters
    produce ``layer``'s channels (:func:`vizcnn.layers.feeding_layer`), or (None, None)."""
    path = feeding_layer(model, layer)
    return (path, model.get_submodule(path).weight) if path is not None else (None, None)


def layer_key(model: nn.Module, name: str) -> str:
    """The key of ``layer_geometry``'s result for a layer name (:func:`vizcnn.layers.geometry_key`)."""
    return geometry_key(model, name)


def _world(group) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def check_finite(act: torch.Tensor, layer: str) -> None:
    """A one-line BadInputError naming ``layer`` when its activations hold inf or NaN
    (finite but huge weights overflow float32): checked before anything is drawn or
    written, so no figure of blanks labelled "(inf)" ever replaces a result."""
    if not torch.isfinite(act).all():
        raise BadInputError(f"layer {layer}: activations overflow to inf or NaN (weights or inputs too large "
                            "for float32); nothing was written")


def scan_batches(model: nn.Module, batches: Iterable[Batch], input_size: tuple[int, int, int], *,
                 topk_layers: Sequence[str] = (), stats_layers: Sequence[str] = (), top: int = 9,
                 distinct_images: bool = False, group=None, geometry: dict | None = None) -> ScanResult:
    """The pass itself over ready batches (see :func:`scan`); each batch's global indices
    must increase, as :func:`vizcnn.data.loader` yields them. ``input_size`` (C, H, W)
    gives each layer's channel count before any batch arrives (a rank may get none),
    from ``geometry`` (``layer_geometry(model, input_size)``) when given, else from a
    forward of one blank image."""
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise BadArgumentError(f"top must be a positive integer, got {top!r}")
    topk_layers, stats_layers = list(dict.fromkeys(topk_layers)), list(dict.fromkeys(stats_layers))
    layers = list(dict.fromkeys([*topk_layers, *stats_layers]))
    if not layers:
        raise BadArgumentError("nothing to compute: give at least one layer for top-k or statistics")
    device = model_device(model)
    images, skipped = 0, []
    with Extractor(model, layers) as ex:
        model.eval()  # restored on exit
        if geometry:
            shapes = {n: tuple(geometry[layer_key(model, n)].shape) for n in layers}
        else:  # one blank image tells each layer's channels (a rank may get no batch at all)
            probe = ex.run(torch.zeros((1, *input_size), device=device))
            shapes = {n: tuple(probe[n].shape[1:]) for n in layers}
        for name, shape in shapes.items():
            if len(shape) not in (1, 3):
                raise BadArgumentError(f"layer {name!r} gives outputs of shape {shape}; need (C, H, W) or (C,)")
        reducers = {n: LayerReducer(shapes[n][0], device, top=top if n in topk_layers else None,
                                    distinct_images=distinct_images, stats=n in stats_layers) for n in layers}
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
            for name, reducer in reducers.items():
                check_finite(outs[name], name)
                reducer.update(outs[name], index)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    rank, world = _world(group)
    if world > 1:
        for reducer in reducers.values():
            reducer.all_reduce(group)
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


def scan(model: nn.Module, source: ImageSource, spec, *, topk_layers: Sequence[str] = (),
         stats_layers: Sequence[str] = (), top: int = 9, distinct_images: bool = False, batch_size: int = 32,
         num_workers: int | None = None, group=None, geometry: dict | None = None,
         progress: ProgressFn | None = None) -> ScanResult:
    """One pass over ``source``, prepared for ``spec`` (the model's ModelSpec, or anything
    with ``input_size``, ``mean``, ``std``), on the model's device.

    Computes the top-``top`` activations of every unit of ``topk_layers`` and the
    statistics of ``stats_layers`` in the same truncated forward per batch. Under an
    initialised process group (``group``, default the world) each rank reads images
    rank, rank + world, … and every rank returns the merged result. The model runs in
    eval mode and is left exactly as it was.
    """
    rank, world = _world(group)
    device = model_device(model)
    batches = loader(source, spec, indices=range(rank, len(source), world), batch_size=batch_size,
                     num_workers=num_workers, pin_memory=device.type == "cuda")
    shard = len(range(rank, len(source), world))
    batches = each(progress, f"data pass ({shard} images)", batches, -(-shard // batch_size))
    return scan_batches(model, batches, tuple(spec.input_size), topk_layers=topk_layers, stats_layers=stats_layers,
                        top=top, distinct_images=distinct_images, group=group, geometry=geometry)


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
        rank, world = _world(None)
        yield rank, world, device
    finally:
        if owned:
            dist.destroy_process_group()


# --------------------------------------------------------------------------- projections


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
            if not lo.strip().isdigit() or (dash and not hi.strip().isdigit()):
                raise BadArgumentError(f"units {units!r}: write e.g. 0-15, 3,7,9 or all")
            a, b = int(lo), int(hi) if dash else int(lo)
            if b < a:
                raise BadArgumentError(f"units {units!r}: range {a}-{b} is empty")
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


def project_winners(model: nn.Module, source: ImageSource, spec, layer: str, topk: TopK, units: Sequence[int], *,
                    method: str = "deconvnet", chunk: int = 64, geometry=None,
                    progress: ProgressFn | None = None) -> dict[tuple[int, int], Projection]:
    """Projects the winners of ``units`` back to pixels, grouped by image: per image one
    forward (truncated at ``layer``) and batched backward passes for all its winners.

    Returns {(unit, rank): Projection}; winners whose image cannot be read again are
    left out (with a warning). ``geometry``: the layer's LayerInfo when the caller has it.
    """
    from .deconv import Activations, backproject, forward_to
    from .rules import ReverseRules
    from .state import preserved_model

    cpu = topk.cpu()
    geometry = geometry or layer_geometry(model, tuple(spec.input_size))[layer_key(model, layer)]
    _, h, w = spec.input_size
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
            try:
                shown, x = load(source, i, spec)
            except BadInputError as e:
                log.warning("cannot re-read winning image %d (%s): %s", i, source.describe(i), e)
                continue
            acts, leaf = forward_to(model, x[None].to(device), [layer], ReverseRules(method))
            act = acts[layer]
            wins = by_image[i]
            ch = torch.tensor([u for u, _ in wins], device=device)
            ys = torch.tensor([int(cpu.y[u, r]) for u, r in wins], device=device)
            xs = torch.tensor([int(cpu.x[u, r]) for u, r in wins], device=device)
            seed = act[ch, ys, xs] if act.dim() == 3 else act[ch]
            proj = backproject(act, leaf, Activations(ch, ys, xs, seed.detach()), chunk=chunk).detach().cpu()
            for j, (u, r) in enumerate(wins):
                box = geometry.box(int(cpu.y[u, r]), int(cpu.x[u, r]), h, w) if act.dim() == 3 else (0, h, 0, w)
                t, b, left, right = box
                out[(u, r)] = Projection(u, r, i, float(cpu.value[u, r]), proj[j][:, t:b, left:right].clone(),
                                         shown[t:b, left:right], box)
    return out


# --------------------------------------------------------------------------- reports


def _caption(source: ImageSource, i: int) -> str:
    """A short name for image i in a figure: the file name without suffix, else ``#i``."""
    name = source.describe(i)
    stem = os.path.splitext(os.path.basename(name))[0] if name != f"{source.name}#{i}" else f"#{i}"
    return stem if len(stem) <= 14 else stem[:13] + "…"


def _skipped_json(skipped: list[Skipped]) -> list[dict]:
    return [{"index": s.index, "path": s.path, "reason": s.reason} for s in skipped]


def _pass_json(result: ScanResult, source: ImageSource, batch_size: int, workers: int | None) -> dict:
    from .data import default_workers

    return {
        "data_size": len(source), "images": result.images, "skipped": len(result.skipped),
        "skipped_images": _skipped_json(result.skipped), "seconds": round(result.seconds, 4),
        "images_per_second": round(result.images_per_second, 2) if result.seconds > 0 else None,
        "world_size": result.world_size, "batch_size": batch_size,
        "workers": default_workers() if workers is None else workers,
    }


def stats_json(model: nn.Module, name: str, s: FilterStats, min_firing: float, min_max: float) -> dict:
    dead = s.dead(min_firing, min_max)
    firing, mean = s.firing.tolist(), s.mean.tolist()
    maxima, norms = s.max.tolist(), None if s.weight_norm is None else s.weight_norm.tolist()
    n = len(firing)
    return {
        "layer": name, "module": resolve_layer(model, name)[0], "conv": s.conv, "filters": n,
        "positions": s.positions, "dead": int(dead.sum()), "dead_fraction": float(dead.sum()) / max(n, 1),
        "dead_units": [i for i in range(n) if dead[i]],
        "units": [{"unit": i, "firing": firing[i], "mean": mean[i], "max": maxima[i],
                   "weight_norm": None if norms is None else norms[i], "dead": bool(dead[i])} for i in range(n)],
    }


def _check_thresholds(min_firing: float, min_max: float) -> None:
    if not 0 <= min_firing <= 1:
        raise BadArgumentError(f"min firing fraction must be in [0, 1], got {min_firing}")
    if not 0 <= min_max <= 1:
        raise BadArgumentError(f"min relative max must be in [0, 1], got {min_max}")


def write_dead_filter_figure(out, model_name: str, data_name: str, images: int, stats: dict[str, FilterStats],
                             min_firing: float, min_max: float, *, weights: str | None = None) -> str:
    from .imageio import save_figure
    from .render import figure_title
    from .render_dataset import dead_filter_figure

    rows = [(name, s.firing.numpy(), s.dead(min_firing, min_max).numpy()) for name, s in stats.items()]
    title = (figure_title(model_name, weights=weights, layer=", ".join(stats), method="dead filters",
                          what=f"firing fraction per filter over {images} images ({data_name})")
             + f"\ndead: fires on < {min_firing:g} of positions, or max ≤ {min_max:g} × the layer's largest max")
    file = "dead_filters.png"
    save_figure(dead_filter_figure(rows, title, min_firing), out.path(file))
    return file


def write_topk(out, model: nn.Module, model_name: str, source: ImageSource, spec, *, layers: Sequence[str],
               top: int = 9, distinct_images: bool = False, units: str | Sequence[int] | None = None,
               method: str = "deconvnet", dead_filters: bool = False, min_firing: float = MIN_FIRING,
               min_max: float = MIN_MAX, batch_size: int = 32, num_workers: int | None = None,
               page_units: int = 16, extra: dict | None = None, progress: ProgressFn | None = None) -> dict | None:
    """``vizcnn topk``: one pass (with the dead-filter statistics of the same layers when
    ``dead_filters``), then the winners of ``units`` projected (default the first page,
    ``page_units`` units; ``"all"`` for every unit), one paged PNG grid per layer
    (``topk_<layer>_p<n>.png``), and summary.json with every unit's winners.

    Under torch.distributed every rank computes and merges; only rank 0 (whose ``out``
    is an OutputDir; the others may pass None) projects and writes. Returns the summary
    on rank 0, None elsewhere.
    """
    from .imageio import safe_filename, save_figure
    from .render import as_display, figure_title
    from .render_dataset import topk_page

    _check_thresholds(min_firing, min_max)
    layers = list(dict.fromkeys(layers))
    for name in layers:
        resolve_layer(model, name)
    if not isinstance(page_units, int) or page_units < 1:
        raise BadArgumentError(f"page_units must be a positive integer, got {page_units!r}")
    geometry = layer_geometry(model, tuple(spec.input_size))
    chosen = {n: parse_units(units, geometry[layer_key(model, n)].shape[0], default=page_units) for n in layers}
    result = scan(model, source, spec, topk_layers=layers, stats_layers=layers if dead_filters else (), top=top,
                  distinct_images=distinct_images, batch_size=batch_size, num_workers=num_workers, geometry=geometry,
                  progress=progress)
    if result.rank != 0:
        return None
    _, h, w = spec.input_size
    entries = []
    for name in layers:
        info = geometry[layer_key(model, name)]
        tk = result.topk[name].cpu()
        spatial = len(info.shape) == 3
        unit_rows = []
        for u in range(tk.value.shape[0]):
            wins = []
            for r in range(tk.value.shape[1]):
                i = int(tk.image[u, r])
                if i < 0:
                    continue
                yy, xx = int(tk.y[u, r]), int(tk.x[u, r])
                t, b, left, right = info.box(yy, xx, h, w) if spatial else (0, h, 0, w)
                label = source.label(i)
                wins.append({"rank": r, "image": i, "path": source.describe(i), "label": label,
                             "class": source.classes[label] if label is not None and source.classes else None,
                             "y": yy, "x": xx, "value": float(tk.value[u, r]),
                             "box": {"top": t, "bottom": b, "left": left, "right": right}})
            unit_rows.append({"unit": u, "winners": wins})
        # a winner with activation 0 is no winner: the unit does not fire there (or anywhere)
        zero_winners = sum(1 for row in unit_rows for win in row["winners"] if not win["value"] > 0)
        never_fire = [row["unit"] for row in unit_rows
                      if row["winners"] and not any(win["value"] > 0 for win in row["winners"])]
        files = []
        pages = [chosen[name][i:i + page_units] for i in range(0, len(chosen[name]), page_units)]
        for p, page in enumerate(pages, 1):
            projections = project_winners(model, source, spec, name, result.topk[name], page, method=method,
                                          geometry=info, progress=progress)
            rows = []
            for u in page:
                cells = []
                for r in range(top):
                    pr = projections.get((u, r))
                    cells.append(None if pr is None else
                                 (as_display(pr.projection), pr.patch, pr.value, _caption(source, pr.image)))
                rows.append((u, cells))
            unit_range = f"units {page[0]}–{page[-1]}" if page == list(range(page[0], page[-1] + 1)) else "units"
            title = (figure_title(model_name, weights=(extra or {}).get("weights"), layer=name, method=method,
                                  what=f"top {top} activations per unit over {result.images} images ({source.name})")
                     + f"{' · distinct images' if distinct_images else ''} · {unit_range} · page "
                     f"{p}/{len(pages)}\neach pair: {method} projection | image patch (receptive field)")
            file = f"topk_{safe_filename(name)}_p{p}.png"
            if progress is not None:
                progress(p - 1, len(pages), f"drawing {name}'s pages")
            save_figure(topk_page(rows, title), out.path(file))
            files.append(file)
        entries.append({"layer": name, "module": info.path, "channels": info.shape[0],
                        "receptive_field": list(info.rf), "stride": list(info.jump), "files": files,
                        "figure_units": chosen[name], "zero_winners": zero_winners,
                        "units_never_firing": never_fire, "units": unit_rows})
    summary = {"model": model_name, "data": source.name, "method": method, "top": top,
               "distinct_images": distinct_images, "order": ORDER, "input_size": list(spec.input_size),
               **(extra or {}), **_pass_json(result, source, batch_size, num_workers), "layers": entries}
    if dead_filters:
        stats = {n: s.cpu() for n, s in result.stats.items()}
        summary["dead_filters"] = {"min_firing": min_firing, "min_max": min_max, "figure": write_dead_filter_figure(
            out, model_name, source.name, result.images, stats, min_firing, min_max,
            weights=(extra or {}).get("weights")),
            "layers": [stats_json(model, n, s, min_firing, min_max) for n, s in stats.items()]}
    return out.finish(summary)


def write_dead_filters(out, model: nn.Module, model_name: str, source: ImageSource, spec, *,
                       layers: Sequence[str], min_firing: float = MIN_FIRING, min_max: float = MIN_MAX,
                       batch_size: int = 32, num_workers: int | None = None, extra: dict | None = None,
                       progress: ProgressFn | None = None) -> dict | None:
    """``vizcnn dead-filters``: one pass, the firing-fraction histogram (dead_filters.png)
    and summary.json with every filter's statistics. Rank 0 writes (see write_topk)."""
    _check_thresholds(min_firing, min_max)
    layers = list(dict.fromkeys(layers))
    for name in layers:
        resolve_layer(model, name)
    result = scan(model, source, spec, stats_layers=layers, batch_size=batch_size, num_workers=num_workers,
                  progress=progress)
    if result.rank != 0:
        return None
    stats = {n: s.cpu() for n, s in result.stats.items()}
    file = write_dead_filter_figure(out, model_name, source.name, result.images, stats, min_firing, min_max,
                                    weights=(extra or {}).get("weights"))
    entries = [stats_json(model, n, s, min_firing, min_max) for n, s in stats.items()]
    summary = {"model": model_name, "data": source.name, "input_size": list(spec.input_size),
               "min_firing": min_firing, "min_max": min_max, **(extra or {}),
               **_pass_json(result, source, batch_size, num_workers), "figure": file,
               "dead": sum(e["dead"] for e in entries), "filters": sum(e["filters"] for e in entries),
               "layers": entries}
    return out.finish(summary)


__all__ = ["TopK", "FilterStats", "ScanResult", "LayerReducer", "order", "scan", "scan_batches",
           "feeding_weight", "host_branching", "distributed", "parse_units", "Projection", "project_winners",
           "write_topk",
           "write_dead_filters", "MIN_FIRING", "MIN_MAX", "ORDER"]
