"""Saliency maps: vizcnn vs captum's equivalents on the same model and image, one process."""
from __future__ import annotations

import torch

from vizcnn.methods.saliency import saliency
from vizcnn.models import build_model

from .common import Row, median_seconds


def run(device: torch.device, flops_per_s: float, *, quick: bool = False) -> list[Row]:
    from captum.attr import GuidedBackprop, IntegratedGradients, LayerGradCam, Saliency

    model = build_model("alexnet").to(device).eval()
    x = torch.randn(1, 3, 224, 224, device=device, generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad():
        target = int(model(x).argmax())
    forward = median_seconds(lambda: model(x), device) * 1e3
    conv5 = model.features[10]
    steps = 20 if quick else 50
    cases = [
        ("gradient", {}, lambda: Saliency(model).attribute(x.clone().requires_grad_(), target=target), "Saliency"),
        ("guided", {}, lambda: GuidedBackprop(model).attribute(x.clone().requires_grad_(), target=target),
         "GuidedBackprop"),
        ("gradcam", {"layer": "conv5"}, lambda: LayerGradCam(model, conv5).attribute(x, target=target),
         "LayerGradCam"),
        ("integrated-gradients", {"steps": steps},
         lambda: IntegratedGradients(model).attribute(x, target=target, n_steps=steps, internal_batch_size=steps),
         f"IntegratedGradients ({steps} steps)"),
    ]
    rows = []
    for method, kwargs, captum, name in cases:
        ours = median_seconds(lambda: saliency(model, x, method, target, **kwargs), device) * 1e3
        theirs = median_seconds(captum, device) * 1e3
        rows.append(Row("saliency", f"alexnet 224², {method}", ours, f"captum {name}", theirs, "≥ parity",
                        f"bare forward {forward:.1f} ms"))
    return rows
