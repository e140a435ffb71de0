"""The ZFNet first-layer study, end to end: train every design (``vizcnn.study``), analyse
each with vizcnn's own tools, and write one report (Zeiler & Fergus §4.1, Figs. 4 and 6,
in numbers).

Per design: conv1's spectra and aliasing (``vizcnn.spectra``), dead filters and the
layer-2 top-9 over a fixed probe set (``vizcnn.dataset``'s single pass), the aliasing of
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .data import Batch, ImageSource
from .dataset import feeding_weight, model_device, project_winners, scan_batches
from .deconv import backproject, forward_to, strongest
from .errors import BadArgumentError
from .extract import Extractor
from .imageio import safe_filename, save_figure
from .layers import layer_geometry
from .models import get_spec, load_model
from .output import OutputDir
from .render import as_display
from .render_dataset import topk_page
from .render_filters import filter_grid
from .rules import ReverseRules
from .spectra import filter_spectra, summarize
from .state import preserved_model
from .stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, difference_ci, fmt, mean_ci, mean_normal, paired_ci, \
    verdict, wilson
from .study import PRESETS, FractalStream, Preset, build, design_name, evaluate, open_stream, train

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
EVOLUTION_UNITS = 2  # units per layer in the Fig. 4 panel
LAYER2_UNITS = 16  # conv2 units whose top-9 are projected (Fig. 6 d/e): the most strongly activated ones
SHARED_CUTOFF_STRIDE = 4  # a common yardstick: energy above 1/8 cycles/px, for every design


class TensorSource(ImageSource):
    """Images already in memory as a (N, 3, H, W) tensor in [0, 1]."""

    def __init__(self, name: str, images: torch.Tensor):
        self.name, self.images = name, images.detach().cpu()

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, i: int) -> str:
        return f"{self.name}#{i}"

    def label(self, i: int) -> int | None:
        return None

    def read(self, i: int, *, gray: bool = False) -> np.ndarray:
        return self.images[i].permute(1, 2, 0).numpy()


#: The paper's claims (Zeiler & Fergus §4.1, Fig. 6; Table 2), each as a metric and the
#: sign of (ZFNet-like design − AlexNet-like design) that the paper reports.
@dataclass(frozen=True)
class Claim:
    key: str
    metric: str
    paper: str
    sign: int  # +1: the 7×7/2 design is higher; −1: the 11×11/4 design is higher


CLAIMS = (
    Claim("dead conv1 filters", "dead_conv1_fraction",
          "AlexNet's 11×11/4 first layer has more dead filters than ZFNet's 7×7/2 (Fig. 6 b vs c)", -1),
    Claim("mid-frequency coverage", "mid_fraction",
          "11×11/4 filters are 'a mix of extremely high and low frequency information, with little coverage of "
          "the mid frequencies'; 7×7/2 covers them (Fig. 6 b vs c): more conv1 filters peak in the mid band", +1),
    Claim("layer-2 aliasing", "layer2_alias_shared",
          "layer-2 projections of the 11×11/4 network show aliasing artifacts that 7×7/2 removes (Fig. 6 d vs e): "
          "more projection energy above 1/8 cycle/px", -1),
    Claim("held-out accuracy", "top1", "7×7/2 classifies better (Table 2's direction)", +1),
)

#: every number reported per model, with how it reads
METRICS = {
    "top1": "held-out top-1",
    "top5": "held-out top-5",
    "dead_conv1_fraction": "dead conv1 filters (fraction)",
    "mid_fraction": "conv1 filters peaking in the mid band (fraction)",
    "structured_fraction": "conv1 filters with structure (fraction)",
    "conv1_alias": "conv1 aliasing, energy-weighted",
    "layer2_alias_own": "layer-2 projection energy above conv1's Nyquist",
    "layer2_alias_shared": "layer-2 projection energy above 1/8 cycle/px",
}


@dataclass
class ModelResult:
    """One trained model's numbers (one design at one seed, or one ``--trained`` model)."""

    name: str
    conv1: tuple[int, int]
    seed: int | None
    metrics: dict[str, float | None]
    counts: dict  # what each fraction is a fraction of, and per-item values (for within-model intervals)
    conv1_spectra: dict
    dead_by_layer: dict[str, int]
    curves: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    images_per_second: float = 0.0


