"""The ZFNet first-layer study, end to end: train every design (``vizcnn.study``), analyse
each with vizcnn's own tools, and write one report (Zeiler & Fergus §4.1, Figs. 4 and 6,
in numbers).

Per design: conv1's spectra and aliasing (``vizcnn.spectra``), dead filters and the
layer-2 top-9 over a fixed probe set (``vizcnn.dataset``'s single pass), the aliasing of
those layer-2 projections, held-out top-1/top-5, training curves and the feature
evolution of Fig. 4.
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .data import Batch, ImageSource
from .dataset import project_winners, scan_batches
from .deconv import backproject, forward_to, strongest
from .errors import BadArgumentError
from .extract import Extractor
from .imageio import save_figure
from .layers import layer_geometry
from .models import get_spec
from .output import OutputDir
from .render import as_display
from .render_dataset import topk_page
from .render_filters import filter_grid
from .rules import ReverseRules
from .spectra import filter_spectra, summarize
from .state import preserved_model
from .study import PRESETS, FractalStream, Preset, design_name, evaluate, train

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
EVOLUTION_UNITS = 2  # units per layer in the Fig. 4 panel
LAYER2_UNITS = 16  # conv2 units whose top-9 are projected (Fig. 6 d/e)
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


def study_spec(preset: Preset):
    """A ModelSpec whose normalisation is the study's: (image − mean) · 255."""
    return replace(get_spec("zfnet"), name="study", input_size=(3, preset.size, preset.size),
                   num_classes=preset.classes, mean=(FractalStream.MEAN,) * 3, std=(1 / 255,) * 3)


@dataclass
class DesignResult:
    name: str
    conv1: tuple[int, int]
    top1: float
    top5: float
    train_seconds: float
    images_per_second: float
    conv1_spectra: dict
    dead_conv1: int
    dead_by_layer: dict[str, int]
    layer2_alias_own: float
    layer2_alias_shared: float
    curves: dict


def run_study(out: OutputDir, preset: Preset, designs: list[tuple[int, int]], *, seed: int = 0,
              device: torch.device = torch.device("cpu"), renorm: bool = True, log=print) -> dict:
    """Trains every design under one recipe, analyses each, writes the report."""
    if len(designs) < 1:
        raise BadArgumentError("the study needs at least one conv1 design")
    preset = replace(preset, renorm=renorm)
    started = time.time()
    stream = FractalStream(preset, seed=seed, device=device)
    heldout_x, heldout_y = stream.fixed_set(preset.eval_images, salt=1)
    probe, _ = stream.fixed_set(preset.probe_images, salt=2)
    source = TensorSource("fractal-probe", probe)
    spec = study_spec(preset)
    checkpoints = out.root / "checkpoints"
    checkpoints.mkdir(exist_ok=True)

    results, evolutions, filters = [], {}, {}
    for conv1 in designs:
        name = design_name(conv1)
        snapshots = _EvolutionRecorder(probe[: min(64, len(probe))], stream, checkpoints / f"{name}-evolution")
        model, curves, seconds = train(preset, conv1, stream, checkpoints, seed=seed, on_snapshot=snapshots,
                                       log=log)
        top1, top5 = evaluate(model, stream.prepare(heldout_x), heldout_y)
        log(f"{name}: held-out top-1 {top1:.3f}, top-5 {top5:.3f}; analysing")
        result, pages = _analyse(model, name, conv1, preset, source, spec, stream)
        result.top1, result.top5, result.curves = top1, top5, asdict(curves)
        result.train_seconds = seconds
        result.images_per_second = curves.images_per_s[-1] if curves.images_per_s else 0.0
        results.append(result)
        evolutions[name] = snapshots.load()
        filters[name] = model.features.conv1.weight.detach().cpu()
        for i, fig in enumerate(pages):
            save_figure(fig, out.path(f"fig6_layer2_top9_{name}{'' if i == 0 else f'_p{i + 1}'}.png"))
        save_figure(filter_grid(filters[name], f"{name}: conv1 filters after training ({conv1[0]}×{conv1[0]}, "
                                               f"stride {conv1[1]})"), out.path(f"fig6_conv1_{name}.png"))

    save_figure(curves_figure(results), out.path("training_curves.png"))
    save_figure(frequency_figure(results), out.path("conv1_frequencies.png"))
    save_figure(evolution_figure(evolutions, preset.evolution), out.path("fig4_evolution.png"))
    table = comparison_table(results)
    summary = {
        "preset": asdict(preset), "designs": [asdict(r) for r in results], "seed": seed, "device": str(device),
        "data": f"fractal (FractalDB-style IFS, {preset.classes} classes, {preset.size}px)",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "torch": torch.__version__, "wall_seconds": round(time.time() - started, 1), "table": table,
    }
    (out.root / "report.md").write_text(report_markdown(summary))
    out.written.append("report.md")
    return out.finish(summary)


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


