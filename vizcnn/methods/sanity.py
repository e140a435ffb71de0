"""Sanity checks for saliency maps: cascading model-parameter randomization
(Adebayo et al. 2018, "Sanity Checks for Saliency Maps", §3.1).

A saliency method that explains what the model learned must change when the learned
weights are destroyed. On a *copy* of the model (``copy.deepcopy``; the user's model is
never changed) the parametrised layers are re-initialised one at a time from the top
(the classifier) down, cumulatively, and after each step every method's map is
recomputed for the *same* class index and compared with the original map:

- ``spearman_abs``: Spearman rank correlation of the (absolute) maps;
- ``spearman_signed``: Spearman rank correlation of the signed attributions summed over
  colour channels (for gradcam the un-rectified CAM, for occlusion the signed drop);
- ``ssim``: structural similarity (Wang et al. 2004, 11×11 Gaussian window, σ = 1.5) of
  the maps, each scaled to [0, 1] by its own minimum and maximum.

Cascade steps ("units"): every module that owns parameters, except that
``nn.Sequential``/``nn.ModuleList`` containers are opened (AlexNet/VGG: each conv and fc
layer; ResNet: each residual block; GoogLeNet: each inception block) and a
normalisation layer (batch norm) joins the layer it follows (ResNet's ``conv1``+``bn1``).
Units that do not run in the forward pass (auxiliary heads in eval mode) are skipped.
Re-initialisation: each module's own ``reset_parameters()`` (PyTorch's default
initialiser for that layer type; batch norm returns to weight 1, bias 0, running mean
0, variance 1), or for parameters of modules without one a normal draw with the
parameter's own standard deviation; under a fixed seed per step, so a run is
reproducible.

Verdict rule (``VERDICT_RULE``): a method **passes** when the rank correlation of its
*signed* attribution with the original falls below 0.5 once the top half of the units
(⌈n/2⌉ steps: the classifier and the upper layers) has been re-initialised — its map
then depends on what those layers learned. The signed correlation decides because the
absolute maps of any network of a given architecture share structure that has nothing
to do with its weights (conv1's stride grid, the zero-padded border): on seeded random
AlexNets the |gradient| of two unrelated weight draws correlates at ρ ≈ 0.45–0.6, so an
absolute-map threshold at 0.5 would pass or fail the plain gradient by chance; the
signed maps have no such floor (≈ 0 for the gradient). Adebayo et al. found gradients and
Grad-CAM pass and guided backprop fail (it stays similar until the lowest layers are
randomized), which is what this rule reports on our models too. ``decorrelated_at``
gives the first step where the signed correlation fell below 0.5, so other rules can
be read off; a method whose original attribution is constant gets no verdict (None).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import BadArgumentError
from ..core.layers import LayerTap, feeding_layer, friendly_names
from ..core.state import model_device, preserved_model
from .deconv import check_input
from .saliency import METHODS, SaliencyResult, default_gradcam_layer, saliency_all

THRESHOLD = 0.5
VERDICT_METRIC = "spearman_signed"
VERDICT_RULE = ("passes when the Spearman rank correlation of the signed attribution (summed over colour channels) "
                f"with the original falls below {THRESHOLD} once the top half of the parametrised layers "
                "(ceil(n/2) cascade steps, from the classifier down) is re-initialised")
DEFAULT_METHODS = ("gradient", "guided", "deconvnet", "integrated-gradients", "smoothgrad", "gradcam")


# --------------------------------------------------------------------------- metrics


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of a 1-D tensor, ties given their average rank."""
    v = v.detach().double().flatten()
    order = torch.argsort(v, stable=True)
    sorted_v = v[order]
    _, counts = torch.unique_consecutive(sorted_v, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() + 1) / 2  # mean of the 0-based positions start..end-1
    ranks = torch.empty_like(v)
    ranks[order] = torch.repeat_interleave(avg, counts)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps of equal size (ties averaged); NaN when
    either map is constant (no ranking to compare)."""
    if a.numel() != b.numel():
        raise BadArgumentError(f"maps differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")
    ra, rb = _ranks(a.cpu()), _ranks(b.cpu())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else math.nan


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def scaled(m: torch.Tensor) -> torch.Tensor:
    """A map scaled to [0, 1] by its own minimum and maximum (all zeros if constant)."""
    m = m.detach().double().cpu()
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) of two H×W maps, each scaled to
    [0, 1] first; Gaussian window (11×11, σ = 1.5, smaller for maps under 11 px),
    K1 = 0.01, K2 = 0.03, data range 1, computed where the window fits (no padding).
    1 for identical maps; negative for anti-correlated ones."""
    if a.shape != b.shape or a.dim() != 2:
        raise BadArgumentError(f"SSIM needs two H×W maps of equal size, got {tuple(a.shape)} and {tuple(b.shape)}")
    window = min(window, *a.shape)
    window -= (window % 2 == 0)
    x, y = scaled(a)[None, None], scaled(b)[None, None]
    w = _gaussian(window, sigma)[None, None]
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx ** 2
    syy = F.conv2d(y * y, w) - my ** 2
    sxy = F.conv2d(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


# --------------------------------------------------------------------------- the cascade


def _owns_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def parametrised_units(model: nn.Module) -> list[list[str]]:
    """The model's parametrised units in registration order, each a list of module paths
    (a normalisation layer joins the unit before it). See the module docstring."""
    units: list[list[str]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if not _owns_params(child):
                continue
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                visit(path + ".", child)
            elif isinstance(child, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) and units:
                units[-1].append(path)
            else:
                units.append([path])

    visit("", model)
    return units


def _unit_labels(model: nn.Module, units: list[list[str]]) -> list[str]:
    """Friendly names where the model has them (AlexNet ``conv5``, VGG ``conv5_3``,
    ``fc8``), else the first module path of the unit."""
    by_module: dict[str, str] = {}
    for friendly in friendly_names(model):
        path = feeding_layer(model, friendly)
        if path is not None:
            by_module.setdefault(path, friendly)
    return [by_module.get(u[0], u[0]) for u in units]


def cascade(model: nn.Module, x: torch.Tensor) -> list[tuple[str, list[str]]]:
    """The cascade steps, top (classifier) first: [(label, module paths)], only the units
    that run when the model sees ``x``, ordered by when they run (reversed)."""
    units = parametrised_units(model)
    labels = _unit_labels(model, units)
    first = {unit[0]: i for i, unit in enumerate(units)}
    with preserved_model(model), LayerTap(model, list(first), record=lambda _n, _t: None) as tap, torch.no_grad():
        model.eval()
        model(x)
    finished = [first[path] for path in tap.order]
    return [(labels[i], units[i]) for i in reversed(finished)]


def reinitialise(model: nn.Module, paths: Sequence[str], seed: int) -> None:
    """Re-initialises the modules at ``paths`` of ``model`` in place (see the module
    docstring), deterministically for a given seed. Only ever called on a copy."""
    modules = dict(model.named_modules())
    device = model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for path in paths:
            for m in modules[path].modules():
                own = list(m.parameters(recurse=False))
                if not own:
                    continue
                if callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
                else:
                    for p in own:
                        std = float(p.std()) if p.numel() > 1 else 0.0
                        p.normal_(0.0, std if std > 0 else 1.0)


@dataclass(frozen=True)
class SanityResult:
    """Per method, the maps and their similarity to the original along the cascade.

    steps: ``original`` then the label of the unit re-initialised at each step (cumulative).
    maps: {method: [H×W map per step]} (CPU). metrics: {metric: {method: [value per step]}}
    with metric ``spearman_abs``, ``spearman_signed``, ``ssim`` (NaN where undefined).
    verdicts: {method: {"passes": bool, "decorrelated_at": label or None, ...}}.
    """

    methods: list[str]
    target: int
    probability: float
    steps: list[str]
    units: list[list[str]]
    maps: dict[str, list[torch.Tensor]]
    metrics: dict[str, dict[str, list[float]]]
    verdicts: dict[str, dict]
    verdict_step: int
    layer: str | None


def _signed(r: SaliencyResult) -> torch.Tensor:
    return r.attribution.detach().float().sum(0).cpu()


def sanity_check(model: nn.Module, x: torch.Tensor, methods: Sequence[str] = DEFAULT_METHODS,
                 target: int | None = None, *, layer: str | None = None, seed: int = 0,
                 on_step=None, **kwargs) -> SanityResult:
    """Cascading model-parameter randomization on a copy of ``model``.

    x: one normalised image (1, C, H, W) or (C, H, W). methods: names from
    ``vizcnn.methods.saliency.METHODS``. target: class index (default: the model's top class on
    x, fixed for every step). layer: Grad-CAM's layer (default: the last conv map).
    kwargs go to ``vizcnn.methods.saliency.saliency`` (steps, samples, ...). ``on_step(i, n,
    label)`` is called after each step (progress).
    """
    methods = list(methods)
    if not methods:
        raise BadArgumentError("no saliency methods given")
    for m in methods:
        if m not in METHODS:
            raise BadArgumentError(f"unknown saliency method {m!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise BadArgumentError(f"methods repeat: {', '.join(methods)}")
    x = check_input(x)
    x = x.to(model_device(model, x.device))
    if "gradcam" in methods:
        layer = layer or default_gradcam_layer(model, tuple(x.shape[1:]))
    elif layer is not None:
        raise BadArgumentError("layer applies to gradcam only; add gradcam to the methods")
    first = saliency_all(model, x, methods, target, layer=layer, **kwargs)
    t = first[methods[0]].target
    prob = first[methods[0]].probability
    steps = cascade(model, x)
    if not steps:
        raise BadArgumentError(f"{type(model).__name__} has no parametrised layers to randomise")
    work = copy.deepcopy(model)  # the user's model is never changed
    maps = {m: [first[m].map.detach().float().cpu()] for m in methods}
    signed = {m: [_signed(first[m])] for m in methods}
    for i, (label, paths) in enumerate(steps):
        reinitialise(work, paths, seed + 1 + i)
        now = saliency_all(work, x, methods, t, layer=layer, **kwargs)
        for m in methods:
            maps[m].append(now[m].map.detach().float().cpu())
            signed[m].append(_signed(now[m]))
        if on_step is not None:
            on_step(i + 1, len(steps), label)
    del work
    metrics = {
        "spearman_abs": {m: [spearman(maps[m][0], v) for v in maps[m]] for m in methods},
        "spearman_signed": {m: [spearman(signed[m][0], v) for v in signed[m]] for m in methods},
        "ssim": {m: [ssim(maps[m][0], v) for v in maps[m]] for m in methods},
    }
    n = len(steps)
    k = math.ceil(n / 2)
    labels = ["original", *(label for label, _ in steps)]
    verdicts = {}
    for m in methods:
        rho = metrics[VERDICT_METRIC][m]
        constant_before = bool(signed[m][0].max() == signed[m][0].min())
        below = next((labels[i] for i in range(1, n + 1) if math.isnan(rho[i]) or rho[i] < THRESHOLD), None)
        value = rho[k]
        verdicts[m] = {
            # a map that became constant no longer ranks anything: it changed completely
            "passes": None if constant_before else bool(math.isnan(value) or value < THRESHOLD),
            f"{VERDICT_METRIC}_at_verdict_step": None if math.isnan(value) else value,
            "decorrelated_at": None if constant_before else below,
            "spearman_abs_at_verdict_step": _num(metrics["spearman_abs"][m][k]),
            "ssim_at_verdict_step": _num(metrics["ssim"][m][k]),
            f"{VERDICT_METRIC}_fully_random": _num(rho[-1]),
        }
    return SanityResult(methods, t, prob, labels, [p for _, p in steps], maps, metrics, verdicts, k, layer)


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


__all__ = ["DEFAULT_METHODS", "THRESHOLD", "VERDICT_RULE", "SanityResult", "sanity_check", "cascade",
           "parametrised_units", "reinitialise", "spearman", "ssim", "scaled", "VERDICT_METRIC"]
