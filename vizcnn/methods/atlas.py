"""What an atlas of units needs beyond the dataset pass's top-k and statistics.

:class:`UnitMaxima` is a streamed reduction of one layer's per-image maxima (each
unit's largest activation in each image), fed by the same forward as the top-k
(:func:`vizcnn.methods.scan.scan_batches`'s ``observers``). From its sums it gives

* each unit's *top classes*: the classes whose images drive the unit hardest, by the
  mean over the class's images of the unit's per-image maximum (when the data has labels);
* each unit's *most similar units*: the units of the same layer whose per-image maxima
  correlate most (Pearson) with its own over the data. A unit whose maxima do not vary
  (a dead unit: zero everywhere) correlates with nothing (NaN) and is nobody's neighbour.

Sums are float64, counts int64; ranks merge by summing, so the result does not depend
on how the images are split between ranks (up to float64 rounding of the sums).

:func:`project_winners_batched` projects the winners of many units at once through the
deconvnet engine's receptive-field crops (:func:`vizcnn.methods.deconv.backproject_cropped`):
winners whose crops have one size share a forward and a backward, whichever image and
unit they come from. Where the receptive field is near the image's size (the engine's
``CROP_BELOW`` rule) every window is the whole image.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.distributed as dist

from ..core.layers import LayerInfo
from ..core.progress import ProgressFn
from ..core.rules import ReverseRules
from ..core.state import model_device, preserved_model
from .deconv import CROP_BELOW, Activations, backproject_cropped
from .scan import TopK

#: How many similar units and top classes an atlas lists per unit.
NEIGHBOURS = 5


class UnitMaxima:
    """Streamed per-image maxima of the units of ``layer``: their sum and cross-products
    (for the correlation between units) and, with ``labels`` ((N_data,) int64 class of
    each global image index, -1 for none) and ``classes`` > 0, their sum per class."""

    def __init__(self, layer: str, channels: int, device: torch.device, *, labels: torch.Tensor | None = None,
                 classes: int = 0):
        self.layers = [layer]
        self.layer = layer
        self.n = 0
        self.sum = torch.zeros(channels, dtype=torch.float64, device=device)
        self.outer = torch.zeros((channels, channels), dtype=torch.float64, device=device)
        self.labels = None if labels is None or classes <= 0 else labels.to(device)
        self.class_sum = torch.zeros((max(classes, 0), channels), dtype=torch.float64, device=device)
        self.class_count = torch.zeros(max(classes, 0), dtype=torch.long, device=device)

    def update(self, outputs: dict[str, torch.Tensor], index: torch.Tensor) -> None:
        act = outputs[self.layer]
        m = (act.flatten(2).amax(dim=2) if act.dim() == 4 else act).double()  # (N, C)
        self.n += m.shape[0]
        self.sum += m.sum(dim=0)
        self.outer += m.T @ m
        if self.labels is not None:
            lab = self.labels[index]
            keep = lab >= 0
            self.class_sum.index_add_(0, lab[keep], m[keep])
            self.class_count += torch.bincount(lab[keep], minlength=len(self.class_count))

    def all_reduce(self, group=None) -> None:
        n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.sum.device)
        for t in (n, self.sum, self.outer, self.class_sum, self.class_count):
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        self.n = int(n.item())

    # ------------------------------------------------------------------ results

    def correlation(self) -> torch.Tensor:
        """(C, C) float64 Pearson correlation of the units' per-image maxima; NaN in the
        rows and columns of units whose maxima do not vary."""
        n = max(self.n, 1)
        mean = self.sum / n
        cov = self.outer / n - torch.outer(mean, mean)
        sd = cov.diagonal().clamp_min(0).sqrt()
        scale = torch.outer(sd, sd)
        flat = sd <= 1e-12 * sd.max().clamp_min(1e-300)
        corr = cov / scale
        corr[flat, :] = torch.nan
        corr[:, flat] = torch.nan
        return corr.clamp(-1, 1)

    def similar(self, k: int = NEIGHBOURS) -> tuple[torch.Tensor, torch.Tensor]:
        """Each unit's ``k`` most correlated other units, best first: (C, k) indices
        (-1 where there are fewer) and (C, k) correlations (NaN there). Ties go to the
        lower unit index."""
        corr = self.correlation().cpu()
        c = corr.shape[0]
        key = torch.where(torch.isnan(corr), -torch.inf, corr)
        key.fill_diagonal_(-torch.inf)
        k = min(k, max(c - 1, 0))
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
        value = corr.gather(1, order)
        valid = torch.isfinite(key.gather(1, order))
        return torch.where(valid, order, -1), torch.where(valid, value, torch.nan)

    def class_means(self) -> torch.Tensor:
        """(K, C) float64: the mean per-image maximum of each unit over each class's
        images (NaN for a class without images)."""
        count = self.class_count.double()[:, None]
        return torch.where(count > 0, self.class_sum / count.clamp_min(1), torch.nan).cpu()

    def top_classes(self, k: int = NEIGHBOURS) -> tuple[torch.Tensor, torch.Tensor]:
        """Each unit's ``k`` classes with the highest mean per-image maximum, best first:
        (C, k) class indices and (C, k) means (ties: the lower class index)."""
        means = self.class_means().T  # (C, K)
        key = torch.where(torch.isnan(means), -torch.inf, means)
        k = min(k, means.shape[1])
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
        return order, means.gather(1, order)


def project_winners_batched(model, read: Callable[[int], torch.Tensor | None], layer: str, topk: TopK,
                            units: Sequence[int], info: LayerInfo, *, method: str = "deconvnet",
                            batch_size: int = 64, progress: ProgressFn | None = None, what: str = "projecting"
                            ) -> dict[tuple[int, int], tuple[torch.Tensor, tuple[int, int, int, int]]]:
    """The winners of ``units`` (ranks with an image and an activation > 0) projected
    to pixels, ``batch_size`` winners at a time, each through the crop of its image
    that holds its receptive field.

    ``read(i)``: image i as the model's normalised (C, H, W) tensor, or None when it
    cannot be read again (its winners are left out). Returns {(unit, rank):
    (projection (C, h, w) cropped to the receptive-field box, the box (top, bottom,
    left, right))} on the CPU.
    """
    cpu = topk.cpu()
    wins = [(u, r) for u in units for r in range(cpu.image.shape[1])
            if int(cpu.image[u, r]) >= 0 and float(cpu.value[u, r]) > 0]
    wins.sort(key=lambda w: int(cpu.image[w]))  # neighbours share images
    device = model_device(model)
    rules = ReverseRules(method)
    out: dict = {}
    total = -(-len(wins) // batch_size)
    if progress is not None:
        progress(0, total, what)
    with preserved_model(model):
        for step, start in enumerate(range(0, len(wins), batch_size), 1):
            chunk = wins[start:start + batch_size]
            rows: dict[int, int] = {}
            images = []
            for u, r in chunk:
                i = int(cpu.image[u, r])
                if i not in rows:
                    x = read(i)
                    if x is None:
                        rows[i] = -1
                        continue
                    rows[i] = len(images)
                    images.append(x)
            chunk = [(u, r) for u, r in chunk if rows[int(cpu.image[u, r])] >= 0]
            if chunk:
                x = torch.stack(images).to(device)
                idx = lambda t: torch.tensor([int(t[u, r]) for u, r in chunk], device=device)  # noqa: E731
                units_ = Activations(idx(cpu.image).new_tensor([u for u, _ in chunk]), idx(cpu.y), idx(cpu.x),
                                     torch.tensor([float(cpu.value[u, r]) for u, r in chunk], device=device))
                which = [rows[int(cpu.image[u, r])] for u, r in chunk]
                h, w = x.shape[-2:]
                # A receptive field near the image's size (the engine's CROP_BELOW rule): whole-image
                # windows, one shape for every winner, since each new crop shape costs the
                # convolution library a new plan (99 shapes made AlexNet conv2 at 96 px 5x slower).
                windows = info if info.rf[0] * info.rf[1] < CROP_BELOW * h * w else \
                    replace(info, rf=(4 * h + 1, 4 * w + 1))
                proj = backproject_cropped(model, x, layer, units_, windows, rules, which=which,
                                           batch_size=batch_size).detach().cpu()
                for j, (u, r) in enumerate(chunk):
                    box = info.box(int(cpu.y[u, r]), int(cpu.x[u, r]), h, w)
                    t, b, left, right = box
                    out[(u, r)] = (proj[j][:, t:b, left:right].clone(), box)
            if progress is not None:
                progress(step, total, what)
    rules.check()
    return out


__all__ = ["UnitMaxima", "project_winners_batched", "NEIGHBOURS"]