def sides(names_conv1: Sequence[tuple[str, tuple[int, int]]]) -> tuple[str, str] | None:
    """(AlexNet-like, ZFNet-like) names among the designs: 11×11/4 and 7×7/2 when both are
    there, else the largest and smallest conv1 stride; None when they cannot be told apart."""
    by_conv1 = {c: n for n, c in names_conv1}
    if (11, 4) in by_conv1 and (7, 2) in by_conv1:
        return by_conv1[(11, 4)], by_conv1[(7, 2)]
    ordered = sorted(names_conv1, key=lambda nc: (-nc[1][1], -nc[1][0]))
    if len(ordered) < 2 or ordered[0][1][1] == ordered[-1][1][1]:
        return None
    return ordered[0][0], ordered[-1][0]


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
            result, page = measure(model, name, spec, probe, heldout=(stream.prepare(heldout_x), heldout_y),
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
                pages[name] = page
    summary = _summarise(results, over_seeds=True)
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
        outputs = _outputs(model, spec)
        if outputs == len(stream.classes):
            hx, hy = stream.heldout()
            heldout = (_normalise(hx, spec), hy)
        else:
            log(f"{name}: {outputs} outputs, {len(stream.classes)} classes in the data: no held-out accuracy")
        result, page = measure(model, name, spec, probe, heldout=heldout, seed=None, log=log)
        results[name] = [result]
        weight = first_conv_weight(model)
        save_figure(filter_grid(weight.detach().float().cpu(), f"{name}: conv1 ({result.conv1[0]}×{result.conv1[0]}, "
                                                               f"stride {result.conv1[1]})"),
                    out.path(f"fig6_conv1_{safe_filename(name)}.png"))
        save_figure(page, out.path(f"fig6_layer2_top9_{safe_filename(name)}.png"))
    summary = _summarise(results, over_seeds=False)
    save_figure(frequency_figure(results), out.path("conv1_frequencies.png"))
    save_figure(claims_figure(summary, f"models trained elsewhere, probed on {_short(described)}"),
                out.path("claims.png"))
    summary.update({"trained": [f"{m}:{w}" for m, w in models], "data": described, "device": str(device),
                    "machine": _machine(device), "torch": torch.__version__,
                    "wall_seconds": round(time.time() - started, 1)})
    return _finish(out, summary)


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


def _summarise(results: dict[str, list[ModelResult]], *, over_seeds: bool) -> dict:
    """Per design: per-seed values and an interval per metric; per claim: the paired
    (or independent) difference and its verdict; the table as numbers."""
    designs = []
    for name, runs in results.items():
        intervals = {m: _interval([r.metrics[m] for r in runs], runs, m, over_seeds) for m in METRICS}
        designs.append({"name": name, "conv1": list(runs[0].conv1), "metrics": intervals,
                        "per_seed": [_run_json(r) for r in runs]})
    by_name = {d["name"]: d for d in designs}
    pair = sides([(n, runs[0].conv1) for n, runs in results.items()])
    claims = []
    for c in CLAIMS:
        entry = {"claim": c.key, "metric": c.metric, "paper": c.paper,
                 "values": {d["name"]: d["metrics"][c.metric] for d in designs}}
        if pair is None:
            entry.update(difference=None, verdict=INCONCLUSIVE, why="needs two designs with different conv1 strides")
        else:
            alex, zf = pair
            a, z = results[alex], results[zf]
            if any(r.metrics[c.metric] is None for r in (*a, *z)):
                entry.update(difference=None, verdict=INCONCLUSIVE, why="not measurable for these models")
            else:
                if over_seeds:
                    diff = paired_ci([c.sign * r.metrics[c.metric] for r in z],
                                     [c.sign * r.metrics[c.metric] for r in a])
                else:
                    diff = difference_ci(_signed(by_name[zf]["metrics"][c.metric], c.sign),
                                         _signed(by_name[alex]["metrics"][c.metric], c.sign))
                entry.update(compared=[alex, zf], difference=diff, verdict=verdict(diff),
                             difference_of=f"{zf} − {alex}" if c.sign > 0 else f"{alex} − {zf}")
        claims.append(entry)
    table = [{"measure": METRICS[m], "metric": m,
              **{d["name"]: {k: d["metrics"][m][k] for k in ("mean", "lo", "hi")} if d["metrics"][m] else None
                 for d in designs}} for m in METRICS]
    return {"designs": designs, "claims": claims, "table": table,
            "intervals": "95% t-interval over seeds, paired by seed" if over_seeds else
            "95% intervals within each model: Wilson over filters or held-out images, normal over projections"}


def _signed(ci: dict, sign: int) -> dict:
    if sign > 0:
        return ci
    return {**ci, "mean": -ci["mean"], "lo": None if ci["hi"] is None else -ci["hi"],
            "hi": None if ci["lo"] is None else -ci["lo"]}


def _interval(values: list, runs: list[ModelResult], metric: str, over_seeds: bool) -> dict | None:
    if any(v is None for v in values):
        return None
    if over_seeds:
        return mean_ci(values, bounds=(0.0, 1.0))  # every metric is a fraction
    counts = runs[0].counts
    if metric in ("top1", "top5"):
        return wilson(counts[metric + "_correct"], counts["heldout"])
    if metric in ("dead_conv1_fraction", "mid_fraction", "structured_fraction"):
        return wilson(counts[metric.replace("_fraction", "")], counts["filters"])
    per_item = counts[metric + "_items"]
    return mean_normal(per_item["values"], per_item["weights"])


def _run_json(r: ModelResult) -> dict:
    counts = {k: v for k, v in r.counts.items() if not k.endswith("_items")}
    return {"seed": r.seed, **r.metrics, "counts": counts, "dead_by_layer": r.dead_by_layer,
            "conv1_spectra": r.conv1_spectra, "curves": r.curves, "train_seconds": round(r.train_seconds, 1),
            "images_per_second": round(r.images_per_second, 1)}

class _EvolutionRecorder:
    """Fig. 4: at each chosen step, the strongest activation over a few probe images of
    the first units of each layer, projected to pixels and cropped to its receptive field.
    Snapshots are saved as they are taken, so a resumed run keeps the earlier ones."""

    def __init__(self, probe: torch.Tensor, stream: FractalStream, folder: Path):
        self.probe, self.stream, self.folder = probe, stream, folder
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int, model: nn.Module) -> None:
        x = self.stream.prepare(self.probe.to(self.stream.device))
        crops = {}
        with preserved_model(model):
            with Extractor(model, LAYERS) as ex:
                ex.run(x)
            geometry = layer_geometry(model, tuple(x.shape[1:]))
            for layer in LAYERS:
                act = ex[layer][:, :EVOLUTION_UNITS]  # (N, U, H, W)
                flat = act.flatten(2).max(2)  # best position per image and unit
                image = flat.values.argmax(0)  # best image per unit
                for u in range(act.shape[1]):
                    i = int(image[u])
                    acts, leaf = forward_to(model, x[i:i + 1], layer, ReverseRules("deconvnet"))
                    units = strongest(acts[layer], [u])
                    proj = backproject(acts[layer], leaf, units)[0].cpu()
                    t, b, left, right = geometry[layer].box(int(units.y[0]), int(units.x[0]), *x.shape[-2:])
                    crops[f"{layer}:{u}"] = proj[:, t:b, left:right]
        torch.save(crops, self.folder / f"step{step}.pt")

    def load(self) -> dict[int, dict[str, torch.Tensor]]:
        return {int(p.stem[4:]): torch.load(p, weights_only=True) for p in sorted(self.folder.glob("step*.pt"))}


