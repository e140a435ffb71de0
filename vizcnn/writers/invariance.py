"""``vizcnn invariance``: Fig. 5 curves computed (``vizcnn.methods.invariance``), drawn
(``vizcnn.render.invariance``) and written with their summary.json."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..io.imageio import save_figure
from ..io.output import OutputDir
from ..methods.invariance import TRANSFORMS, InvarianceResult, invariance_curves
from ..render.invariance import invariance_figure


def invariance_summary(result: InvarianceResult, class_names: Sequence[str] | None = None) -> dict:
    return {
        "transform": result.transform, "border": result.border, "amounts": result.amounts.tolist(),
        "first_layer": result.first_layer, "last_layer": result.last_layer,
        "distance_first": result.distance_first.tolist(), "distance_last": result.distance_last.tolist(),
        "raw_distance_first": result.raw_first.tolist(), "raw_distance_last": result.raw_last.tolist(),
        "norm_first": result.norm_first, "norm_last": result.norm_last,
        "target": result.target,
        "target_name": class_names[result.target] if class_names and result.target < len(class_names) else None,
        "probability_original": result.probability_clean, "probability": result.probability.tolist(),
        "top_class": result.top_class.tolist(),
    }


def write_invariance(out: OutputDir, model, model_name: str, x: torch.Tensor, *, transforms: Sequence[str] = TRANSFORMS,
                     amounts: Sequence[float] | None = None, target: int | None = None, border: str = "mean",
                     batch_size: int = 64, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                     class_names: Sequence[str] | None = None, extra: dict | None = None) -> dict:
    """``vizcnn invariance``: invariance_<transform>.png per transform and summary.json."""
    results = [invariance_curves(model, x, t, amounts, target=target, border=border, batch_size=batch_size)
               for t in transforms]
    entries = []
    for r in results:
        file = f"invariance_{r.transform}.png"
        save_figure(invariance_figure(r, model_name=model_name, mean=mean, std=std, class_names=class_names,
                                      weights=(extra or {}).get("weights"),
                                      target_label="predicted class" if target is None else "target class"),
                    out.path(file))
        entries.append({**invariance_summary(r, class_names), "file": file})
    summary = {"model": model_name, **(extra or {}), "input_size": list(x.shape[1:]),
               "distance": "Euclidean distance between flattened feature vectors of the original and the "
                           "transformed image, divided by the norm of the original's vector",
               "transforms": entries}
    return out.finish(summary)


__all__ = ["write_invariance", "invariance_summary"]
