"""``vizcnn saliency``: every method's map computed (``vizcnn.methods.saliency``), drawn
(``vizcnn.render.saliency``) and written with summary.json."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.errors import BadArgumentError
from ..core.layers import resolve_layer
from ..core.progress import ProgressFn, each
from ..io.imageio import save_figure
from ..methods.saliency import MAP_UNITS, METHODS, SaliencyResult, map_statistics, saliency_all, top_classes
from ..render.common import model_title, num
from ..render.saliency import map_figure, overlay_figure, panel_figure


def class_label(index: int, names: list[str] | None) -> str:
    """``names[index]`` where names are known, else ``class <index>``."""
    return names[index] if names and 0 <= index < len(names) else f"class {index}"


def _detail(r: SaliencyResult) -> str:
    """The settings a figure title names next to the method."""
    i = r.info
    if r.method == "gradcam":
        return f" · layer {i['layer']}"
    if r.method == "integrated-gradients":
        return f" · {i['steps']} steps"
    if r.method == "smoothgrad":
        return f" · {i['samples']} samples, σ {i['noise']:g}"
    if r.method == "occlusion":
        return f" · {i['window']} px, stride {i['stride']}"
    return ""


def write_saliency(out, model: nn.Module, model_name: str, image: np.ndarray, x: torch.Tensor, *,
                   methods=("gradient",), target: int | None = None, layer: str | None = None,
                   names: list[str] | None = None, extra: dict | None = None,
                   progress: ProgressFn | None = None, **kwargs) -> dict:
    """``vizcnn saliency``: per method a map PNG (with colour bar) and an overlay PNG; with
    several methods also a side-by-side panel; summary.json with the target, its class
    name and probability, and each map's statistics.

    out: a ``vizcnn.io.output.OutputDir``; image: the H×W×C display image in [0, 1] the
    model sees; x: its normalised tensor (1, C, H, W); names: class names or None.
    ``progress(done, total, what)`` hears of each map computed and drawn.
    """

    methods = list(methods)
    for m in methods:
        if m not in METHODS:
            raise BadArgumentError(f"unknown saliency method {m!r}; choose one of {', '.join(METHODS)}, all")
    if layer is not None and "gradcam" not in methods:
        raise BadArgumentError("--layer applies to gradcam only; add gradcam to the methods")
    if layer is not None:
        resolve_layer(model, layer)
    times: dict[str, float] = {}

    def computed(method: str, seconds: float) -> None:
        times[method] = seconds
        if progress is not None:
            progress(len(times), len(methods), "computing maps")

    if progress is not None:
        progress(0, len(methods), "computing maps")
    results = saliency_all(model, x, methods, target, layer=layer, on_method=computed, **kwargs)
    first = results[methods[0]]
    t, prob = first.target, first.probability
    cls = class_label(t, names)

    which = "predicted class" if target is None else "target class"
    head = f"{model_title(model_name, (extra or {}).get('weights'))} · {which} {t} “{cls}” (p = {num(prob)})"
    entries = {}
    for method, r in each(progress, "drawing", results.items()):
        detail = _detail(r)
        title = f"{head}\n{method}{detail}"
        files = {"map": f"{method}_map.png", "overlay": f"{method}_overlay.png"}
        save_figure(map_figure(r.map, title, MAP_UNITS[method]), out.path(files["map"]))
        save_figure(overlay_figure(image, r.map, title), out.path(files["overlay"]))
        entries[method] = {**files, "time_s": round(times[method], 4), "map": map_statistics(r.map),
                           **{k: v for k, v in r.info.items() if isinstance(v, (int, float, str, list))}}
    summary = {"model": model_name, "input_size": list(x.shape[1:]), **(extra or {}),
               "target": t, "class_name": cls, "probability": prob,
               "top5": [{"index": i, "class_name": class_label(i, names), "probability": p}
                        for i, p in top_classes(model, x)],
               "display": "maps scaled to their 99.5th percentile", "methods": entries}
    if len(methods) > 1:
        subtitles = {m: _detail(r).lstrip(" ·") for m, r in results.items() if _detail(r)}
        save_figure(panel_figure(image, {m: r.map for m, r in results.items()}, f"{head} · saliency, one method "
                                 "per panel", subtitles),
                    out.path("panel.png"))
        summary["panel"] = "panel.png"
    return out.finish(summary)


__all__ = ["write_saliency", "class_label"]
