"""The ZFNet study's measurements of a trained model (Zeiler & Fergus §4.1, Figs. 4 and 6,
in numbers), and the claims' summary over seeds.

Per model (:func:`measure`): held-out accuracy on the whole held-out split; conv1's dead
filters in the paper's sense and its never-firing units; the distribution of conv1's
dominant frequencies in bands fixed in advance; aliasing measured three ways — (a) the
share of conv1's dense response on the data that its stride folds, (b) the layer-2
features' variation under sub-stride shifts, (c) the layer-2 deconv projections'
high-frequency share relative to the image patches under them (``vizcnn.study.metrics``);
the layer-2 top-9 that Fig. 6 (d, e) draws. Over seeds (:func:`summarise`): every number
with its interval, each claim's paired difference and verdict (``vizcnn.study.stats``),
the 2×2 factorial's main effects, and how many seeds each observed effect would need.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..core.batch import Batch
from ..core.errors import BadArgumentError
from ..core.extract import Extractor
from ..core.layers import feeding_weight, layer_geometry
from ..core.rules import ReverseRules
from ..core.state import model_device, preserved_model
from ..methods.deconv import backproject, forward_to, strongest
from ..methods.scan import backproject_winners, scan_batches
from ..methods.spectra import dead_filters, effective_filters, filter_spectra, summarize
from ..models.registry import get_spec
from .metrics import data_alias_fraction, dense_alias_fraction, frequency_coverage, projection_hf_ratio, shift_variation
from .stats import (DESCRIPTIVE, INCONCLUSIVE, NOT_TESTABLE, mean_ci, mean_normal, paired_ci, seeds_needed, verdict,
                    wilson)
from .train import Preset, evaluate

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")

EVOLUTION_UNITS = 2  # units per layer in the Fig. 4 panel

LAYER2_UNITS = 16  # conv2 units whose top-9 are projected (Fig. 6 d/e): the most strongly activated ones

#: a network whose held-out top-1 is under this multiple of chance learned too little to compare
NEAR_CHANCE = 2.0


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: the metric that measures it, the sign of (7×7/2 − 11×11/4)
    the paper reports, and the equivalence margin stated before any run (None: none)."""

    key: str
    metric: str
    paper: str
    sign: int  # +1: the 7×7/2 design is higher; −1: the 11×11/4 design is higher
    margin: float | None = None


CLAIMS = (
    Claim("dead conv1 filters", "dead_filters_fraction",
          "AlexNet's 11×11/4 first layer has more \"dead\" filters — near-zero or structureless pictures — than "
          "ZFNet's 7×7/2 (Fig. 6 b vs c)", -1),
    Claim("mid-frequency coverage", "mid_fraction",
          "11×11/4 filters are 'a mix of extremely high and low frequency information, with little coverage of "
          "the mid frequencies'; 7×7/2 covers them (Fig. 6 b vs c): more conv1 filters peak in the mid band "
          "(1/6 to 1/3 cycle/px)", +1),
    Claim("conv1 aliasing on the data", "conv1_alias_dense",
          "the large stride 4 of the 1st layer causes aliasing: a larger share of conv1's response on the data "
          "lies outside its stride's Nyquist square", -1),
    Claim("layer-2 shift variation", "layer2_shift_variation",
          "layer 2 shows aliasing artifacts (Fig. 6 d vs e): its pooled features change more under input shifts "
          "smaller than the stride", -1),
    Claim("layer-2 projection high frequencies", "layer2_hf_ratio",
          "the layer-2 projections of the 11×11/4 network hold high-frequency artifacts (Fig. 6 d vs e): more of "
          "their energy above 1/4 cycle/px, relative to the image patches under them", -1),
    Claim("held-out accuracy", "top1", "7×7/2 classifies better (Table 2's direction); equivalence margin ±1 point",
          +1, margin=0.01),
)


