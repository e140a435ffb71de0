"""The atlas, stage by stage: the shipped AlexNet (96 px, Fashion-MNIST weights), every conv
unit, top-9 over Fashion-MNIST's test split (10,000 images), with and without 128
optimisation steps per unit. Each stage's wall time is set against its arithmetic floor
(:mod:`benchmarks.floor`, the best dense throughput measured in the same run):

* pass: N forwards truncated at conv5;
* projections: per layer, its winners' projections (:func:`benchmarks.floor.projection_flops`
  for one winner, times the number of winners);
* optimisation: per layer, units × steps × (one forward to the layer and one input-gradient
  backward) on the transformed image (the input padded by the transforms, 96 + 2·5 px);
* rendering: no FLOPs (image encoding and HTML); its row gives ms per unit page.

``--quick`` (or no Fashion-MNIST): 200 images, two layers, 16 units each, 8 steps.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from vizcnn.core.layers import conv_layers
from vizcnn.io.sources import open_data
from vizcnn.models import get_spec, load_model
from vizcnn.writers.atlas import atlas

from .common import Row
from .floor import floor_ms, forward_backward_flops, peak_flops_per_second, projection_flops


def _case(quick: bool):
    try:
        source = open_data("fashion-mnist:test", limit=200 if quick else None)
    except Exception:  # noqa: BLE001 — no dataset here: the quick case on the samples
        source, quick = open_data("samples"), True
    return source, quick


def run(device: torch.device, flops_per_s: float, *, quick: bool = False) -> list[Row]:
    spec = get_spec("alexnet", "fashion-mnist")
    model = load_model("alexnet", "fashion-mnist", device=device)
    source, quick = _case(quick)
    layers = ["conv1", "conv3"] if quick else conv_layers(model)
    units = "0-15" if quick else None
    steps = 8 if quick else 128
    peak = peak_flops_per_second(device, [(model, tuple(spec.input_size))])
    x = torch.zeros(1, *spec.input_size, device=device)
    padded = torch.zeros(1, spec.input_size[0], spec.input_size[1] + 10, spec.input_size[2] + 10, device=device)
    rows = []
    for optimize in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = atlas(model, source, Path(tmp) / "atlas", spec=spec, layers=layers, units=units,
                            optimize=optimize, optimize_steps=steps, num_workers=None)
            total = time.perf_counter() - start
        sec = summary["seconds"]
        n = summary["images"]
        per_layer = {e["layer"]: e for e in summary["layers"]}
        fwd_deepest, _ = forward_backward_flops(model, x, layers[-1])
        floors = {"pass": floor_ms(n * fwd_deepest, peak)}
        proj = 0
        for name, e in per_layer.items():
            winners = sum(1 for u in e["units"] for w in u["winners"] if w["projection"])
            proj += winners * projection_flops(model, x, name, 1)
        floors["projections"] = floor_ms(proj, peak)
        if optimize:
            opt = 0
            for name, e in per_layer.items():
                f, b = forward_backward_flops(model, padded, name)
                opt += len(e["units"]) * steps * (f + b)
            floors["optimisation"] = floor_ms(opt, peak)
        pages = sum(len(e["units"]) for e in summary["layers"])
        what = (f"alexnet fashion-mnist 96 px, {len(layers)} layers, {pages} units, top-9 over {n} images, "
                + (f"{steps} steps" if optimize else "no optimisation"))
        for stage in ("pass", "projections", "optimisation", "rendering"):
            if stage == "optimisation" and not optimize:
                continue
            ms = sec[stage] * 1e3
            if stage == "rendering":
                rows.append(Row("atlas", f"{what}: rendering", ms, "—", ms, "", f"{ms / pages:.1f} ms per unit page"))
                continue
            fl = floors[stage]
            rows.append(Row("atlas", f"{what}: {stage}", ms, "FLOP floor", fl,
                            "pass ≤ 1.3× the bare forward" if stage == "pass" else "",
                            f"{ms / fl:.1f}× the floor (peak {peak / 1e9:.0f} GFLOP/s)", {"floor_ms": fl}))
        target = "≤ 15 min" if optimize else "≤ 3 min"
        rows.append(Row("atlas", f"{what}: total", total * 1e3, "target", (900 if optimize else 180) * 1e3, target,
                        f"{total:.0f} s wall"))
    return rows
