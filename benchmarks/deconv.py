"""Deconv projections: vizcnn against captum's NeuronDeconvolution (one call per neuron,
the only way captum offers), against zennit's DeconvNet composite (one forward, then k
backward passes with the graph retained; when zennit is installed), and against the
arithmetic floor (:mod:`benchmarks.floor`): the FLOPs of one forward truncated at the
layer plus k input-gradient backward passes (or the receptive-field crops' passes, when
vizcnn crops), over the best dense throughput measured in the same run."""
from __future__ import annotations

import torch

import vizcnn
from vizcnn.core.layers import LayerTap, StopForward
from vizcnn.methods.deconv import forward_to, top_units
from vizcnn.models import build_model

from .common import Row, median_seconds
from .floor import floor_ms, peak_flops_per_second, projection_flops

CASES = [("alexnet", "conv5", "features.11"), ("alexnet", "conv2", "features.4"),
         ("resnet50", "layer3", "layer3"), ("googlenet", "inception4e", "inception4e")]
TARGETS = {"conv5": "≥4× captum, ≤1.5× floor", "conv2": "≥20× captum",
           "layer3": "≤1.5× floor, ahead of zennit", "inception4e": "≤1.5× floor, ahead of zennit"}


def zennit_loop(model, x, layer, units):
    """zennit's DeconvNet composite: one forward to the layer, then one backward per unit
    with the graph retained. None when zennit is not installed."""
    try:
        from zennit.composites import DeconvNet
    except ImportError:
        return None
    composite = DeconvNet()

    def run():
        with composite.context(model) as modified:
            leaf = x.detach().requires_grad_(True)
            with LayerTap(modified, [layer], stop=True) as tap:
                try:
                    modified(leaf)
                except StopForward:
                    pass
            act = tap[layer][0]
            for i in range(len(units)):
                seed = torch.zeros_like(act)
                seed[units.channel[i], units.y[i], units.x[i]] = units.value[i]
                torch.autograd.grad(act, leaf, seed, retain_graph=i < len(units) - 1)

    return run


def run(device: torch.device, flops_per_s: float, *, quick: bool = False) -> list[Row]:
    from captum.attr import NeuronDeconvolution

    rows = []
    ks = (1, 9) if quick else (1, 9, 64)
    cases = CASES[:2] if quick else CASES
    models = {name: build_model(name).to(device).eval() for name in dict.fromkeys(c[0] for c in cases)}
    peak = peak_flops_per_second(device, [(m, (3, 224, 224)) for m in models.values()])
    for name, layer, path in cases:
        model = models[name]
        for p in model.parameters():
            p.requires_grad_(False)
        x = torch.randn(1, 3, 224, 224, device=device, generator=torch.Generator(device).manual_seed(0))
        with torch.no_grad():
            acts, _ = forward_to(model, x, layer)
        units = top_units(acts[layer], max(ks))
        module = dict(model.named_modules())[path]
        captum = NeuronDeconvolution(model, module)
        for k in ks:
            chans = [int(c) for c in units.channel[:k]]
            pos = [(int(units.y[i]), int(units.x[i])) for i in range(k)]
            chosen = type(units)(*(t[:k] for t in (units.channel, units.y, units.x, units.value)))
            floor = floor_ms(projection_flops(model, x, layer, k, chosen), peak) / k

            def ours():
                vizcnn.project_top(model, x, layer, k)

            def theirs():
                for c, (y, xx) in zip(chans, pos):
                    captum.attribute(x, neuron_selector=(c, y, xx))

            repeats = 3 if k > 9 else 5
            t_ours = median_seconds(ours, device, repeats=repeats) * 1e3 / k
            t_captum = median_seconds(theirs, device, repeats=1 if k > 9 else 3) * 1e3 / k
            zen = zennit_loop(model, x, layer, chosen)
            t_zen = median_seconds(zen, device, repeats=1 if k > 9 else 3) * 1e3 / k if zen else None
            zen_note = f"; zennit DeconvNet loop {t_zen:.1f} ms ({t_zen / t_ours:.2f}× vizcnn)" if zen else \
                "; zennit not installed"
            rows.append(Row("deconv", f"{name} {layer}, k={k}", t_ours, "captum NeuronDeconvolution", t_captum,
                            TARGETS.get(layer, ""),
                            f"per projection; floor {floor:.1f} ms → vizcnn/floor {t_ours / floor:.2f}×{zen_note}",
                            {"floor_ms": floor, "zennit_ms": t_zen, "peak_gflops": peak / 1e9}))
    return rows