#: every number reported per model, with how it reads
METRICS = {
    "top1": "held-out top-1",
    "top5": "held-out top-5",
    "dead_filters_fraction": "dead conv1 filters: near-zero or structureless (fraction)",
    "never_fire_fraction": "conv1 units that never fire on the probe set (fraction)",
    "mid_fraction": "conv1 filters peaking in the mid band, 1/6-1/3 cycle/px (fraction)",
    "high_fraction": "conv1 filters peaking in the extreme-high band, > 1/3 cycle/px (fraction)",
    "low_fraction": "conv1 filters peaking in the low band, < 1/6 cycle/px (fraction)",
    "conv1_alias_dense": "conv1 response energy its stride folds, on the data (a)",
    "conv1_alias_filters": "conv1 filter energy outside the stride's Nyquist square, energy-weighted",
    "layer2_shift_variation": "layer-2 pooled features' change under sub-stride shifts (b)",
    "layer2_hf_ratio": "layer-2 projections' share above 1/4 cycle/px over the patches' (c)",
    "structured_fraction": "conv1 filters with spatial structure (fraction)",
}

#: metrics that are fractions (intervals clipped to [0, 1]); the others are ratios
FRACTIONS = {"top1", "top5", "dead_filters_fraction", "never_fire_fraction", "mid_fraction", "high_fraction",
             "low_fraction", "conv1_alias_dense", "conv1_alias_filters", "structured_fraction"}


@dataclass
class Layer2Winners:
    """Fig. 6 d/e's numbers: the conv2 units shown (the most strongly activated), their
    projected winners {(unit, rank): Projection}, and aliasing (c) for them."""

    units: list[int]
    winners: dict
    hf: dict


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
    dead_filters: dict = field(default_factory=dict)
    coverage: dict = field(default_factory=dict)
    chance: float | None = None
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


def _not_testable(claim: Claim, a: list[ModelResult], z: list[ModelResult]) -> str | None:
    """Why a claim cannot be tested on these networks, or None."""
    low = [r for r in (*a, *z) if r.metrics.get("top1") is not None and r.chance is not None
           and r.metrics["top1"] < NEAR_CHANCE * r.chance]
    if low:
        worst = min(low, key=lambda r: r.metrics["top1"])
        return (f"{len(low)} network(s) learned too little to compare (held-out top-1 under {NEAR_CHANCE:g}× "
                f"chance; lowest {worst.metrics['top1']:.3f} for {worst.name} seed {worst.seed})")
    values = [r.metrics[claim.metric] for r in (*a, *z)]
    if all(v == 0 for v in values):
        return "the phenomenon is absent from every network of both designs (0 everywhere)"
    return None


