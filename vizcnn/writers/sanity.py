"""``vizcnn sanity``: the cascading-randomization check computed (``vizcnn.methods.sanity``),
drawn (``vizcnn.render.saliency``) and written with the verdicts."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..io.imageio import save_figure
from ..methods.sanity import (DEFAULT_METHODS, FAILS, INCONCLUSIVE, PASSES, THRESHOLD, VERDICT_METRIC, VERDICT_RULE,
                              sanity_check)
from ..render.common import model_title, num
from ..render.saliency import sanity_curves_figure, sanity_maps_figure
from .saliency import class_label


def _clean(values: list[float]) -> list[float | None]:
    return [None if (v is None or math.isnan(v)) else round(float(v), 5) for v in values]


def _round(c: dict) -> dict:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in c.items()}


def write_sanity(out, model: nn.Module, model_name: str, image, x, *,
                 methods: Sequence[str] = DEFAULT_METHODS, target: int | None = None, layer: str | None = None,
                 names: list[str] | None = None, extra: dict | None = None, on_step=None,
                 image_names: Sequence[str] | None = None, **kwargs) -> dict:
    """``vizcnn sanity``: sanity_maps.png (rows = methods, columns = cascade steps, for the
    first image), sanity_curves.png (similarity against depth: the mean across images
    with its 95% interval) and summary.json with the per-method verdicts.

    image, x: one display image and its normalised tensor, or lists of them (one verdict
    over all); image_names: what each image is (its file), for the summary."""
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    image_names = list(image_names) if image_names is not None else [str((extra or {}).get("image", "image"))]
    r = sanity_check(model, xs, methods, target, layer=layer, on_step=on_step, **kwargs)
    cls = class_label(r.target, names)
    which = "predicted class" if target is None else "target class"
    n = len(xs)
    head = f"{model_title(model_name, (extra or {}).get('weights'))} · {n} image{'s' if n != 1 else ''}"
    shown = Path(image_names[0]).name if image_names else "image 1"
    first = f"{shown}: {which} {r.target} “{cls}” (p = {num(r.probability)})"
    verdict_label = r.steps[r.verdict_step]
    notes = {}
    for m in r.methods:
        v = r.verdicts[m]
        c = v[f"{VERDICT_METRIC}_at_verdict_step"]
        span = f"\n[{num(c['lo'], 2)}, {num(c['hi'], 2)}]" if c["lo"] is not None else ""
        notes[m] = {PASSES: "passes", FAILS: "FAILS"}.get(v["verdict"], v["verdict"]) + span
    save_figure(sanity_maps_figure({m: r.maps[m][0] for m in r.methods}, r.steps,
                                   f"{head} · shown: {first}\ncascading randomization, top layers first "
                                   f"(each column: that layer and all above it re-initialised)", images[0],
                                   notes=notes),
                out.path("sanity_maps.png"))
    titles = {"spearman_signed": "|rank correlation|, signed maps (verdict)",
              "spearman_abs": "rank correlation, absolute maps", "ssim": "SSIM, maps scaled to [0, 1]"}
    means = {titles[k]: {m: [c["mean"] for c in r.curves[k][m]] for m in r.methods} for k in titles}
    bands = {titles[k]: {m: ([c["lo"] for c in r.curves[k][m]], [c["hi"] for c in r.curves[k][m]])
                         for m in r.methods} for k in titles}
    said = {w: ", ".join(m for m in r.methods if r.verdicts[m]["verdict"] == w) or "none"
            for w in (PASSES, FAILS, INCONCLUSIVE)}
    title = (f"{head} · sanity check (Adebayo et al. 2018): mean across images, shaded 95% interval\n"
             f"passes (interval below {THRESHOLD} by {verdict_label}, dotted line): {said[PASSES]} · "
             f"fails: {said[FAILS]} · inconclusive: {said[INCONCLUSIVE]}")
    save_figure(sanity_curves_figure(r.steps, means, title, threshold=THRESHOLD,
                                     threshold_metric=titles[VERDICT_METRIC], verdict_step=r.verdict_step,
                                     intervals=bands if n > 1 else None),
                out.path("sanity_curves.png"))
    verdicts = {m: {k: (_round(v) if isinstance(v, dict) else v) for k, v in vs.items()}
                for m, vs in r.verdicts.items()}
    summary = {
        "model": model_name, "input_size": list(xs[0].shape[-3:]), **(extra or {}),
        "target": r.target, "class_name": cls, "probability": r.probability,
        "images": [{"image": name, "target": t, "class_name": class_label(t, names), "probability": p}
                   for name, t, p in zip(image_names or [f"image {i + 1}" for i in range(n)], r.targets,
                                         r.probabilities)],
        "gradcam_layer": r.layer, "steps": r.steps, "units": r.units,
        "verdict_rule": VERDICT_RULE, "verdict_step": verdict_label,
        "verdicts": verdicts,
        "curves": {k: {m: [_round(c) for c in per] for m, per in pm.items()} for k, pm in r.curves.items()},
        "metrics": {k: {m: [_clean(row) for row in rows] for m, rows in per.items()} for k, per in r.metrics.items()},
    }
    return out.finish(summary)


__all__ = ["write_sanity"]