def _analyse(model: nn.Module, name: str, conv1: tuple[int, int], preset: Preset, source: TensorSource, spec,
             stream: FractalStream) -> tuple[DesignResult, list[Figure]]:
    weight = model.features.conv1.weight.detach()
    spectra = summarize(filter_spectra(weight, conv1[1]))
    device = weight.device
    batches = (Batch(torch.arange(i, min(i + 64, len(source))),
                     stream.prepare(source.images[i:i + 64].to(device)), [])
               for i in range(0, len(source), 64))
    scan = scan_batches(model, batches, spec.input_size, topk_layers=["conv2"], stats_layers=list(LAYERS), top=9,
                        distinct_images=True)
    dead = {layer: int(s.dead().sum()) for layer, s in scan.stats.items()}
    units = list(range(min(LAYER2_UNITS, scan.topk["conv2"].value.shape[0])))
    winners = project_winners(model, source, spec, "conv2", scan.topk["conv2"], units)
    own, shared = _projection_aliasing(winners, conv1[1])
    rows = [(u, [_cell(winners.get((u, r))) for r in range(9)]) for u in units]
    page = topk_page(rows, f"{name}: conv2 top-9 over {len(source)} probe images, deconvnet projection | patch "
                           f"(layer-2 aliasing: {own:.2f} of projection energy above conv1's Nyquist)")
    return DesignResult(name, conv1, 0.0, 0.0, 0.0, 0.0, spectra, dead["conv1"], dead, own, shared, {}), [page]


def _cell(p):
    if p is None:
        return None
    patch = p.patch if p.patch.shape[2] == 3 else np.repeat(p.patch, 3, axis=2)
    return as_display(p.projection), patch, p.value, f"img {p.image}"


def _projection_aliasing(winners: dict, stride: int) -> tuple[float, float]:
    """Energy-weighted aliasing fraction of the layer-2 projections: above the Nyquist
    frequency of conv1's own stride, and above a cutoff shared by every design.
    Projections of one crop size go through the FFT together."""
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for p in winners.values():
        proj = p.projection.double()
        if min(proj.shape[-2:]) >= 2 and proj.abs().max() > 0:
            by_shape.setdefault(tuple(proj.shape), []).append(proj)
    energy, weighted = 0.0, {stride: 0.0, SHARED_CUTOFF_STRIDE: 0.0}
    for group in by_shape.values():
        batch = torch.stack(group)
        e = batch.pow(2).sum((1, 2, 3))
        energy += float(e.sum())
        for s in weighted:
            alias = filter_spectra(batch, s, keep_power=False, structure=False).alias_fraction
            weighted[s] += float((alias * e).sum())
    if energy == 0:
        return 0.0, 0.0
    return weighted[stride] / energy, weighted[SHARED_CUTOFF_STRIDE] / energy


# --------------------------------------------------------------------------- figures


