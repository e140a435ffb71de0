"""``vizcnn occlusion``: Fig. 7 computed (``vizcnn.methods.occlusion``), drawn
(``vizcnn.render.occlusion``) and written with its summary.json."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..io.imageio import save_figure
from ..io.output import OutputDir
from ..methods.occlusion import OcclusionResult, occlude
from ..render.occlusion import occlusion_figure


def occlusion_summary(result: OcclusionResult, class_names: Sequence[str] | None = None) -> dict:
    """The result as plain JSON-ready Python (maps as nested lists, row = occluder top)."""
    i, j = np.unravel_index(int(torch.argmin(result.probability)), result.shape)
    top, bottom, left, right = result.box(i, j)

    def name(c: int) -> str | None:
        return class_names[c] if class_names is not None and 0 <= c < len(class_names) else None

    return {
        "positions": list(result.shape), "window": list(result.window), "stride": list(result.stride),
        "fill": result.fill, "tops": result.tops.tolist(), "lefts": result.lefts.tolist(),
        "layer": result.layer, "strongest_map": result.channel, "strongest_unit": list(result.unit),
        "projection_box": None if result.projection_box is None else dict(zip(("top", "bottom", "left", "right"),
                                                                              result.projection_box)),
        "target": result.target, "target_name": name(result.target),
        "probability_unoccluded": result.probability_clean,
        "top_class_unoccluded": result.clean_class, "top_class_unoccluded_name": name(result.clean_class),
        "top5_unoccluded": [{"class": c, "name": name(c), "probability": p} for c, p in result.clean_top],
        "min_probability": {"value": float(result.probability.min()), "row": int(i), "col": int(j),
                            "box": {"top": top, "bottom": bottom, "left": left, "right": right}},
        "method": result.method, "timings_s": result.timings,
        "maps": {"activation": result.activation.tolist(), "probability": result.probability.tolist(),
                 "top_class": result.top_class.tolist()},
        "top_classes": {str(c): {"name": name(int(c)), "positions": int(k)}
                        for c, k in zip(*np.unique(result.top_class.numpy(), return_counts=True))},
    }


def write_occlusion(out: OutputDir, model, model_name: str, image: np.ndarray, x: torch.Tensor, *,
                    window=None, stride=None, layer: str | None = None, target: int | None = None,
                    incremental: str | bool = "auto", batch_size: int = 64,
                    class_names: Sequence[str] | None = None, extra: dict | None = None) -> dict:
    """``vizcnn occlusion``: occlusion.png (Fig. 7) and summary.json."""
    result = occlude(model, x, window=window, stride=stride, layer=layer, target=target, batch_size=batch_size,
                     incremental=incremental)
    save_figure(occlusion_figure(image, result, model_name=model_name, class_names=class_names,
                                 weights=(extra or {}).get("weights"),
                                 target_label=None if target is None else "target class"),
                out.path("occlusion.png"))
    summary = {"model": model_name, **(extra or {}), "input_size": list(x.shape[1:]),
               **occlusion_summary(result, class_names), "figure": "occlusion.png"}
    return out.finish(summary)


__all__ = ["write_occlusion", "occlusion_summary"]
