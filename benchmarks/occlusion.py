"""Occlusion: vizcnn's Fig. 7 sweep (all four panels from the same passes), full and
incremental, vs captum's Occlusion (one map) at one and at 64 perturbations per forward."""
from __future__ import annotations

import torch

from vizcnn.methods.occlusion import occlude
from vizcnn.models import build_model

from .common import Row, median_seconds

WINDOW, STRIDE = 32, 16  # 169 positions at 224²


def run(device: torch.device, flops_per_s: float, *, quick: bool = False) -> list[Row]:
    from captum.attr import Occlusion

    rows = []
    for name in ("alexnet",) if quick else ("alexnet", "vgg16"):
        model = build_model(name).to(device).eval()
        x = torch.randn(1, 3, 224, 224, device=device, generator=torch.Generator(device).manual_seed(0))
        with torch.no_grad():
            target = int(model(x).argmax())
        captum = Occlusion(model)

        def theirs(ppe):
            return lambda: captum.attribute(x, sliding_window_shapes=(3, WINDOW, WINDOW), strides=(3, STRIDE, STRIDE),
                                            target=target, perturbations_per_eval=ppe)

        best = median_seconds(theirs(64), device, repeats=1 if name == "vgg16" else 3) * 1e3
        one = median_seconds(theirs(1), device, repeats=1) * 1e3 if not quick else float("nan")
        full = median_seconds(lambda: occlude(model, x, window=WINDOW, stride=STRIDE, target=target,
                                              incremental=False, projection=False), device,
                            repeats=1 if name == "vgg16" else 3) * 1e3
        inc = median_seconds(lambda: occlude(model, x, window=WINDOW, stride=STRIDE, target=target,
                                             incremental=True, projection=False), device, repeats=3) * 1e3
        note = f"captum with 1 perturbation per forward: {one:.0f} ms; panels b, d, e from the same sweep"
        rows.append(Row("occlusion", f"{name} 224², 32 px / 16, full batched", full, "captum Occlusion (64/forward)",
                        best, "four panels ≤ captum's one map", note))
        rows.append(Row("occlusion", f"{name} 224², 32 px / 16, incremental", inc, "captum Occlusion (64/forward)",
                        best, "≥3× captum on VGG16, exact", f"full/incremental {full / inc:.1f}×"))
    return rows