def summarise(results: dict[str, list[ModelResult]], *, over_seeds: bool) -> dict:
    """Per design: per-seed values and an interval per metric; per claim: the paired
    difference, its verdict and the seeds the observed effect would need (over seeds),
    or the numbers alone (``--trained``, one model per design: descriptive); the 2×2
    factorial's main effects when its four designs are there; the table as numbers."""
    designs = []
    for name, runs in results.items():
        intervals = {m: _interval([r.metrics[m] for r in runs], runs, m, over_seeds) for m in METRICS}
        designs.append({"name": name, "conv1": list(runs[0].conv1), "metrics": intervals,
                        "per_seed": [_run_json(r) for r in runs]})
    pair = sides([(n, runs[0].conv1) for n, runs in results.items()])
    claims = []
    for c in CLAIMS:
        entry = {"claim": c.key, "metric": c.metric, "paper": c.paper, "margin": c.margin,
                 "values": {d["name"]: d["metrics"][c.metric] for d in designs}}
        if pair is None:
            entry.update(difference=None, verdict=INCONCLUSIVE, why="needs two designs with different conv1 strides")
            claims.append(entry)
            continue
        alex, zf = pair
        a, z = results[alex], results[zf]
        entry.update(compared=[alex, zf], difference_of=f"{zf} − {alex}" if c.sign > 0 else f"{alex} − {zf}")
        if any(r.metrics[c.metric] is None for r in (*a, *z)):
            entry.update(difference=None, verdict=INCONCLUSIVE if over_seeds else DESCRIPTIVE,
                         why="not measurable for these models")
        elif not over_seeds:
            diff = c.sign * (z[0].metrics[c.metric] - a[0].metrics[c.metric])
            entry.update(difference={"mean": diff, "lo": None, "hi": None, "n": 1, "method": "one model each"},
                         verdict=DESCRIPTIVE, why="one model per design: numbers, no verdict")
        else:
            diff = paired_ci([c.sign * r.metrics[c.metric] for r in z], [c.sign * r.metrics[c.metric] for r in a])
            reason = _not_testable(c, a, z)
            if reason is not None:
                word, why = NOT_TESTABLE, reason
            else:
                word, why = verdict(diff, margin=c.margin)
            entry.update(difference=diff, verdict=word, why=why, seeds_needed=seeds_needed(diff["values"]))
        claims.append(entry)
    table = [{"measure": METRICS[m], "metric": m,
              **{d["name"]: {k: d["metrics"][m][k] for k in ("mean", "lo", "hi")} if d["metrics"][m] else None
                 for d in designs}} for m in METRICS]
    out = {"designs": designs, "claims": claims, "table": table,
           "intervals": "95% t-interval over seeds, paired by seed" if over_seeds else
           "95% intervals within each model: Wilson over filters or held-out images, normal over items; "
           "one model per design, so the comparisons are descriptive"}
    effects = factorial_effects(results) if over_seeds else None
    if effects is not None:
        out["factorial"] = effects
    return out


def factorial_effects(results: dict[str, list[ModelResult]]) -> dict | None:
    """The 2×2 factorial's main effects per metric, paired by seed: kernel (the two 11×11
    designs − the two 7×7 designs, averaged over stride) and stride (the two stride-4
    designs − the two stride-2 designs, averaged over kernel), and their interaction.
    None unless 11/4, 7/2, 11/2 and 7/4 were all trained with the same seeds."""
    by_conv1 = {tuple(runs[0].conv1): runs for runs in results.values()}
    corners = [(11, 4), (11, 2), (7, 4), (7, 2)]
    if not all(c in by_conv1 for c in corners):
        return None
    seeds = [[r.seed for r in by_conv1[c]] for c in corners]
    if any(s != seeds[0] for s in seeds) or len(seeds[0]) < 1:
        return None
    out = {}
    for m in METRICS:
        v = {c: [r.metrics[m] for r in by_conv1[c]] for c in corners}
        if any(x is None for c in corners for x in v[c]):
            continue
        k114, k112, k74, k72 = (v[c] for c in corners)
        n = len(k114)
        kernel = [(k114[i] + k112[i] - k74[i] - k72[i]) / 2 for i in range(n)]
        stride = [(k114[i] + k74[i] - k112[i] - k72[i]) / 2 for i in range(n)]
        inter = [(k114[i] - k112[i] - k74[i] + k72[i]) / 2 for i in range(n)]
        out[m] = {"kernel 11 − 7": mean_ci(kernel), "stride 4 − 2": mean_ci(stride),
                  "interaction": mean_ci(inter)}
    return out


def _interval(values: list, runs: list[ModelResult], metric: str, over_seeds: bool) -> dict | None:
    if any(v is None for v in values):
        return None
    if over_seeds:
        return mean_ci(values, bounds=(0.0, 1.0) if metric in FRACTIONS else None)
    counts = runs[0].counts
    if metric in ("top1", "top5") and counts.get("heldout"):
        return wilson(counts[metric + "_correct"], counts["heldout"])
    if metric in counts.get("fraction_of", {}):
        k, n = counts["fraction_of"][metric]
        return wilson(k, n)
    items = counts.get(metric + "_items")
    if items is None:
        return {"mean": values[0], "lo": None, "hi": None, "n": 1, "method": "one value"}
    return mean_normal(items["values"], items.get("weights"))


