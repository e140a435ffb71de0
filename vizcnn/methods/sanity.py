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

Verdict rule (``VERDICT_RULE``), over several images (one verdict from one image, one
layer and one threshold flips on noise): at each cascade step, the *signed* rank
correlation with the original map across images, as a mean with its 95% Student-t
interval. The correlation counts by its size, |ρ|: randomising the classifier often
flips a gradient map's sign whole (ρ ≈ −0.99 on the shipped AlexNet: the same structure
read out with the other sign), which is no change in what the map shows. Over the steps
that re-initialise the top half of the units (⌈n/2⌉ steps: the
classifier and the upper layers) a method **passes** once the whole interval lies below
0.5 (its maps depend on what those layers learned; ``decorrelated_at`` names that step),
**fails** when the interval stays at or above 0.5 at every one of those steps, and is
**inconclusive** otherwise (or with one image: no interval). The signed correlation decides
because the absolute maps of any network of a given architecture share structure that
has nothing to do with its weights (conv1's stride grid, the zero-padded border): on
seeded random AlexNets the |gradient| of two unrelated weight draws correlates at
ρ ≈ 0.45–0.6; the signed maps have no such floor (≈ 0 for the gradient). Adebayo et al.
found gradients and Grad-CAM pass and guided backprop fail (it stays similar until the
lowest layers are randomized). A method whose original attribution is constant on an
image leaves that image out of its intervals (no verdict when it is constant on all).
Quantus's model-parameter-randomisation test was considered as a reference and left out:
``pip install quantus`` pulls opencv-python beside this project's opencv-python-headless
(two packages writing one ``cv2``), pandas, scikit-learn and scikit-image.
"""
from __future__ import annotations

import copy
import functools
import math
from collections import OrderedDict
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
PASSES, FAILS, INCONCLUSIVE = "passes", "fails", "inconclusive"
VERDICT_RULE = ("the absolute Spearman rank correlation of the signed attribution (summed over colour channels) "
                "with the original (a map that only flips sign is unchanged), across images: its mean with a 95% "
                "Student-t interval at each step of the cascade; "
                "over the steps that re-initialise the top half of the parametrised layers (ceil(n/2), from the "
                f"classifier down) a method passes once the whole interval is below {THRESHOLD}, fails when it "
                f"stays at or above {THRESHOLD} at every one of them, and is inconclusive otherwise (or with one "
                "image: no interval)")
DEFAULT_METHODS = ("gradient", "guided", "deconvnet", "integrated-gradients", "smoothgrad", "gradcam")


# --------------------------------------------------------------------------- metrics


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of a 1-D tensor, ties given their average rank."""
    v = v.detach().double().flatten()
    order = torch.argsort(v, stable=True)
    sorted_v = v[order]
    starts = torch.ones_like(sorted_v, dtype=torch.bool)
    starts[1:] = sorted_v[1:] != sorted_v[:-1]
    group = torch.cumsum(starts, 0) - 1  # each sorted position's run of equal values
    first = starts.nonzero().flatten()
    counts = torch.diff(first, append=torch.tensor([len(v)]))
    ranks = torch.empty_like(v)
    ranks[order] = (first + (counts - 1) / 2).double()[group]  # mean of the run's positions
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
    """The 1-D normalised Gaussian; the 2-D window is its outer product."""
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    return g / g.sum()


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
    g = _gaussian(window, sigma)

    def blur(t: torch.Tensor) -> torch.Tensor:  # the 2-D Gaussian is separable: two 1-D passes, all five maps
        return F.conv2d(F.conv2d(t, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my, xx, yy, xy = blur(torch.cat([x, y, x * x, y * y, x * y]).view(5, 1, *x.shape[-2:])).unbind(0)
    sxx = xx - mx ** 2
    syy = yy - my ** 2
    sxy = xy - mx * my
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
    """Per method, the maps and their similarity to the original along the cascade, for
    each image, and the verdict read from the interval across images.

    steps: ``original`` then the label of the unit re-initialised at each step (cumulative).
    targets/probabilities: per image, the class explained (fixed along the cascade) and
    its probability. maps: {method: [[H×W map per step] per image]} (CPU).
    metrics: {metric: {method: [[value per step] per image]}} with metric ``spearman_abs``,
    ``spearman_signed``, ``ssim`` (NaN where undefined). curves: {metric: {method: [interval
    per step]}}, each interval a dict (mean, lo, hi, n) across images (for the verdict
    metric, of |ρ|). verdicts: {method:
    {"verdict": passes | fails | inconclusive, "passes": True/False/None, "decorrelated_at":
    the first step whose interval lies below the threshold, the intervals at the verdict
    step, ...}}. verdict_step: the last step of the top half of the cascade.
    """

    methods: list[str]
    targets: list[int]
    probabilities: list[float]
    steps: list[str]
    units: list[list[str]]
    maps: dict[str, list[list[torch.Tensor]]]
    metrics: dict[str, dict[str, list[list[float]]]]
    curves: dict[str, dict[str, list[dict]]]
    verdicts: dict[str, dict]
    verdict_step: int
    layer: str | None

    @property
    def target(self) -> int:
        """The first image's class (one image: the class)."""
        return self.targets[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]


def _signed(r: SaliencyResult) -> torch.Tensor:
    return r.attribution.detach().float().sum(0).cpu()


def _images(x) -> list[torch.Tensor]:
    """One image (C, H, W) / (1, C, H, W), a batch (N, C, H, W) or a list of images: each
    as (1, C, H, W)."""
    if isinstance(x, (list, tuple)):
        out = [check_input(i) for i in x]
    elif isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] > 1:
        out = [check_input(i) for i in x]
    else:
        out = [check_input(x)]
    if not out:
        raise BadArgumentError("no images given")
    if len({tuple(i.shape) for i in out}) > 1:
        raise BadArgumentError(f"images differ in size: {sorted({tuple(i.shape[1:]) for i in out})}")
    return out


def _work_copy(model: nn.Module) -> nn.Module:
    """The copy the cascade randomises: the user's model with its own hooks left out (a
    hook that holds a lock cannot be copied, and a user's recorder should not see the
    random models); a model that still cannot be copied is a one-line error."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks, m._backward_hooks) for m in model.modules()]
    try:
        for m, *_ in saved:
            m._forward_hooks, m._forward_pre_hooks, m._backward_hooks = OrderedDict(), OrderedDict(), OrderedDict()
        return copy.deepcopy(model)
    except (TypeError, copy.Error, RuntimeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise BadArgumentError(f"{type(model).__name__} cannot be copied for the randomization cascade "
                               f"({reason}); the sanity check never randomises the user's own model") from None
    finally:
        for m, fh, fph, bh in saved:
            m._forward_hooks, m._forward_pre_hooks, m._backward_hooks = fh, fph, bh


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (0.5 < p < 1, df ≥ 1), by bisection on the CDF integrated
    numerically (Simpson, 2,000 intervals on the substitution t = tan θ, exact to ~1e-9)."""
    if not 0.5 < p < 1 or df < 1:
        raise BadArgumentError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:  # ∫_0^t f = ∫_0^atan(t) f(tan θ) sec²θ dθ, smooth on a bounded range
        top, n = math.atan(t), 2000
        h = top / n
        total = 0.0
        for i in range(n + 1):
            th = i * h
            v = math.exp(log_c - (df + 1) / 2 * math.log1p(math.tan(th) ** 2 / df)) / math.cos(th) ** 2
            total += v * (1 if i in (0, n) else 4 if i % 2 else 2)
        return 0.5 + total * h / 3

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def interval(values: Sequence[float]) -> dict:
    """Mean of the finite ``values`` with its 95% Student-t interval across them, clipped
    to [-1, 1] (they are correlations); no interval (lo = hi = None) for fewer than two."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    n = len(v)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m = min(1.0, max(-1.0, sum(v) / n))  # rounding can put a mean of ones at 1 + 2e-16
    if n < 2:
        return {"mean": m, "lo": None, "hi": None, "n": 1}
    half = t_quantile(0.975, n - 1) * math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1)) / math.sqrt(n)
    return {"mean": m, "lo": max(-1.0, m - half), "hi": min(1.0, m + half), "n": n}


def verdict(top: Sequence[dict]) -> tuple[str, int | None]:
    """(passes | fails | inconclusive, the first step whose interval lies wholly below
    ``THRESHOLD`` or None) from the intervals of the top-half steps (see ``VERDICT_RULE``)."""
    if not top or any(c["lo"] is None for c in top):
        return INCONCLUSIVE, None
    first = next((i for i, c in enumerate(top) if c["hi"] < THRESHOLD), None)
    if first is not None:
        return PASSES, first
    if all(c["lo"] >= THRESHOLD for c in top):
        return FAILS, None
    return INCONCLUSIVE, None


def sanity_check(model: nn.Module, x, methods: Sequence[str] = DEFAULT_METHODS,
                 target: int | None = None, *, layer: str | None = None, seed: int = 0,
                 on_step=None, **kwargs) -> SanityResult:
    """Cascading model-parameter randomization on a copy of ``model``, over one or
    several images.

    x: normalised images: one (1, C, H, W) or (C, H, W), a batch (N, C, H, W) or a list.
    methods: names from ``vizcnn.methods.saliency.METHODS``. target: class index for every
    image (default: the model's top class on each image, fixed for every step). layer:
    Grad-CAM's layer (default: the last conv map). kwargs go to
    ``vizcnn.methods.saliency.saliency`` (steps, samples, ...). ``on_step(i, n, label)`` is
    called after each step (progress). Each step re-initialises the copy once, and every
    image is explained by that same random model.
    """
    methods = list(methods)
    if not methods:
        raise BadArgumentError("no saliency methods given")
    for m in methods:
        if m not in METHODS:
            raise BadArgumentError(f"unknown saliency method {m!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise BadArgumentError(f"methods repeat: {', '.join(methods)}")
    xs = [i.to(model_device(model, i.device)) for i in _images(x)]
    if "gradcam" in methods:
        layer = layer or default_gradcam_layer(model, tuple(xs[0].shape[1:]))
    elif layer is not None:
        raise BadArgumentError("layer applies to gradcam only; add gradcam to the methods")
    firsts = [saliency_all(model, xi, methods, target, layer=layer, **kwargs) for xi in xs]
    targets = [f[methods[0]].target for f in firsts]
    probs = [f[methods[0]].probability for f in firsts]
    steps = cascade(model, xs[0])
    if not steps:
        raise BadArgumentError(f"{type(model).__name__} has no parametrised layers to randomise")
    work = _work_copy(model)  # the user's model is never changed
    maps = {m: [[f[m].map.detach().float().cpu()] for f in firsts] for m in methods}
    signed = {m: [[_signed(f[m])] for f in firsts] for m in methods}
    for i, (label, paths) in enumerate(steps):
        reinitialise(work, paths, seed + 1 + i)
        for j, xi in enumerate(xs):
            now = saliency_all(work, xi, methods, targets[j], layer=layer, **kwargs)
            for m in methods:
                maps[m][j].append(now[m].map.detach().float().cpu())
                signed[m][j].append(_signed(now[m]))
        if on_step is not None:
            on_step(i + 1, len(steps), label)
    del work
    metrics = {
        "spearman_abs": {m: [[spearman(mp[0], v) for v in mp] for mp in maps[m]] for m in methods},
        "spearman_signed": {m: [[spearman(sg[0], v) for v in sg] for sg in signed[m]] for m in methods},
        "ssim": {m: [[ssim(mp[0], v) for v in mp] for mp in maps[m]] for m in methods},
    }
    n = len(steps)
    k = math.ceil(n / 2)
    curves = {name: {m: [interval([per[s] for per in rows]) for s in range(n + 1)] for m, rows in per_m.items()}
              for name, per_m in metrics.items()}
    labels = ["original", *(label for label, _ in steps)]
    verdicts = {}
    for m in methods:
        # a map that became constant no longer ranks anything: it changed completely (ρ = 0);
        # an image whose original map is constant has nothing to compare and is left out
        live = [not bool(sg[0].max() == sg[0].min()) for sg in signed[m]]
        rho = [[0.0 if math.isnan(v) else abs(v) for v in row] for row, ok in zip(metrics[VERDICT_METRIC][m], live)
               if ok]
        curve = [interval([row[s] for row in rho]) for s in range(n + 1)]
        curves[VERDICT_METRIC][m] = curve
        said, first = verdict(curve[1:k + 1])
        verdicts[m] = {
            "verdict": said if rho else "no verdict",
            "passes": {PASSES: True, FAILS: False}.get(said) if rho else None,
            "decorrelated_at": labels[first + 1] if first is not None else None,
            "images": len(rho), "constant_originals": live.count(False),
            f"{VERDICT_METRIC}_at_verdict_step": curve[k],
            "spearman_abs_at_verdict_step": curves["spearman_abs"][m][k],
            "ssim_at_verdict_step": curves["ssim"][m][k],
            f"{VERDICT_METRIC}_fully_random": curve[-1],
        }
    return SanityResult(methods, targets, probs, labels, [p for _, p in steps], maps, metrics, curves, verdicts,
                        k, layer)


__all__ = ["DEFAULT_METHODS", "THRESHOLD", "VERDICT_RULE", "SanityResult", "sanity_check", "cascade",
           "parametrised_units", "reinitialise", "spearman", "ssim", "scaled", "VERDICT_METRIC", "interval",
           "t_quantile", "verdict", "PASSES", "FAILS", "INCONCLUSIVE"]