def study_spec(preset: Preset, mean: float = FractalStream.MEAN):
    """A ModelSpec whose normalisation is the study's: (image − mean) · 255."""
    return replace(get_spec("zfnet"), name="study", input_size=(3, preset.size, preset.size),
                   num_classes=preset.classes, mean=(mean,) * 3, std=(1 / 255,) * 3)


def first_conv_weight(model: nn.Module) -> torch.Tensor:
    path, weight = feeding_weight(model, "conv1")
    if weight is None or weight.dim() != 4:
        raise BadArgumentError(f"{type(model).__name__}: no convolution feeds 'conv1'")
    return weight


def _conv1_design(model: nn.Module) -> tuple[int, int]:
    path, _ = feeding_weight(model, "conv1")
    conv = dict(model.named_modules())[path]
    return int(conv.kernel_size[0]), int(conv.stride[0])


def _normalise(images: torch.Tensor, spec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


def _outputs(model: nn.Module, spec) -> int:
    with torch.no_grad(), preserved_model(model):
        model.eval()
        x = torch.zeros(1, *spec.input_size, device=model_device(model), dtype=first_conv_weight(model).dtype)
        return int(model(x).shape[-1])


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
    """A checkpoint written by :func:`vizcnn.study.train` (``weights_only``), or None
    for any other file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 — not ours: load_model gives the user-facing error
        return None
    return state if isinstance(state, dict) and "study" in state and "model" in state else None


def measure(model: nn.Module, name: str, spec, probe: torch.Tensor, *, heldout=None, seed: int | None = None,
            log=print) -> tuple[ModelResult, Figure]:
    """The study's numbers for one trained model: conv1 spectra, structure and dead
    filters, dead units per layer and the layer-2 top-9 over the probe images (in [0, 1]),
    the aliasing of those layer-2 projections, and held-out top-1/top-5 when ``heldout``
    (normalised images, labels) is given. Returns (result, the layer-2 top-9 page)."""
    conv1 = _conv1_design(model)
    weight = first_conv_weight(model).detach().float()
    spectra_full = filter_spectra(weight, conv1[1])
    spectra = summarize(spectra_full)
    source = TensorSource(f"{name} probe", probe)
    device = model_device(model)
    dtype = weight.dtype
    batches = (Batch(torch.arange(i, min(i + 64, len(source))),
                     _normalise(source.images[i:i + 64].to(device), spec).to(dtype), [])
               for i in range(0, len(source), 64))
    scan = scan_batches(model, batches, spec.input_size, topk_layers=["conv2"], stats_layers=list(LAYERS), top=9,
                        distinct_images=True)
    dead = {layer: int(s.dead().sum()) for layer, s in scan.stats.items()}
    # the units with the strongest top-1 activation: a dead unit has nothing to project
    best = scan.topk["conv2"].value[:, 0].float().cpu()
    units = sorted(best.argsort(descending=True)[:LAYER2_UNITS].tolist())
    winners = project_winners(model, source, spec, "conv2", scan.topk["conv2"], units)
    items = _projection_aliasing(winners, conv1[1])
    own = _weighted(items["own"], items["energy"])
    shared = _weighted(items["shared"], items["energy"])
    rows = [(u, [_cell(winners.get((u, r))) for r in range(9)]) for u in units]
    page = topk_page(rows, f"{name}{'' if seed is None else f', seed {seed}'}: conv2 top-9 over {len(source)} "
                           f"probe images, the {len(units)} most active units, deconvnet projection | patch (energy above 1/8 cycle/px: {shared:.2f}; "
                           f"above conv1's Nyquist: {own:.2f})")
    filters = spectra["filters"]
    structure = spectra["structure"]
    counts = {"filters": filters, "dead_conv1": dead["conv1"], "mid": spectra["bands"]["counts"]["mid"],
              "structured": None if structure is None else structure["structured"], "probe": len(source),
              "projections": len(items["energy"]),
              "conv1_alias_items": {"values": spectra_full.alias_fraction.double().cpu().tolist(),
                                    "weights": spectra_full.energy.double().cpu().tolist()},
              "layer2_alias_own_items": {"values": items["own"], "weights": items["energy"]},
              "layer2_alias_shared_items": {"values": items["shared"], "weights": items["energy"]}}
    metrics = {"dead_conv1_fraction": dead["conv1"] / filters, "mid_fraction": spectra["mid_fraction"],
               "structured_fraction": None if structure is None else structure["structured"] / filters,
               "conv1_alias": spectra["alias_fraction"]["energy_weighted"],
               "layer2_alias_own": own, "layer2_alias_shared": shared, "top1": None, "top5": None}
    if heldout is not None:
        (top1, top5), n = evaluate(model, heldout[0].to(dtype), heldout[1]), len(heldout[1])
        metrics["top1"], metrics["top5"] = top1, top5
        counts.update(heldout=n, top1_correct=round(top1 * n), top5_correct=round(top5 * n))
    return ModelResult(name, conv1, seed, metrics, counts, spectra, dead), page


def _weighted(values: list[float], weights: list[float]) -> float:
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights)) / total if total > 0 else 0.0


def _cell(p):
    if p is None:
        return None
    patch = p.patch if p.patch.shape[2] == 3 else np.repeat(p.patch, 3, axis=2)
    return as_display(p.projection), patch, p.value, f"img {p.image}"


def _projection_aliasing(winners: dict, stride: int) -> dict[str, list[float]]:
    """Per layer-2 projection: its aliasing fraction above the Nyquist frequency of
    conv1's own stride ("own"), above a cutoff shared by every design ("shared"), and
    its energy. Projections of one crop size go through the FFT together."""
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for p in winners.values():
        proj = p.projection.double()
        if min(proj.shape[-2:]) >= 2 and proj.abs().max() > 0:
            by_shape.setdefault(tuple(proj.shape), []).append(proj)
    out: dict[str, list[float]] = {"own": [], "shared": [], "energy": []}
    for group in by_shape.values():
        batch = torch.stack(group)
        out["energy"] += batch.pow(2).sum((1, 2, 3)).tolist()
        for key, s in (("own", stride), ("shared", SHARED_CUTOFF_STRIDE)):
            out[key] += filter_spectra(batch, s, keep_power=False, structure=False).alias_fraction.tolist()
    return out

# --------------------------------------------------------------------------- figures


def claims_figure(summary: dict, subtitle: str) -> Figure:
    """The study's main figure: one panel per claim, each design's value per seed (dots)
    and its mean with 95% interval (bar), the verdict in the panel's title."""
    claims = summary["claims"]
    designs = [d["name"] for d in summary["designs"]]
    fig = Figure(figsize=(10, 6.4), layout="constrained")
    fig.suptitle(f"Zeiler & Fergus §4.1 claims, measured: mean and 95% interval ({subtitle})", fontsize=10)
    axes = fig.subplots(2, 2).ravel()
    for ax, claim in zip(axes, claims):
        for j, name in enumerate(designs):
            ci = claim["values"].get(name)
            if ci is None:
                ax.text(j, 0.5, "n/a", ha="center", va="center", transform=ax.get_xaxis_transform(), fontsize=8)
                continue
            values = next(d for d in summary["designs"] if d["name"] == name)["per_seed"]
            points = [v[claim["metric"]] for v in values]
            ax.plot([j + 0.12] * len(points), points, "o", color="0.55", markersize=4,
                    label="one seed" if j == 0 and len(points) > 1 else None)
            err = None if ci["lo"] is None else [[ci["mean"] - ci["lo"]], [ci["hi"] - ci["mean"]]]
            ax.errorbar([j - 0.08], [ci["mean"]], yerr=err, fmt="s", color=f"C{j}", capsize=4, markersize=6,
                        label="mean, 95% CI" if j == 0 else None)
        ax.set_xticks(range(len(designs)), [_wrap(n) for n in designs], fontsize=8)
        ax.set_xlim(-0.6, len(designs) - 0.4)
        ax.set_ylabel(METRICS[claim["metric"]].replace(" (fraction)", "\n(fraction)"), fontsize=8)
        ax.set_title(f"{claim['claim']}: {claim['verdict']}", fontsize=9,
                     color={REPRODUCED: "tab:green", NOT_REPRODUCED: "tab:red"}.get(claim["verdict"], "0.3"))
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(labelsize=8)
        if ax is axes[0]:
            ax.legend(fontsize=7, loc="best")
    return fig


def _wrap(name: str) -> str:
    return name.replace(" (", "\n(")


def curves_figure(results: dict[str, list[ModelResult]]) -> Figure:
    """Training loss and batch accuracy per design: mean over seeds, min–max band."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    seeds = max(len(r) for r in results.values())
    fig.suptitle(f"Training curves ({seeds} seed{'s' if seeds > 1 else ''}: mean, band = min to max over seeds)",
                 fontsize=10)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for j, (name, runs) in enumerate(results.items()):
        steps = runs[0].curves["step"]
        n = min(len(r.curves["step"]) for r in runs)
        for ax, key in ((loss_ax, "loss"), (acc_ax, "train_top1")):
            values = np.array([r.curves[key][:n] for r in runs])
            top1 = np.mean([r.metrics["top1"] for r in runs])
            ax.plot(steps[:n], values.mean(0), color=f"C{j}",
                    label=f"{name} (held-out top-1 {top1:.2f})" if key == "train_top1" else name)
            if len(runs) > 1:
                ax.fill_between(steps[:n], values.min(0), values.max(0), color=f"C{j}", alpha=0.2)
    loss_ax.set(xlabel="training step", ylabel="cross-entropy loss (batch)", title="training loss")
    acc_ax.set(xlabel="training step", ylabel="top-1 accuracy (batch)", title="training accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def frequency_figure(results: dict[str, list[ModelResult]]) -> Figure:
    """Distribution of conv1's dominant frequencies per design (averaged over seeds), with
    each stride's Nyquist frequency and the mid band."""
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    for j, (name, runs) in enumerate(results.items()):
        hist = runs[0].conv1_spectra["frequency_histogram"]
        edges = np.array(hist["edges"])
        counts = np.mean([np.array(r.conv1_spectra["frequency_histogram"]["counts"])
                          / max(1, sum(r.conv1_spectra["frequency_histogram"]["counts"])) for r in runs], 0)
        conv1 = runs[0].conv1
        ax.step(edges[:-1], counts, where="post", color=f"C{j}",
                label=f"{name} ({conv1[0]}×{conv1[0]}/{conv1[1]}; {len(runs)} model{'s' if len(runs) > 1 else ''})")
        ax.axvline(0.5 / conv1[1], linestyle="--", alpha=0.6, color=f"C{j}")
    first = next(iter(results.values()))[0]
    lo, hi = first.conv1_spectra["bands"]["edges"]
    ax.axvspan(lo, hi, color="grey", alpha=0.12, label="mid band")
    ax.set(xlabel="dominant spatial frequency (cycles/pixel); dashed: Nyquist of each stride",
           ylabel="fraction of conv1 filters", title="conv1: where the filters' dominant frequencies lie")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def evolution_figure(evolutions: dict[str, dict[int, dict[str, torch.Tensor]]], steps: tuple[int, ...]) -> Figure:
    """Fig. 4: rows = (layer, unit), columns = training steps, one block of columns per design."""
    designs = [d for d, snaps in evolutions.items() if snaps]
    keys = list(next(iter(evolutions[designs[0]].values()))) if designs else []
    cols = [(d, s) for d in designs for s in sorted(evolutions[d])]
    fig = Figure(figsize=(0.9 * len(cols) + 1.2, 0.9 * max(1, len(keys)) + 0.9), layout="constrained")
    fig.suptitle("Feature evolution (Fig. 4): each unit's strongest activation over the probe images, "
                 "projected,\nat training steps (columns) for each design (seed 0); 'silent': the unit does not fire on any "
                 "probe image yet", fontsize=9)
    if not keys or not cols:
        return fig
    axes = fig.subplots(len(keys), len(cols), squeeze=False)
    for i, key in enumerate(keys):
        for j, (design, step) in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            crop = evolutions[design][step].get(key)
            if crop is not None and crop.numel() and crop.abs().max() > 0:
                ax.imshow(as_display(crop), interpolation="nearest")
            else:  # the unit is silent on every probe image at this step: nothing to project
                ax.text(0.5, 0.5, "silent", ha="center", va="center", fontsize=6, color="0.4",
                        transform=ax.transAxes)
            if i == 0:
                ax.set_title(f"{design}\nstep {step}", fontsize=6)
            if j == 0:
                layer, unit = key.split(":")
                ax.set_ylabel(f"{layer}\nunit {unit}", fontsize=7, rotation=0, ha="right", va="center")
    return fig



# --------------------------------------------------------------------------- the numbers


def markdown_table(summary: dict) -> str:
    """Every number per design as ``mean [95% CI]``."""
    names = [d["name"] for d in summary["designs"]]
    lines = ["| measure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for d_metric in METRICS:
        cells = []
        for d in summary["designs"]:
            ci = d["metrics"][d_metric]
            cells.append("n/a" if ci is None else fmt(ci))
        lines.append(f"| {METRICS[d_metric]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_markdown(summary: dict) -> str:
    lines = ["| claim (paper) | " + " | ".join(d["name"] for d in summary["designs"]) + " | difference | verdict |",
             "|---" * (len(summary["designs"]) + 3) + "|"]
    for c in summary["claims"]:
        values = [("n/a" if c["values"][d["name"]] is None else fmt(c["values"][d["name"]]))
                  for d in summary["designs"]]
        diff = "n/a" if c["difference"] is None else f"{fmt(c['difference'])} ({c['difference_of']})"
        lines.append(f"| **{c['claim']}**: {c['paper']} | " + " | ".join(values) + f" | {diff} | {c['verdict']} |")
    return "\n".join(lines)


def report_markdown(summary: dict) -> str:
    head = ""
    if "preset" in summary:
        p = summary["preset"]
        head = (f"Recipe: {p['optimizer']} lr {p['lr']}, batch {p['batch']}, {p['steps']} steps per model, "
                f"weight decay {p['weight_decay']}, dropout 0.5 on fc6/fc7, conv1 init N(0, {p['conv1_init_std']}²), "
                f"filter renormalisation to RMS 0.1: {'on' if p['renorm'] else 'off'}; input {p['size']}px, "
                f"conv1/conv2 widths {p['channels'][0]}/{p['channels'][1]}. Seeds {summary['seeds']}: seed i "
                f"fixes init, data order and dropout, the same for every design.")
        title = f"`{p['name']}` preset"
    else:
        title = "models trained elsewhere"
        head = "Models: " + ", ".join(f"`{t}`" for t in summary["trained"]) + " (no training)."
    return f"""# ZFNet first-layer study: {title}

Data: {summary['data']}. {head}
Device {summary['device']}; {summary['machine']}; torch {summary['torch']}; wall time {summary['wall_seconds']} s.
Intervals: {summary['intervals']}.

## Claims

{claims_markdown(summary)}

A verdict reads the 95% interval of the difference, signed so that positive is the paper's direction:
reproduced when it lies above 0, not reproduced when it does not reach above 0, inconclusive at this budget
when it straddles 0.

## Every number

{markdown_table(summary)}

Files: `claims.png` (the claims, per seed), `fig6_conv1_*.png` (Fig. 6 b/c), `fig6_layer2_top9_*.png` (Fig. 6 d/e),
`conv1_frequencies.png`, `fig4_evolution.png`, `training_curves.png`, `summary.json` (every number, per seed).
"""


__all__ = ["run_study", "run_trained", "measure", "load_trained", "markdown_table", "claims_markdown", "CLAIMS",
           "METRICS", "PRESETS"]
