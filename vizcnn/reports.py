"""Report writers: compute with the library, render, write files atomically.

Each ``write_*`` function is what one CLI command runs; it returns the summary dict
that it also writes to summary.json.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .deconv import Activations, backproject, check_input, forward_to, strongest, top_units
from .errors import BadArgumentError, as_index
from .imageio import safe_filename, save_figure
from .layers import default_layers, geometry_key, layer_geometry, resolve_layer
from .output import OutputDir
from .progress import ProgressFn, each
from .render import deconv_grid, figure_title, num
from .rules import ReverseRules
from .state import preserved_model


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise BadArgumentError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadArgumentError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    return torch.device(device)


def deconv_layers(model: nn.Module, x: torch.Tensor, layers: Sequence[str], *, top: int = 9,
                  channel: int | None = None, method: str = "deconvnet", lrn: str | None = None,
                  strict: bool | None = None, progress: ProgressFn | None = None
                  ) -> dict[str, tuple[Activations, torch.Tensor]]:
    """For each layer: its ``top`` strongest channels in the image (or just ``channel``),
    and their projections (K, C, H, W). One forward to the deepest layer serves all.
    ``lrn`` and ``strict`` as in :func:`vizcnn.deconv.project`."""
    x = check_input(x)
    channel = None if channel is None else as_index(channel, "channel")
    with preserved_model(model):
        acts, leaf = forward_to(model, x, layers, ReverseRules(method, lrn=lrn, strict=strict))
        result = {}
        for i, name in enumerate(each(progress, "projecting", layers)):
            act = acts[name]
            if act.dim() != 3:
                raise BadArgumentError(f"layer {name!r} is not a spatial feature map (output {tuple(act.shape)})")
            if channel is not None:
                if not 0 <= channel < act.shape[0]:
                    raise BadArgumentError(f"channel {channel} out of range: layer {name!r} has channels "
                                           f"0..{act.shape[0] - 1}")
                units = strongest(act, [channel])
            else:
                units = top_units(act, top)
            proj = backproject(act, leaf, units, retain_graph=i < len(layers) - 1)
            result[name] = (units, proj.detach())
    return result


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


__all__ = ["resolve_device", "deconv_layers", "write_deconv"]