def curves_figure(results: list[DesignResult]) -> Figure:
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for r in results:
        c = r.curves
        loss_ax.plot(c["step"], c["loss"], label=r.name)
        acc_ax.plot(c["step"], c["train_top1"], label=f"{r.name} (held-out top-1 {r.top1:.2f})")
    loss_ax.set(xlabel="training step", ylabel="cross-entropy loss (batch)", title="training loss")
    acc_ax.set(xlabel="training step", ylabel="top-1 accuracy (batch)", title="training accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def frequency_figure(results: list[DesignResult]) -> Figure:
    """Distribution of conv1's dominant frequencies per design, with each stride's Nyquist."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for r in results:
        hist = r.conv1_spectra["frequency_histogram"]
        edges = np.array(hist["edges"])
        counts = np.array(hist["counts"]) / max(1, sum(hist["counts"]))
        ax.step(edges[:-1], counts, where="post", label=f"{r.name} ({r.conv1[0]}×{r.conv1[0]}/{r.conv1[1]})")
        ax.axvline(0.5 / r.conv1[1], linestyle="--", alpha=0.5, color=ax.lines[-1].get_color())
    lo, hi = results[0].conv1_spectra["bands"]["edges"]
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
                 "projected,\nat training steps (columns) for each design", fontsize=9)
    if not keys or not cols:
        return fig
    axes = fig.subplots(len(keys), len(cols), squeeze=False)
    for i, key in enumerate(keys):
        for j, (design, step) in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            crop = evolutions[design][step].get(key)
            if crop is not None and crop.numel():
                ax.imshow(as_display(crop), interpolation="nearest")
            if i == 0:
                ax.set_title(f"{design}\nstep {step}", fontsize=6)
            if j == 0:
                layer, unit = key.split(":")
                ax.set_ylabel(f"{layer}\nunit {unit}", fontsize=7, rotation=0, ha="right", va="center")
    return fig


# --------------------------------------------------------------------------- the numbers


def comparison_table(results: list[DesignResult]) -> list[dict]:
    rows = []
    for r in results:
        s = r.conv1_spectra
        rows.append({
            "design": f"{r.name} ({r.conv1[0]}×{r.conv1[0]}, stride {r.conv1[1]})",
            "dead conv1 filters": f"{r.dead_conv1} / {s['filters']}",
            "conv1 unstructured": "-" if s["structure"] is None else
            f"{s['structure']['unstructured']} / {s['filters']}",
            "conv1 aliasing (energy-weighted)": round(s["alias_fraction"]["energy_weighted"], 3),
            "conv1 aliasing, white noise": round(s["alias_fraction"]["noise_expected"], 3),
            "conv1 dominant freq. low/mid/high": "/".join(f"{s['bands']['counts'][b]}" for b in ("low", "mid", "high")),
            "conv1 freq. entropy": round(s["frequency_entropy"], 3),
            "layer-2 projection aliasing (own stride)": round(r.layer2_alias_own, 3),
            "layer-2 projection energy > 1/8 cyc/px": round(r.layer2_alias_shared, 3),
            "held-out top-1 / top-5": f"{r.top1:.3f} / {r.top5:.3f}",
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(["measure"] + [r["design"] for r in rows]) + " |",
             "|---" * (len(rows) + 1) + "|"]
    for k in keys[1:]:
        lines.append("| " + " | ".join([k] + [str(r[k]) for r in rows]) + " |")
    return "\n".join(lines)


def report_markdown(summary: dict) -> str:
    p = summary["preset"]
    return f"""# ZFNet first-layer study: `{p['name']}` preset

Data: {summary['data']}. Recipe: {p['optimizer']} lr {p['lr']}, batch {p['batch']}, {p['steps']} steps,
weight decay {p['weight_decay']}, dropout 0.5 on fc6/fc7, conv1 init N(0, {p['conv1_init_std']}²),
filter renormalisation to RMS 0.1: {'on' if p['renorm'] else 'off'}. Same seed ({summary['seed']}), same images
in the same order, same budget for every design. Device {summary['device']}; {summary['machine']};
torch {summary['torch']}; wall time {summary['wall_seconds']} s.

{markdown_table(summary['table'])}

Files: `fig6_conv1_*.png` (Fig. 6 b/c), `fig6_layer2_top9_*.png` (Fig. 6 d/e), `conv1_frequencies.png`,
`fig4_evolution.png`, `training_curves.png`, `summary.json` (every number).
"""


__all__ = ["run_study", "comparison_table", "markdown_table", "PRESETS"]
