"""The ZFNet study's measurements of a trained model (Zeiler & Fergus §4.1, Figs. 4 and 6,
in numbers): conv1's spectra and aliasing (``vizcnn.methods.spectra``), dead filters and
the layer-2 top-9 over a fixed probe set (the dataset pass, ``vizcnn.methods.scan``), the
aliasing of those layer-2 projections, held-out accuracy, the feature evolution of Fig. 4,
and the claims' verdicts over seeds (``vizcnn.core.stats``)."""
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
from .stats import INCONCLUSIVE, difference_ci, mean_ci, mean_normal, paired_ci, verdict, wilson
from ..models.registry import get_spec
from ..methods.deconv import backproject, forward_to, strongest
from ..methods.scan import backproject_winners, scan_batches
from ..methods.spectra import filter_spectra, summarize
from .train import Preset, evaluate

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


EVOLUTION_UNITS = 2  # units per layer in the Fig. 4 panel


LAYER2_UNITS = 16  # conv2 units whose top-9 are projected (Fig. 6 d/e): the most strongly activated ones


SHARED_CUTOFF_STRIDE = 4  # a common yardstick: energy above 1/8 cycles/px, for every design


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
class Layer2Winners:
    """Fig. 6 d/e's numbers: the conv2 units shown (the most strongly activated), their
    projected winners {(unit, rank): Projection}, and the projections' energy above
    conv1's Nyquist frequency (``own``) and above 1/8 cycle/px (``shared``)."""

    units: list[int]
    winners: dict
    own: float
    shared: float


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


def summarise(results: dict[str, list[ModelResult]], *, over_seeds: bool) -> dict:
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


def _conv1_design(model: nn.Module) -> tuple[int, int]:
    path, _ = feeding_weight(model, "conv1")
    conv = dict(model.named_modules())[path]
    return int(conv.kernel_size[0]), int(conv.stride[0])


def normalise(images: torch.Tensor, spec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


def output_count(model: nn.Module, spec) -> int:
    with torch.no_grad(), preserved_model(model):
        model.eval()
        x = torch.zeros(1, *spec.input_size, device=model_device(model), dtype=first_conv_weight(model).dtype)
        return int(model(x).shape[-1])


def measure(model: nn.Module, name: str, spec, probe: torch.Tensor, read: Callable[[int], tuple | None], *,
            heldout=None, seed: int | None = None, log=print) -> tuple[ModelResult, Layer2Winners]:
    """The study's numbers for one trained model: conv1 spectra, structure and dead
    filters, dead units per layer and the layer-2 top-9 over the probe images (in [0, 1]),
    the aliasing of those layer-2 projections, and held-out top-1/top-5 when ``heldout``
    (normalised images, labels) is given. ``read(i)`` gives probe image i as the dataset
    pass reads it (display image, normalised tensor), for the projections. Returns
    (result, the layer-2 winners that Fig. 6 d/e draws)."""
    conv1 = _conv1_design(model)
    weight = first_conv_weight(model).detach().float()
    spectra_full = filter_spectra(weight, conv1[1])
    spectra = summarize(spectra_full)
    device = model_device(model)
    dtype = weight.dtype
    batches = (Batch(torch.arange(i, min(i + 64, len(probe))),
                     normalise(probe[i:i + 64].to(device), spec).to(dtype), [])
               for i in range(0, len(probe), 64))
    scan = scan_batches(model, batches, spec.input_size, topk_layers=["conv2"], stats_layers=list(LAYERS), top=9,
                        distinct_images=True)
    dead = {layer: int(s.dead().sum()) for layer, s in scan.stats.items()}
    # the units with the strongest top-1 activation: a dead unit has nothing to project
    best = scan.topk["conv2"].value[:, 0].float().cpu()
    units = sorted(best.argsort(descending=True)[:LAYER2_UNITS].tolist())
    winners = backproject_winners(model, read, tuple(spec.input_size), "conv2", scan.topk["conv2"], units)
    items = _projection_aliasing(winners, conv1[1])
    own = mean_normal(items["own"], items["energy"])["mean"]  # energy-weighted, 0 when nothing projected
    shared = mean_normal(items["shared"], items["energy"])["mean"]
    filters = spectra["filters"]
    structure = spectra["structure"]
    counts = {"filters": filters, "dead_conv1": dead["conv1"], "mid": spectra["bands"]["counts"]["mid"],
              "structured": None if structure is None else structure["structured"], "probe": len(probe),
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
    return ModelResult(name, conv1, seed, metrics, counts, spectra, dead), Layer2Winners(units, winners, own, shared)


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


__all__ = ["CLAIMS", "METRICS", "LAYERS", "Claim", "ModelResult", "Layer2Winners", "evolution_crops", "measure",
           "summarise", "sides", "study_spec", "first_conv_weight",
           "normalise", "output_count"]
