"""The ZFNet first-layer study, end to end: train every design (``vizcnn.methods.study``), analyse
each with vizcnn's own tools, and write one report (Zeiler & Fergus §4.1, Figs. 4 and 6,
in numbers).

Per design: conv1's spectra and aliasing (``vizcnn.methods.spectra``), dead filters and the
layer-2 top-9 over a fixed probe set (``vizcnn.methods.scan``'s single pass), the aliasing of
those layer-2 projections, held-out top-1/top-5, training curves and the feature
evolution of Fig. 4.
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..core.errors import BadArgumentError
from ..io.imageio import safe_filename, save_figure
from ..io.output import OutputDir
from ..io.sources import TensorSource, load
from .data import open_stream
from .train import Preset, build, design_name, train
from .measure import (Layer2Winners, ModelResult, evolution_crops, first_conv_weight, measure, normalise,
                                     output_count, study_spec, summarise)
from ..models.registry import get_spec, load_model
from ..render.common import as_display
from ..render.dataset import topk_page
from ..render.filters import filter_grid
from .figures import claims_figure, curves_figure, evolution_figure, frequency_figure, report_markdown


def run_study(out: OutputDir, preset: Preset, designs: list[tuple[int, int]], *, seed: int = 0, seeds: int = 1,
              data: str | None = None, device: torch.device = torch.device("cpu"), renorm: bool = True,
              log=print) -> dict:
    """Trains every design ``seeds`` times under one recipe (seed ``seed + i`` fixes init,
    data order and dropout, the same for every design), analyses each model, and writes
    the report: every number as mean ± 95% CI over seeds, and a verdict per claim."""
    if len(designs) < 1:
        raise BadArgumentError("the study needs at least one conv1 design")
    if not isinstance(seeds, int) or seeds < 1:
        raise BadArgumentError(f"--seeds must be a positive integer, got {seeds!r}")
    preset = replace(preset, renorm=renorm)
    started = time.time()
    checkpoints = out.keep("checkpoints")  # outlives an interrupted run: a rerun resumes from it
    results: dict[str, list[ModelResult]] = {design_name(c): [] for c in designs}
    evolutions, first_models, pages, described = {}, {}, {}, ""
    for i in range(seeds):
        s = seed + i
        stream = open_stream(preset, data, seed=s, device=device, source_seed=seed)
        run = replace(preset, classes=len(stream.classes))
        stream.preset = run
        described = stream.describe()
        heldout_x, heldout_y = stream.heldout()
        probe = stream.probe()
        spec = study_spec(run, stream.mean)
        for conv1 in designs:
            name = design_name(conv1)
            snapshots = None
            if i == 0:
                snapshots = _EvolutionRecorder(probe[: min(64, len(probe))], stream,
                                               checkpoints / f"{name}-evolution")
            model, curves, seconds = train(run, conv1, stream, checkpoints, seed=s, on_snapshot=snapshots,
                                           log=log, tag=f"{name} seed {s}")
            result, layer2 = measure(model, name, spec, probe, _reader(name, probe, spec),
                                     heldout=(stream.prepare(heldout_x), heldout_y),
                                   seed=s, log=log)
            result.curves, result.train_seconds = asdict(curves), seconds
            result.images_per_second = curves.images_per_s[-1] if curves.images_per_s else 0.0
            log(f"{name} seed {s}: held-out top-1 {result.metrics['top1']:.3f}, "
                f"dead conv1 {result.counts['dead_conv1']}/{result.counts['filters']}, "
                f"layer-2 aliasing {result.metrics['layer2_alias_shared']:.3f}")
            results[name].append(result)
            if i == 0:
                evolutions[name] = snapshots.load()
                first_models[name] = model.features.conv1.weight.detach().cpu()
                pages[name] = _layer2_page(name, s, len(probe), layer2)
    summary = summarise(results, over_seeds=True)
    for name, weight in first_models.items():
        conv1 = results[name][0].conv1
        save_figure(filter_grid(weight, f"{name}: conv1 after training, seed {seed} of {seeds} "
                                        f"({conv1[0]}×{conv1[0]}, stride {conv1[1]}) on {_short(described)}"),
                    out.path(f"fig6_conv1_{name}.png"))
        save_figure(pages[name], out.path(f"fig6_layer2_top9_{name}.png"))
    save_figure(curves_figure(results), out.path("training_curves.png"))
    save_figure(frequency_figure(results), out.path("conv1_frequencies.png"))
    save_figure(evolution_figure(evolutions, preset.evolution), out.path("fig4_evolution.png"))
    save_figure(claims_figure(summary, f"{seeds} seed{'s' if seeds > 1 else ''}, {_short(described)}"),
                out.path("claims.png"))
    summary.update({
        "preset": asdict(preset), "seeds": [seed + i for i in range(seeds)], "device": str(device),
        "data": described, "machine": _machine(device), "torch": torch.__version__,
        "wall_seconds": round(time.time() - started, 1),
    })
    return _finish(out, summary)


def run_trained(out: OutputDir, models: Sequence[tuple[str, str]], *, preset: Preset, data: str | None = None,
                device: torch.device = torch.device("cpu"), seed: int = 0, log=print) -> dict:
    """The study's analysis, without training, of models trained elsewhere: each
    ``(MODEL, WEIGHTS)`` is a zoo model with weights (``alexnet:imagenet``,
    ``zfnet:my_zfnet.pt``) or a checkpoint this study wrote (``zfnet:OUT/checkpoints/zfnet-seed0.pt``).
    Intervals are within each model (over filters, projections or held-out images)."""
    if not models:
        raise BadArgumentError("--trained needs at least one MODEL:WEIGHTS")
    started = time.time()
    loaded = [load_trained(m, w, device=device, seed=seed) for m, w in models]
    names = _unique([label for label, _, _ in loaded])
    results: dict[str, list[ModelResult]] = {}
    described = ""
    for name, (_, model, spec) in zip(names, loaded):
        size = spec.input_size[-1]
        stream = open_stream(replace(preset, size=size), data, seed=seed, device=device, source_seed=seed)
        described = stream.describe()
        probe = stream.probe()
        heldout = None
        outputs = output_count(model, spec)
        if outputs == len(stream.classes):
            hx, hy = stream.heldout()
            heldout = (normalise(hx, spec), hy)
        else:
            log(f"{name}: {outputs} outputs, {len(stream.classes)} classes in the data: no held-out accuracy")
        result, layer2 = measure(model, name, spec, probe, _reader(name, probe, spec), heldout=heldout, seed=None,
                                 log=log)
        results[name] = [result]
        weight = first_conv_weight(model)
        save_figure(filter_grid(weight.detach().float().cpu(), f"{name}: conv1 ({result.conv1[0]}×{result.conv1[0]}, "
                                                               f"stride {result.conv1[1]})"),
                    out.path(f"fig6_conv1_{safe_filename(name)}.png"))
        save_figure(_layer2_page(name, None, len(probe), layer2),
                    out.path(f"fig6_layer2_top9_{safe_filename(name)}.png"))
    summary = summarise(results, over_seeds=False)
    save_figure(frequency_figure(results), out.path("conv1_frequencies.png"))
    save_figure(claims_figure(summary, f"models trained elsewhere, probed on {_short(described)}"),
                out.path("claims.png"))
    summary.update({"trained": [f"{m}:{w}" for m, w in models], "data": described, "device": str(device),
                    "machine": _machine(device), "torch": torch.__version__,
                    "wall_seconds": round(time.time() - started, 1)})
    return _finish(out, summary)


class _EvolutionRecorder:
    """Fig. 4's snapshots (``evolution_crops`` at each chosen step), saved as they are
    taken, so a resumed run keeps the earlier ones."""

    def __init__(self, probe: torch.Tensor, stream, folder: Path):
        self.probe, self.stream, self.folder = probe, stream, folder
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int, model) -> None:
        crops = evolution_crops(model, self.stream.prepare(self.probe.to(self.stream.device)))
        torch.save(crops, self.folder / f"step{step}.pt")

    def load(self) -> dict[int, dict[str, torch.Tensor]]:
        return {int(p.stem[4:]): torch.load(p, weights_only=True) for p in sorted(self.folder.glob("step*.pt"))}


def _finish(out: OutputDir, summary: dict) -> dict:
    summary["out"] = str(out.final)
    out.path("report.md").write_text(report_markdown(summary))
    return out.finish(summary)


def _short(described: str) -> str:
    return described.split(" (")[0]


def _machine(device: torch.device) -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads"
            + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))


def _unique(names: list[str]) -> list[str]:
    seen: Counter = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if names.count(n) == 1 else f"{n} #{seen[n]}")
    return out


def _cell(p):
    if p is None:
        return None
    patch = p.patch if p.patch.shape[2] == 3 else np.repeat(p.patch, 3, axis=2)
    return as_display(p.projection), patch, p.value, f"img {p.image}"




def load_trained(model_name: str, weights: str, *, device: torch.device, seed: int = 0):
    """(label, model in eval mode, spec) for ``--trained MODEL:WEIGHTS``: a checkpoint this
    study wrote (it carries its own design, widths and normalisation), or a zoo model
    with ``--weights``-style weights (its input size and normalisation are the zoo's)."""
    path = Path(weights)
    if path.is_file():
        state = read_study_checkpoint(path)
        if state is not None:
            config = json.loads(state["study"])
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["preset"].items()}
            preset = Preset(**fields)
            model = build(preset, tuple(config["conv1"]), seed=0)
            model.load_state_dict(state["model"])
            label = f"{design_name(tuple(config['conv1']))} ({path.name})"
            return label, model.to(device).eval(), study_spec(preset, config["mean"])
    model = load_model(model_name, weights, seed=seed, device=device)
    spec = get_spec(model_name, weights)
    return f"{model_name}:{weights}", model.eval(), spec


def read_study_checkpoint(path: Path) -> dict | None:
    """A checkpoint written by :func:`vizcnn.methods.study.train` (``weights_only``), or None
    for any other file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 — not ours: load_model gives the user-facing error
        return None
    return state if isinstance(state, dict) and "study" in state and "model" in state else None


def _reader(name: str, probe: torch.Tensor, spec):
    """Probe image i as the dataset pass reads it (for the layer-2 projections)."""
    source = TensorSource(f"{name} probe", probe)
    return lambda i: load(source, i, spec)


def _layer2_page(name: str, seed: int | None, probes: int, w: Layer2Winners) -> Figure:
    rows = [(u, [_cell(w.winners.get((u, r))) for r in range(9)]) for u in w.units]
    return topk_page(rows, f"{name}{'' if seed is None else f', seed {seed}'}: conv2 top-9 over {probes} "
                           f"probe images, the {len(w.units)} most active units, deconvnet projection | patch (energy "
                           f"above 1/8 cycle/px: {w.shared:.2f}; above conv1's Nyquist: {w.own:.2f})")


__all__ = ["run_study", "run_trained"]
