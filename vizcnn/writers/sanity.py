"""``vizcnn sanity``: the cascading-randomization check computed (``vizcnn.methods.sanity``),
drawn (``vizcnn.render.saliency``) and written with the verdicts."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..io.imageio import save_figure
from ..methods.sanity import DEFAULT_METHODS, THRESHOLD, VERDICT_METRIC, VERDICT_RULE, sanity_check
from ..render.common import model_title, num
from ..render.saliency import sanity_curves_figure, sanity_maps_figure
from .saliency import class_label


def _clean(values: list[float]) -> list[float | None]:
    return [None if (v is None or math.isnan(v)) else round(float(v), 5) for v in values]


def write_sanity(out, model: nn.Module, model_name: str, image: np.ndarray, x: torch.Tensor, *,
                 methods: Sequence[str] = DEFAULT_METHODS, target: int | None = None, layer: str | None = None,
                 names: list[str] | None = None, extra: dict | None = None, on_step=None, **kwargs) -> dict:
    """``vizcnn sanity``: sanity_maps.png (rows = methods, columns = cascade steps),
    sanity_curves.png (similarity against depth) and summary.json with the per-method
    verdicts."""

    r = sanity_check(model, x, methods, target, layer=layer, on_step=on_step, **kwargs)
    cls = class_label(r.target, names)
    which = "predicted class" if target is None else "target class"
    head = f"{model_title(model_name, (extra or {}).get('weights'))} · {which} {r.target} “{cls}” (p = {num(r.probability)})"
    verdict_label = r.steps[r.verdict_step]
    notes = {m: {True: "passes", False: "FAILS", None: "no verdict"}[r.verdicts[m]["passes"]] for m in r.methods}
    save_figure(sanity_maps_figure(r.maps, r.steps, f"{head}\ncascading randomization, top layers first "
                                   f"(each column: that layer and all above it re-initialised)", image,
                                   notes=notes),
                out.path("sanity_maps.png"))
    titles = {"spearman_signed": "rank correlation, signed (verdict)",
              "spearman_abs": "rank correlation, absolute maps", "ssim": "SSIM, maps scaled to [0, 1]"}
    metrics = {titles[k]: r.metrics[k] for k in titles}
    passed = ", ".join(m for m in r.methods if r.verdicts[m]["passes"]) or "none"
    failed = ", ".join(m for m in r.methods if r.verdicts[m]["passes"] is False) or "none"
    title = (f"{head} · sanity check (Adebayo et al. 2018)\n"
             f"passes (signed ρ < {THRESHOLD} by {verdict_label}, dotted line): {passed} · fails: {failed}")
    save_figure(sanity_curves_figure(r.steps, metrics, title, threshold=THRESHOLD,
                                     threshold_metric=titles[VERDICT_METRIC], verdict_step=r.verdict_step),
                out.path("sanity_curves.png"))
    summary = {
        "model": model_name, "input_size": list(x.shape[-3:]), **(extra or {}),
        "target": r.target, "class_name": cls, "probability": r.probability,
        "gradcam_layer": r.layer, "steps": r.steps, "units": r.units,
        "verdict_rule": VERDICT_RULE, "verdict_step": verdict_label,
        "verdicts": r.verdicts,
        "metrics": {k: {m: _clean(v) for m, v in per.items()} for k, per in r.metrics.items()},
    }
    return out.finish(summary)


__all__ = ["write_sanity"]