def _run_json(r: ModelResult) -> dict:
    counts = {k: v for k, v in r.counts.items() if not k.endswith("_items")}
    return {"seed": r.seed, **r.metrics, "counts": counts, "dead_by_layer": r.dead_by_layer,
            "dead_filters": r.dead_filters, "coverage": r.coverage, "conv1_spectra": r.conv1_spectra,
            "chance": r.chance, "curves": r.curves, "train_seconds": round(r.train_seconds, 1),
            "images_per_second": round(r.images_per_second, 1)}


def evolution_crops(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fig. 4 at one training step: for the first units of each layer, the strongest
    activation over the probe images ``x`` (normalised, (N, C, H, W)), projected to pixels
    and cropped to its receptive field; keyed ``"layer:unit"``."""
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
    return crops


def study_spec(preset: Preset, mean: float):
    """A ModelSpec whose normalisation is the study's: (image − mean) · 255."""
    return replace(get_spec("zfnet"), name="study", input_size=(3, preset.size, preset.size),
                   num_classes=preset.classes, mean=(mean,) * 3, std=(1 / 255,) * 3)


def first_conv_weight(model: nn.Module) -> torch.Tensor:
    path, weight = feeding_weight(model, "conv1")
    if weight is None or weight.dim() != 4:
        raise BadArgumentError(f"{type(model).__name__}: no convolution feeds 'conv1'")
    return weight


def _normalise(images: torch.Tensor, spec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


def output_count(model: nn.Module, spec) -> int:
    with torch.no_grad(), preserved_model(model):
        model.eval()
        x = torch.zeros(1, *spec.input_size, device=model_device(model), dtype=first_conv_weight(model).dtype)
        return int(model(x).shape[-1])


def conv1_layer(model: nn.Module) -> nn.Conv2d:
    path, _ = feeding_weight(model, "conv1")
    return dict(model.named_modules())[path]


def data_nyquist(probe: torch.Tensor, strides: Sequence[int] = (2, 4)) -> dict[str, float]:
    """The data's own energy outside each stride's Nyquist square (probe images in [0, 1]):
    how much there is for a strided first layer to alias at all."""
    return {f"stride {s}": data_alias_fraction(probe, s) for s in strides}


def measure(model: nn.Module, name: str, spec, probe: torch.Tensor, read: Callable[[int], tuple | None], *,
            heldout=None, grey: bool = False, seed: int | None = None, chance: float | None = None,
            log=print) -> tuple[ModelResult, Layer2Winners]:
    """The study's numbers for one trained model (see the module docstring). ``probe``:
    the probe images in [0, 1]; ``read(i)`` gives probe image i as the dataset pass reads
    it (display image, normalised tensor), for the projections; ``heldout``: (images in
    [0, 1], labels, prepare) for accuracy, or None; ``grey``: the model was trained on grey
    images fed as equal channels (its filters are measured by their channel sum).
    Returns (result, the layer-2 winners that Fig. 6 d/e draws)."""
    conv = conv1_layer(model)
    conv1 = (int(conv.kernel_size[0]), int(conv.stride[0]))
    weight = conv.weight.detach().float()
    spectra = summarize(filter_spectra(effective_filters(weight, grey), conv1[1]))
    dead = dead_filters(weight, grey=grey)
    coverage = frequency_coverage(weight, grey)
    device = model_device(model)
    x = _normalise(probe.to(device), spec).to(next(model.parameters()).dtype)
    batches = (Batch(torch.arange(i, min(i + 64, len(x))), x[i:i + 64], []) for i in range(0, len(x), 64))
    scan = scan_batches(model, batches, spec.input_size, topk_layers=["conv2"], stats_layers=list(LAYERS), top=9,
                        distinct_images=True)
    never = {layer: int(s.dead().sum()) for layer, s in scan.stats.items()}
    # the units with the strongest top-1 activation: a dead unit has nothing to project
    best = scan.topk["conv2"].value[:, 0].float().cpu()
    units = sorted(best.argsort(descending=True)[:LAYER2_UNITS].tolist())
    winners = backproject_winners(model, read, tuple(spec.input_size), "conv2", scan.topk["conv2"], units)
    shown = [p for p in winners.values() if min(p.projection.shape[-2:]) >= 4 and p.projection.abs().max() > 0]
    hf = projection_hf_ratio([p.projection.double() for p in shown],
                             [torch.as_tensor(p.patch).permute(2, 0, 1).double() for p in shown]) if shown else None
    alias = dense_alias_fraction(weight, x.float(), conv1[1], padding=int(conv.padding[0]))
    shift = shift_variation(model, "conv2", x)
    n = len(dead)
    bands = coverage["bands"]["counts"]
    counts = {"filters": n, "dead_filters": dead.count, "never_fire": never["conv1"], "mid": bands["mid"],
              "probe": len(probe), "projections": len(shown),
              "fraction_of": {"dead_filters_fraction": (dead.count, n), "never_fire_fraction": (never["conv1"], n),
                              "mid_fraction": (bands["mid"], n), "high_fraction": (bands["high"], n),
                              "low_fraction": (bands["low"], n)},
              "conv1_alias_dense_items": {"values": alias["values"], "weights": alias["weights"]},
              "layer2_shift_variation_items": {"values": shift["values"]}}
    structure = spectra["structure"]
    if structure is not None:
        counts["fraction_of"]["structured_fraction"] = (structure["structured"], n)
    if hf is not None:
        counts["layer2_hf_ratio_items"] = {"values": [a / b if b > 0 else 0.0 for a, b in
                                                      zip(hf["projection_values"], hf["patch_values"])],
                                           "weights": hf["projection_weights"]}
    metrics = {"dead_filters_fraction": dead.count / n, "never_fire_fraction": never["conv1"] / n,
               "mid_fraction": bands["mid"] / n, "high_fraction": bands["high"] / n, "low_fraction": bands["low"] / n,
               "structured_fraction": None if structure is None else structure["structured"] / n,
               "conv1_alias_filters": spectra["alias_fraction"]["energy_weighted"],
               "conv1_alias_dense": alias["fraction"], "layer2_shift_variation": shift["mean"],
               "layer2_hf_ratio": None if hf is None else hf["ratio"], "top1": None, "top5": None}
    if heldout is not None:
        hx, hy, prepare = heldout
        (top1, top5), m = evaluate(model, hx, hy, prepare=prepare), len(hy)
        metrics["top1"], metrics["top5"] = top1, top5
        counts.update(heldout=m, top1_correct=round(top1 * m), top5_correct=round(top5 * m))
    dead_json = dead.to_json()
    dead_json.pop("norm_ratio", None)
    result = ModelResult(name, conv1, seed, metrics, counts, spectra, never, dead_filters=dead_json,
                         coverage={k: coverage[k] for k in ("bands", "histogram", "entropy", "live", "grey")
                                   if k in coverage},
                         chance=chance)
    result.counts["layer2_hf"] = None if hf is None else {k: hf[k] for k in ("projection_share", "patch_share",
                                                                              "cutoff")}
    result.counts["layer2_shift_per_shift"] = shift["per_shift"]
    return result, Layer2Winners(units, winners, hf or {})


__all__ = ["CLAIMS", "METRICS", "LAYERS", "NEAR_CHANCE", "Claim", "ModelResult", "Layer2Winners", "evolution_crops",
           "measure", "summarise", "factorial_effects", "sides", "study_spec", "first_conv_weight", "conv1_layer",
           "data_nyquist", "output_count"]
