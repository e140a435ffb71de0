"""The ZFNet first-layer study, end to end: train every design (``vizcnn.study.train``),
analyse each with vizcnn's own tools (``vizcnn.study.measure``), and write one report
(Zeiler & Fergus §4.1, Figs. 4 and 6, in numbers).

A run trains the 2×2 factorial (or the designs given) ``seeds`` times, and one more
network without filter renormalisation (Fig. 6 a: "one feature dominates"); every
network is measured, every number gets an interval over seeds, and each claim a verdict
in the words of ``vizcnn.study.stats``. ``run_trained`` measures models trained
elsewhere: one model per design, so it describes and gives no verdict.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..core.errors import BadArgumentError, BadInputError
from ..io.imageio import safe_filename, save_figure
from ..io.output import OutputDir
from ..io.sources import FASHION_MNIST_CLASSES, TensorSource, load
from ..models.checkpoint import load_bounded
from ..models.registry import get_spec, load_model
from ..models.shipped import shipped_weights
from ..render.common import as_display
from ..render.dataset import topk_page
from ..render.filters import filter_grid
from .checkpoint import load_study_model
from .data import open_stream
from .figures import (claims_figure, curves_figure, dominance_figure, evolution_figure, frequency_figure,
                      report_markdown)
from .measure import (Layer2Winners, ModelResult, conv1_layer, data_nyquist, evolution_crops, measure, output_count,
                      study_spec, summarise)
from .presets import Preset, design_name, estimate_seconds
from .train import train

#: the Fig. 6 (a) ablation: this design, trained once more without renormalisation
ABLATION_DESIGN = (7, 2)


def plan(preset: Preset, designs: Sequence[tuple[int, int]], seeds: int, ablation: bool) -> str:
    """One line saying what a run will do and about how long it will take."""
    names = ", ".join(f"{k}×{k}/{s}" for k, s in designs)
    text = (f"study: {len(designs)} designs ({names}) × {seeds} seed{'s' if seeds > 1 else ''}"
            f"{' + 1 network without renormalisation' if ablation else ''}, {preset.steps} steps each, "
            f"preset {preset.name}, data {preset.data}")
    eta = estimate_seconds(preset, designs, seeds, ablation)
    if eta is not None:
        text += f"; about {eta / 60:.0f} min on 2 idle CPU cores (the preset's sizing machine)"
    return text


def _train_arm(job: dict) -> str:
    """One network of a run, trained in a worker process (``run_study(jobs=N)``): the same
    stream, recipe and checkpoint as the sequential path, which then finds it finished."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    stream = open_stream(job["preset"], job["data"], seed=job["seed"], device=device, source_seed=job["source_seed"])
    run = replace(job["preset"], classes=len(stream.classes), renorm=job["renorm"])
    stream.preset = run
    snapshots = None
    if job["evolution"]:
        probe = stream.probe()
        snapshots = _EvolutionRecorder(probe[: min(64, len(probe))], stream, Path(job["evolution"]))
    quiet = job["quiet"]
    train(run, job["conv1"], stream, Path(job["folder"]), seed=job["seed"], on_snapshot=snapshots, tag=job["tag"],
          log=(lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    return job["tag"]


def _train_in_parallel(jobs: list[dict], workers: int, log) -> None:
    """Trains ``jobs`` in ``workers`` spawned processes (safe with CUDA and with the
    parent's thread pools); the first failure stops the run with its own message."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_train_arm, job) for job in jobs]
        try:
            for done in concurrent.futures.as_completed(futures):
                log(f"trained {done.result()}")
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def run_study(out: OutputDir, preset: Preset, designs: list[tuple[int, int]], *, seed: int = 0,
              seeds: int | None = None, data: str | None = None, device: torch.device = torch.device("cpu"),
              renorm: bool = True, ablation: bool | None = None, jobs: int = 1, log=print) -> dict:
    """Trains every design ``seeds`` times under one recipe (seed ``seed + i`` fixes the
    initialisation layer by layer, the data order and dropout, the same for every design),
    analyses each model, and writes the report: every number as a mean with its 95%
    interval over seeds, a verdict per claim, the factorial's main effects. ``ablation``
    (default: with renormalisation on and ZFNet's design among ``designs``) trains one
    more 7×7/2 network without renormalisation, for Fig. 6 (a). ``jobs`` > 1 trains that
    many networks at once in worker processes (several seeds on one GPU), then measures
    them here."""
    if len(designs) < 1:
        raise BadArgumentError("the study needs at least one conv1 design")
    seeds = preset.seeds if seeds is None else seeds
    if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= 100:
        raise BadArgumentError(f"--seeds must be an integer from 1 to 100, got {seeds!r}")
    if ablation is None:
        ablation = renorm and ABLATION_DESIGN in designs
    preset = replace(preset, renorm=renorm)
    started = time.time()
    cache: dict = {}
    # the data first: a bad --data fails before anything is written into --out
    first = open_stream(preset, data, seed=seed, device=device, source_seed=seed, cache=cache)
    log(plan(replace(preset, data=first.name), designs, seeds, ablation))
    checkpoints = out.keep("checkpoints")  # outlives an interrupted run: a rerun resumes from it
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 64:
        raise BadArgumentError(f"--jobs must be an integer from 1 to 64, got {jobs!r}")
    if jobs > 1:
        arms = [(s, c, True) for s in range(seed, seed + seeds) for c in designs]
        arms += [(seed, ABLATION_DESIGN, False)] if ablation else []
        threads = 2 if device.type == "cuda" else max(1, (os.cpu_count() or 1) // jobs)
        work = [{"preset": preset, "data": first.name if data is None else data, "seed": s, "source_seed": seed,
                 "device": str(device), "conv1": c, "renorm": on, "threads": threads, "quiet": False,
                 "folder": str(checkpoints if on else _subfolder(checkpoints, "no-renorm")),
                 "evolution": str(checkpoints / f"{design_name(c)}-evolution") if on and s == seed else None,
                 "tag": f"{design_name(c)} seed {s}" + ("" if on else " without renormalisation")}
                for s, c, on in arms]
        _train_in_parallel(work, jobs, log)
    results: dict[str, list[ModelResult]] = {design_name(c): [] for c in designs}
    evolutions, first_models, pages = {}, {}, {}
    nyquist, described, dominance = {}, first.describe(), {}
    for i in range(seeds):
        s = seed + i
        stream = first if i == 0 else open_stream(preset, data, seed=s, device=device, source_seed=seed, cache=cache)
        run = replace(preset, classes=len(stream.classes))
        stream.preset = run
        heldout = (*stream.heldout(run.eval_images), stream.prepare)
        probe = stream.probe()
        if i == 0:
            nyquist = data_nyquist(probe)
        spec = study_spec(run, stream.mean)
        arms = [(c, True) for c in designs] + ([(ABLATION_DESIGN, False)] if ablation and i == 0 else [])
        for conv1, on in arms:
            name = design_name(conv1)
            arm = run if on else replace(run, renorm=False)
            tag = f"{name} seed {s}" + ("" if on else " without renormalisation")
            snapshots = None
            if i == 0 and on:
                snapshots = _EvolutionRecorder(probe[: min(64, len(probe))], stream, checkpoints / f"{name}-evolution")
            folder = checkpoints if on else _subfolder(checkpoints, "no-renorm")
            model, curves, _ = train(arm, conv1, stream, folder, seed=s, on_snapshot=snapshots, log=log, tag=tag)
            if not on:
                on_weight = first_models.get((name, name), (None, None))[0]
                dominance = {"off": _dominance(conv1_layer(model).weight.detach()), "on": _dominance(on_weight),
                             "curves": asdict(curves), "name": name, "seed": s}
                first_models[(f"{name} (no renormalisation)", f"{name}-no-renorm")] = \
                    (conv1_layer(model).weight.detach().cpu(), conv1)
                continue
            result, layer2 = measure(model, name, spec, probe, _reader(name, probe, spec), heldout=heldout,
                                     grey=getattr(stream, "grey", False), seed=s, chance=1 / len(stream.classes),
                                     log=log)
            result.curves, result.train_seconds = asdict(curves), curves.seconds
            result.images_per_second = curves.images_per_s[-1] if curves.images_per_s else 0.0
            log(f"{name} seed {s}: held-out top-1 {result.metrics['top1']:.3f}, dead conv1 filters "
                f"{result.counts['dead_filters']}/{result.counts['filters']}, {curves.rescaled_total} filters "
                f"renormalised, layer-2 shift variation {result.metrics['layer2_shift_variation']:.3f}")
            results[name].append(result)
            if i == 0:
                evolutions[name] = snapshots.load()
                first_models[(name, name)] = (conv1_layer(model).weight.detach().cpu(), conv1)
                pages[name] = _layer2_page(name, s, len(probe), layer2)
    summary = summarise(results, over_seeds=True)
    for (name, file), (weight, (k, stride)) in first_models.items():
        save_figure(filter_grid(weight, f"{name}: conv1 after training, seed {seed} of {seeds} "
                                        f"({k}×{k}, stride {stride}) on {_short(described)}"),
                    out.path(f"fig6_conv1_{safe_filename(file)}.png"))
    for name, page in pages.items():
        save_figure(page, out.path(f"fig6_layer2_top9_{name}.png"))
    save_figure(curves_figure(results), out.path("training_curves.png"))
    save_figure(frequency_figure(results), out.path("conv1_frequencies.png"))
    save_figure(evolution_figure(evolutions, preset.evolution), out.path("fig4_evolution.png"))
    save_figure(claims_figure(summary, f"{seeds} seed{'s' if seeds > 1 else ''}, {_short(described)}"),
                out.path("claims.png"))
    if dominance:
        save_figure(dominance_figure(dominance), out.path("fig6a_renormalisation.png"))
        dominance.pop("curves", None)
    summary.update({
        "preset": asdict(preset), "seeds": [seed + i for i in range(seeds)], "device": str(device),
        "data": described, "data_outside_nyquist": nyquist, "renormalisation_off": dominance or None,
        "machine": _machine(device), "torch": torch.__version__, "wall_seconds": round(time.time() - started, 1),
    })
    return _finish(out, summary)


def _subfolder(folder: Path, name: str) -> Path:
    sub = folder / name
    if sub.is_symlink():
        raise BadInputError(f"{sub} is a link; vizcnn never follows a link inside --out")
    sub.mkdir(exist_ok=True)
    return sub


def _dominance(w: torch.Tensor | None) -> dict | None:
    """How much one conv1 feature dominates (Fig. 6 a), from conv1's weight: the largest
    filter norm over the median one, and the top filter's share of the layer's total
    squared norm."""
    if w is None:
        return None
    norms = w.double().flatten(1).norm(dim=1)
    sq = norms.pow(2)
    return {"max_over_median": float(norms.max() / norms.median()) if norms.median() > 0 else None,
            "top_share": float(sq.max() / sq.sum()) if sq.sum() > 0 else None,
            "rms_max": float(w.double().pow(2).flatten(1).mean(1).sqrt().max())}


def trained_for(model_name: str, weights: str) -> tuple[str | None, bool]:
    """(the data a zoo model's weights were trained on, whether on grey images), from its
    card: Fashion-MNIST's classes mean ``fashion-mnist`` (upscaled grey); anything else is
    not known here (None): its accuracy is scored only on a --data the user names."""
    card = shipped_weights(model_name).get(str(weights)) if not Path(str(weights)).suffix else None
    if not card:
        return None, False
    grey = "grey" in str(card.get("conv1", ""))
    if list(card.get("classes") or []) == list(FASHION_MNIST_CLASSES):
        return "fashion-mnist", grey
    return None, grey


def run_trained(out: OutputDir, models: Sequence[tuple[str, str]], *, preset: Preset, data: str | None = None,
                device: torch.device = torch.device("cpu"), seed: int = 0, log=print) -> dict:
    """The study's analysis, without training, of models trained elsewhere: each
    ``(MODEL, WEIGHTS)`` is a zoo model with weights (``alexnet:imagenet``,
    ``zfnet:my_zfnet.pt``) or a checkpoint this study wrote. Each model is probed and
    scored on the data it was trained for (a study checkpoint's own, the classes its card
    names) or, given, ``data``; a model whose training data is unknown gets no accuracy.
    One model per design: every comparison is descriptive, with no verdict."""
    if not models:
        raise BadArgumentError("--trained needs at least one MODEL:WEIGHTS")
    started = time.time()
    loaded = [load_trained(m, w, device=device, seed=seed) for m, w in models]
    names = _unique([entry["label"] for entry in loaded])
    results: dict[str, list[ModelResult]] = {}
    lines = {}
    for name, entry in zip(names, loaded):
        model, spec = entry["model"], entry["spec"]
        own = data or entry["data"]
        size = spec.input_size[-1]
        stream = open_stream(replace(preset, size=size, eval_images=None), own, seed=seed, device=device,
                             source_seed=seed)
        probe = stream.probe()
        heldout = None
        outputs = output_count(model, spec)
        if own is None:
            note = "trained on data not known here: no held-out accuracy (give --data)"
        elif outputs != len(stream.classes):
            note = f"{outputs} outputs, {len(stream.classes)} classes in {own}: no held-out accuracy"
        else:
            hx, hy = stream.heldout()
            heldout = (hx, hy, lambda b, spec=spec: _normalise_for(b, spec))
            note = f"scored on {own}'s held-out split"
        lines[name] = f"{stream.describe()}; {note}"
        log(f"{name}: {lines[name]}")
        result, layer2 = measure(model, name, spec, probe, _reader(name, probe, spec), heldout=heldout,
                                 grey=entry["grey"], seed=None, chance=1 / len(stream.classes), log=log)
        results[name] = [result]
        weight = conv1_layer(model).weight
        save_figure(filter_grid(weight.detach().float().cpu(), f"{name}: conv1 ({result.conv1[0]}×{result.conv1[0]}, "
                                                               f"stride {result.conv1[1]})"),
                    out.path(f"fig6_conv1_{safe_filename(name)}.png"))
        save_figure(_layer2_page(name, None, len(probe), layer2),
                    out.path(f"fig6_layer2_top9_{safe_filename(name)}.png"))
    summary = summarise(results, over_seeds=False)
    save_figure(frequency_figure(results), out.path("conv1_frequencies.png"))
    save_figure(claims_figure(summary, "models trained elsewhere, one per design: descriptive"),
                out.path("claims.png"))
    summary.update({"trained": [f"{m}:{w}" for m, w in models], "data": lines, "device": str(device),
                    "machine": _machine(device), "torch": torch.__version__,
                    "wall_seconds": round(time.time() - started, 1)})
    return _finish(out, summary)


def _normalise_for(images: torch.Tensor, spec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


class _EvolutionRecorder:
    """Fig. 4's snapshots (``evolution_crops`` at each chosen step), saved as they are
    taken, so a resumed run keeps the earlier ones."""

    def __init__(self, probe: torch.Tensor, stream, folder: Path):
        self.probe, self.stream, self.folder = probe, stream, folder
        if folder.is_symlink():
            raise BadInputError(f"{folder} is a link; vizcnn never follows a link inside --out")
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int, model) -> None:
        crops = evolution_crops(model, self.stream.prepare(self.probe.to(self.stream.device)))
        torch.save(crops, self.folder / f"step{step}.pt")

    def load(self) -> dict[int, dict[str, torch.Tensor]]:
        steps = {}
        for p in sorted(self.folder.glob("step*.pt")):
            if p.stem[4:].isdigit():
                steps[int(p.stem[4:])] = load_bounded(p, max_bytes=64 << 20)  # regular files only, bounded
        return steps


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




def load_trained(model_name: str, weights: str, *, device: torch.device, seed: int = 0) -> dict:
    """What ``--trained MODEL:WEIGHTS`` names: a checkpoint this study wrote (it carries its
    own design, widths, normalisation and data), or a zoo model with ``--weights``-style
    weights (its input size and normalisation are the zoo's; its data from its card).
    Returns {label, model (eval mode), spec, data (or None), grey}."""
    path = Path(weights)
    if path.is_file() and not path.is_symlink():
        own = load_study_model(path, device)
        if own is not None:
            model, preset, config = own
            return {"label": f"{design_name(tuple(config['conv1']))} ({path.name})", "model": model,
                    "spec": study_spec(preset, config["mean"]), "data": config.get("data"),
                    "grey": str(config.get("data", "")) == "fashion-mnist"}
    model = load_model(model_name, weights, seed=seed, device=device)
    spec = get_spec(model_name, weights)
    data, grey = trained_for(model_name, weights)
    return {"label": f"{model_name}:{weights}", "model": model.eval(), "spec": spec, "data": data, "grey": grey}


def _reader(name: str, probe: torch.Tensor, spec):
    """Probe image i as the dataset pass reads it (for the layer-2 projections)."""
    source = TensorSource(f"{name} probe", probe)
    return lambda i: load(source, i, spec)


def _layer2_page(name: str, seed: int | None, probes: int, w: Layer2Winners) -> Figure:
    rows = [(u, [_cell(w.winners.get((u, r))) for r in range(9)]) for u in w.units]
    hf = (f"projections' energy above 1/4 cycle/px {w.hf['projection_share']:.3f} vs the patches' "
          f"{w.hf['patch_share']:.3f}: ratio {w.hf['ratio']:.2f}") if w.hf else "no projections"
    return topk_page(rows, f"{name}{'' if seed is None else f', seed {seed}'}: conv2 top-9 over {probes} "
                           f"probe images, the {len(w.units)} most active units, deconvnet projection | patch ({hf})")


__all__ = ["run_study", "run_trained", "plan", "estimate_seconds", "load_trained", "trained_for"]
