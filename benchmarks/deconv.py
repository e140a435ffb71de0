"""Deconv projections: vizcnn vs captum's NeuronDeconvolution (one call per neuron, the only
way captum offers) and vs the arithmetic floor of one input-gradient pass to the layer."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import vizcnn
from vizcnn.methods.deconv import forward_to, top_units
from vizcnn.models import build_model

from .common import Row, median_seconds

CASES = [("alexnet", "conv5", "features.11"), ("alexnet", "conv2", "features.4"),
         ("resnet50", "layer3", "layer3"), ("googlenet", "inception4e", "inception4e")]
TARGETS = {"conv5": "≥4× captum, ≤1.5× floor", "conv2": "≥20× captum"}


def floor_ms(model, x, layer, flops_per_s) -> float:
    """FLOPs of one forward to the layer plus one input-gradient backward from it, over
    the machine's matmul throughput."""
    counter = FlopCounterMode(display=False)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():  # the floor is the input gradient alone: no weight gradients
        p.requires_grad_(False)
    with counter:
        acts, leaf = forward_to(model, x, layer)
        act = acts[layer]
        seed = torch.zeros_like(act)
        seed.view(-1)[int(act.argmax())] = 1
        act.backward(seed)  # FlopCounterMode's module tracker does not support autograd.grad
    for p, flag in zip(model.parameters(), flags):
        p.requires_grad_(flag)
    return counter.get_total_flops() / flops_per_s * 1e3


def run(device: torch.device, flops_per_s: float, *, quick: bool = False) -> list[Row]:
    from captum.attr import NeuronDeconvolution

    rows = []
    ks = (1, 9) if quick else (1, 9, 64)
    for name, layer, path in CASES[:2] if quick else CASES:
        model = build_model(name).to(device).eval()
        x = torch.randn(1, 3, 224, 224, device=device, generator=torch.Generator(device).manual_seed(0))
        with torch.no_grad():
            acts, _ = forward_to(model, x, layer)
        units = top_units(acts[layer], max(ks))
        module = dict(model.named_modules())[path]
        captum = NeuronDeconvolution(model, module)
        floor = floor_ms(model, x, layer, flops_per_s)
        for k in ks:
            chans = [int(c) for c in units.channel[:k]]
            pos = [(int(units.y[i]), int(units.x[i])) for i in range(k)]

            def ours():
                vizcnn.project_top(model, x, layer, k)

            def theirs():
                for c, (y, xx) in zip(chans, pos):
                    captum.attribute(x, neuron_selector=(c, y, xx))

            repeats = 3 if k > 9 else 5
            t_ours = median_seconds(ours, device, repeats=repeats)
            t_captum = median_seconds(theirs, device, repeats=1 if k > 9 else 3)
            rows.append(Row("deconv", f"{name} {layer}, k={k}", t_ours * 1e3 / k, "captum NeuronDeconvolution",
                            t_captum * 1e3 / k, TARGETS.get(layer, ""),
                            f"per projection; floor {floor:.1f} ms → vizcnn/floor {t_ours * 1e3 / k / floor:.2f}×",
                            {"floor_ms": floor}))
    return rows
