"""``vizcnn deconv``: each layer's strongest activations in one image, projected
(``vizcnn.methods.deconv``), drawn as Fig. 2 (``vizcnn.render.deconv``) and written with
summary.json."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import BadArgumentError
from ..core.layers import default_layers, geometry_key, layer_geometry, resolve_layer
from ..core.progress import ProgressFn, each
from ..io.imageio import safe_filename, save_figure
from ..io.output import OutputDir
from ..methods.deconv import deconv_layers
from ..render.common import figure_title, num
from ..render.deconv import deconv_grid


def write_deconv(out: OutputDir, model: nn.Module, model_name: str, image: np.ndarray, x: torch.Tensor,
                 *, layers: Sequence[str] | None = None, top: int = 9, channel: int | None = None,
                 method: str = "deconvnet", extra: dict | None = None, progress: ProgressFn | None = None) -> dict:
    """``vizcnn deconv``: one Fig. 2-style PNG per layer and summary.json.
    ``progress(done, total, what)`` hears of each layer projected and drawn."""
    layers = list(layers or default_layers(model))
    if not isinstance(top, int) or top < 1:
        raise BadArgumentError(f"--top must be a positive integer, got {top!r}")
    for name in layers:  # a bad name fails here, before any heavy work
        resolve_layer(model, name)
    geometry = layer_geometry(model, tuple(x.shape[1:]))
    results = deconv_layers(model, x, layers, top=top, channel=channel, method=method, progress=progress)
    h, w = x.shape[-2:]
    entries = []
    for name in each(progress, "drawing", layers):
        units, proj = results[name]
        info = geometry[geometry_key(model, name)]
        boxes = [info.box(int(yy), int(xx), h, w) for yy, xx in zip(units.y, units.x)]
        labels = [f"ch {int(c)} · activation {num(float(v))}\nreceptive field y {t}–{bt}, x {lf}–{rt} px"
                  for c, v, (t, bt, lf, rt) in zip(units.channel, units.value, boxes)]
        title = figure_title(model_name, weights=(extra or {}).get("weights"), layer=name, method=method,
                             what=f"top {len(units)} activations in this image")
        file = f"deconv_{safe_filename(name)}.png"
        save_figure(deconv_grid(image, proj, boxes, labels, title), out.path(file))
        entries.append({
            "layer": name, "module": info.path, "file": file,
            "receptive_field": list(info.rf), "stride": list(info.jump),
            "units": [{"rank": r, "channel": int(c), "y": int(yy), "x": int(xx), "value": float(v),
                       "box": {"top": b[0], "bottom": b[1], "left": b[2], "right": b[3]}}
                      for r, (c, yy, xx, v, b) in enumerate(zip(units.channel, units.y, units.x, units.value, boxes))],
        })
    summary = {"model": model_name, "method": method, "top": top, "input_size": list(x.shape[1:]),
               **(extra or {}), "layers": entries}
    return out.finish(summary)


__all__ = ["write_deconv"]
