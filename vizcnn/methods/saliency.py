"""Saliency maps: which pixels of one image the score of one class depends on.

``saliency(model, x, method)`` returns a :class:`SaliencyResult` for one image:

=======================  ==============================================================
method                   what is computed
=======================  ==============================================================
gradient                 Simonyan et al. 2013: ∂ logit_c / ∂ x, the gradient of the
                         *unnormalised* class score (the logit, not the softmax).
deconvnet                Zeiler & Fergus 2014: the same backward with the deconvnet rule
                         R · 1(R > 0) at every ReLU (``vizcnn.core.rules.ReverseRules``).
guided                   Springenberg et al. 2014: guided backprop, R · 1(f > 0) · 1(R > 0).
integrated-gradients     Sundararajan et al. 2017: (x − x₀) · ∫₀¹ ∂ logit_c(x₀ + α(x − x₀)) dα,
                         Gauss–Legendre quadrature with ``steps`` nodes, batched.
smoothgrad               Smilkov et al. 2017: the gradient averaged over ``samples`` copies
                         of x with Gaussian noise of std ``noise`` × (max x − min x).
gradcam                  Selvaraju et al. 2017: ReLU(Σ_k mean_ij(∂ logit_c/∂A_k) · A_k) at a
                         conv layer (the last conv feature map by default), upsampled
                         bilinearly to the input size.
occlusion                Zeiler & Fergus 2014 §4.2, as a saliency map: the drop of the
                         class *probability* when a grey square (the mean colour: zero
                         in normalised space) covers the pixel, averaged over the window
                         positions that cover it (the sweep is ``vizcnn.methods.occlusion``'s).
=======================  ==============================================================

The map (H × W, ≥ 0) is, for every input-space method (gradient, deconvnet, guided,
integrated-gradients, smoothgrad), the maximum over colour channels of the absolute
attribution — Simonyan's rule, applied alike so the maps are comparable. For gradcam
it is the rectified CAM, for occlusion the positive part of the probability drop.

The target is the model's top class unless ``target`` is given. Everything runs on the
model's device; the model is left exactly as it was (modes, requires_grad flags, no
hooks, parameters never written, no parameter gradients), also when an error is raised.

Why not captum for all of them: captum's ``Deconvolution`` and ``GuidedBackprop`` only
hook ``nn.ReLU`` modules, so on torchvision's GoogLeNet (which calls ``F.relu``) they
silently return the plain gradient (checked in tests/test_saliency.py). Here the
reverse rules catch every ReLU call. captum's ``IntegratedGradients`` and
``LayerGradCam`` are correct; the batched versions here compute the same numbers
(also checked in the tests) without parameter gradients or autograd bookkeeping for
the weights.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import BadArgumentError, BadInputError, as_index
from ..core.finite import check_result
from ..core.layers import LayerTap, check_runnable, last_conv_layer, resolve_layer
from ..core.rules import ReverseRules
from ..core.state import model_device, model_dtype, preserved_model
from .deconv import check_input
from .occlusion import DEFAULT_STRIDE, DEFAULT_WINDOW, occlude

METHODS = ("gradient", "deconvnet", "guided", "integrated-gradients", "smoothgrad", "gradcam", "occlusion")

#: What each method's map shows, for colour-bar labels and summary.json.
MAP_UNITS = {
    "gradient": "max over colour of |∂ logit / ∂ pixel|",
    "deconvnet": "max over colour of |deconvnet projection|",
    "guided": "max over colour of |guided backprop|",
    "integrated-gradients": "max over colour of |integrated gradients| (logit units)",
    "smoothgrad": "max over colour of |mean noisy gradient|",
    "gradcam": "ReLU(Grad-CAM) (logit-gradient × activation)",
    "occlusion": "drop in class probability when occluded",
}

#: Rows of input-gradient batches per backward (integrated gradients, SmoothGrad).
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class SaliencyResult:
    """One saliency map of one image.

    map: (H, W) float ≥ 0, on the model's device. attribution: the signed raw result,
    (C, H, W) for input-space methods, (1, H, W) for gradcam (the un-rectified CAM,
    upsampled) and occlusion (the probability drop). target: the class index explained;
    probability: its softmax probability on the unperturbed image. info: method
    details (gradcam's layer, integrated gradients' completeness gap, occlusion window).
    """

    map: torch.Tensor
    attribution: torch.Tensor
    target: int
    probability: float
    method: str
    info: dict = field(default_factory=dict)


def saliency(model: nn.Module, x: torch.Tensor, method: str, target: int | None = None, *,
             layer: str | None = None, steps: int = 50, samples: int = 50, noise: float = 0.15,
             baseline: torch.Tensor | None = None, window: int | None = None, stride: int | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, lrn: str | None = None,
             strict: bool | None = None) -> SaliencyResult:
    """The saliency map of ``method`` for class ``target`` (default: the top prediction).

    x: one normalised image (1, C, H, W) or (C, H, W).
    layer: gradcam's layer (a friendly name, module path or ``path:k``); default
        :func:`default_gradcam_layer`.
    steps: integrated-gradients quadrature nodes. baseline: its x₀, default zeros in
        normalised space, i.e. the training set's mean colour (the same neutral grey
        the occluder uses; a black image would be −mean/std and makes dark regions
        look unimportant by construction).
    samples, noise, seed: SmoothGrad's number of noisy copies, noise std as a fraction
        of the image's value range (Smilkov et al. found 10–20 % best), and the seed of
        the noise (reproducible).
    window, stride: occlusion square and step in pixels (default ≈ 1/7 of the shorter
        side and 1/28 of it for the stride, as ``vizcnn occlusion``: 32 and 8 px at 224²).
    batch_size: images per batched forward/backward for the multi-image methods.
    lrn, strict: the deconvnet's and guided backprop's LRN rule and whether a fallback to
    the gradient (no rectifier caught, activations without a rule) is an error rather
    than an :class:`~vizcnn.core.errors.ActivationWarning`; see :func:`vizcnn.methods.deconv.project`.
    """
    if method not in METHODS:
        raise BadArgumentError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")
    if layer is not None and method != "gradcam":
        raise BadArgumentError(f"layer applies to gradcam only, not to {method}")
    for name, value in (("steps", steps), ("samples", samples), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadArgumentError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise BadArgumentError(f"noise must be a non-negative number, got {noise!r}")
    x = check_input(x)
    check_runnable(model, rules=method in ("deconvnet", "guided"))
    x = x.detach().to(model_device(model, x.device), dtype=model_dtype(model, x.dtype))
    if method == "gradcam":
        layer = layer or default_gradcam_layer(model, tuple(x.shape[1:]))
        resolve_layer(model, layer)  # a bad name fails before any work
    if method == "occlusion":
        occlusion_window(*x.shape[-2:], window, stride)
    with _frozen(model):
        result = _one_method(model, x, method, target, layer, steps, samples, noise, baseline, window, stride,
                             batch_size, seed, lrn, strict)
    direction = "forward" if method == "occlusion" else "backward"
    check_result(result.attribution, f"the {method} saliency map ({direction})", dtype=x.dtype, strict=strict)
    return result


def _one_method(model, x, method, target, layer, steps, samples, noise, baseline, window, stride, batch_size, seed,
                lrn, strict) -> SaliencyResult:
    if method in ("gradient", "deconvnet", "guided"):
        return _reverse(model, x, method, target, lrn, strict)
    if method == "gradcam":
        return _gradcam(model, x, layer, target)
    with torch.no_grad():  # the image (and integrated gradients' baseline) once, for the target
        logits = _forward(model, torch.cat([x, _baseline(x, baseline)]) if method == "integrated-gradients"
                          else x)
    t = _pick(logits[:1], target)
    prob = float(torch.softmax(logits[0].float(), 0)[t])
    if method == "integrated-gradients":
        return _integrated(model, x, t, prob, logits, baseline, steps, batch_size)
    if method == "smoothgrad":
        return _smoothgrad(model, x, t, prob, samples, noise, batch_size, seed)
    return _occlusion(model, x, t, prob, window, stride, batch_size)


# --------------------------------------------------------------------------- helpers


class _frozen:
    """eval mode, no parameter gradients, grad mode on; every flag restored on exit."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.guard = preserved_model(model)

    def __enter__(self):
        self.guard.__enter__()
        self.grad = torch.enable_grad()
        self.grad.__enter__()
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        return self.guard.__exit__(*exc)


def _logits(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):  # GoogLeNet/Inception outputs in train mode
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInputError(f"saliency needs a classifier whose output is (N, classes); this model gives {shape}")
    return out


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        return _logits(model(x))
    except RuntimeError as e:  # shape errors from inputs the model cannot take
        raise BadInputError(f"{type(model).__name__} cannot run on an input of shape {tuple(x.shape[1:])}: "
                            f"{str(e).strip().splitlines()[0][:200]}") from None


def _pick(logits: torch.Tensor, target: int | None) -> int:
    n = logits.shape[1]
    if target is None:
        return int(logits[0].argmax())
    t = as_index(target, "target")
    if not 0 <= t < n:
        raise BadArgumentError(f"target {target!r} out of range: the model has {n} classes (0..{n - 1})")
    return t


def _channel_max(attribution: torch.Tensor) -> torch.Tensor:
    return attribution.abs().amax(dim=0)


def _result(attribution: torch.Tensor, t: int, prob: float, method: str, **info) -> SaliencyResult:
    attribution = attribution.detach()
    m = attribution.clamp_min(0)[0] if attribution.shape[0] == 1 and method in ("gradcam", "occlusion") \
        else _channel_max(attribution)
    return SaliencyResult(m, attribution, t, prob, method, info)


def _batched_grads(model: nn.Module, images: torch.Tensor, t: int, batch_size: int,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_i w_i ∂ logit_t(images_i) / ∂ images_i over the batch, (C, H, W), in chunks."""
    total = torch.zeros_like(images[0])
    for start in range(0, len(images), batch_size):
        leaf = images[start:start + batch_size].detach().requires_grad_(True)
        logits = _forward(model, leaf)[:, t]
        w = weights[start:start + batch_size] if weights is not None else torch.ones_like(logits)
        (g,) = torch.autograd.grad(logits, leaf, w.to(logits.dtype))
        total += g.sum(0)
    return total


# --------------------------------------------------------------------------- methods


def _reverse(model: nn.Module, x: torch.Tensor, method: str, target: int | None, lrn: str | None = None,
             strict: bool | None = None) -> SaliencyResult:
    """One forward and one backward; rectifiers with the method's rule (the plain gradient
    is autograd's own, LRN included)."""
    leaf = x.requires_grad_(True)
    if method == "gradient":
        logits = _forward(model, leaf)
    else:
        rules = ReverseRules(method, lrn=lrn, strict=strict)
        with rules:
            logits = _forward(model, leaf)
        rules.check()
    t = _pick(logits, target)
    (g,) = torch.autograd.grad(logits[0, t], leaf)
    prob = float(torch.softmax(logits[0].detach().float(), 0)[t])
    return _result(g[0], t, prob, method)


def _baseline(x: torch.Tensor, baseline: torch.Tensor | None) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(x)
    if not isinstance(baseline, torch.Tensor):
        raise BadArgumentError(f"baseline must be a tensor, got {type(baseline).__name__}")
    b = baseline.detach().to(x.device, x.dtype)
    b = b.unsqueeze(0) if b.dim() == 3 else b
    if b.shape != x.shape:
        raise BadArgumentError(f"baseline shape {tuple(b.shape)} does not match the input's {tuple(x.shape)}")
    return b


def _integrated(model, x, t, prob, logits, baseline, steps, batch_size) -> SaliencyResult:
    base = _baseline(x, baseline)
    nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]; same rule as captum's default
    alphas = torch.as_tensor((nodes + 1) / 2, dtype=x.dtype, device=x.device)
    w = torch.as_tensor(weights / 2, dtype=x.dtype, device=x.device)
    path = base + alphas.view(-1, 1, 1, 1) * (x - base)
    attribution = (x - base)[0] * _batched_grads(model, path, t, batch_size, w)
    gap = float(logits[0, t] - logits[1, t])
    total = float(attribution.sum())
    return _result(attribution, t, prob, "integrated-gradients", steps=steps,
                   baseline="mean colour (zeros)" if baseline is None else "given",
                   score_difference=gap, attribution_sum=total,
                   completeness_error=abs(total - gap) / max(abs(gap), 1e-12))


def _smoothgrad(model, x, t, prob, samples, noise, batch_size, seed) -> SaliencyResult:
    sigma = noise * float(x.max() - x.min())
    gen = torch.Generator(device=x.device).manual_seed(seed)
    eps = torch.randn((samples, *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
    attribution = _batched_grads(model, x + sigma * eps, t, batch_size) / samples
    return _result(attribution, t, prob, "smoothgrad", samples=samples, noise=noise, sigma=sigma, seed=seed)


def _gradcam(model: nn.Module, x: torch.Tensor, layer: str, target: int | None) -> SaliencyResult:
    path, _ = resolve_layer(model, layer)
    # The layer's output becomes a fresh leaf (the backward stops there: nothing below
    # it is needed) and the rest of the network sees a clone of it, so a later in-place
    # op (ReLU(inplace=True)) cannot change the kept tensor.
    with LayerTap(model, layer, record=lambda _n, t: t.detach().requires_grad_(True),
                  replace=lambda _n, leaf: leaf.clone()) as tap:
        logits = _forward(model, x)
    tap.check()
    act = tap[layer]
    if act.dim() != 4:
        raise BadArgumentError(f"Grad-CAM needs a spatial layer (C, H, W); layer {layer!r} gives "
                               f"{tuple(act.shape[1:])}")
    t = _pick(logits, target)
    (g,) = torch.autograd.grad(logits[0, t], act, allow_unused=True)
    if g is None:
        raise BadArgumentError(f"layer {layer!r} does not feed the class scores")
    cam = (g[0].mean(dim=(1, 2), keepdim=True) * act[0]).sum(0, keepdim=True)  # (1, h, w)
    size = x.shape[-2:]
    up = F.interpolate(cam[None], size=size, mode="bilinear", align_corners=False)[0]
    rect = F.interpolate(cam.clamp_min(0)[None], size=size, mode="bilinear", align_corners=False)[0, 0]
    prob = float(torch.softmax(logits[0].detach().float(), 0)[t])
    return SaliencyResult(rect.detach(), up.detach(), t, prob, "gradcam",
                          {"layer": layer, "module": path, "layer_shape": list(act.shape[1:])})


def occlusion_window(height: int, width: int, window: int | None = None, stride: int | None = None
                     ) -> tuple[int, int]:
    """The occlusion square and stride in pixels: by default those of ``vizcnn occlusion``
    (:data:`vizcnn.methods.occlusion.DEFAULT_WINDOW` and ``DEFAULT_STRIDE`` of the shorter
    side: 32 and 8 px at 224², 25 × 25 positions)."""
    side = min(height, width)
    window = max(1, round(side * DEFAULT_WINDOW)) if window is None else window
    stride = max(1, round(side * DEFAULT_STRIDE)) if stride is None else stride
    for name, v in (("window", window), ("stride", stride)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise BadArgumentError(f"occlusion {name} must be a positive integer, got {v!r}")
    if window > side:
        raise BadArgumentError(f"occlusion window {window} px is larger than the {width}×{height} image")
    return window, stride


def _occlusion(model, x, t, prob, window, stride, batch_size) -> SaliencyResult:
    """The probability drop per window position from ``vizcnn.methods.occlusion`` (the Fig. 7
    engine: batched, incremental on AlexNet/ZFNet/VGG), spread back over the pixels each
    window covers and averaged there (captum's ``Occlusion`` convention, on
    probabilities). Positions follow captum too: when the stride does not divide
    (H − window), the last square is clipped at the bottom/right edge, so every pixel
    is covered."""

    h, w = x.shape[-2:]
    window, stride = occlusion_window(h, w, window, stride)
    r = occlude(model, x, window=window, stride=stride, target=t, batch_size=max(batch_size, 64), projection=False)
    drop = r.drop.to(x.device, torch.float32).flatten()  # (positions,)
    tops = r.tops.tolist()
    lefts = r.lefts.tolist()
    total = torch.zeros((h, w), device=x.device)
    count = torch.zeros((h, w), device=x.device)
    for i, top in enumerate(tops):
        for j, left in enumerate(lefts):
            total[top:top + window, left:left + window] += drop[i * len(lefts) + j]
            count[top:top + window, left:left + window] += 1
    attribution = (total / count.clamp_min(1))[None].to(x.dtype)
    return _result(attribution, t, prob, "occlusion", window=window, stride=stride,
                   positions=len(tops) * len(lefts), engine=r.method)


# --------------------------------------------------------------------------- Grad-CAM layer


def default_gradcam_layer(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> str:
    """The model's last conv feature map, where Grad-CAM is usually taken
    (:func:`vizcnn.core.layers.last_conv_layer`: AlexNet ``conv5``, ResNet ``layer4``,
    GoogLeNet ``inception5b``, LeNet-5 ``act3``)."""
    return last_conv_layer(model, input_size)


# --------------------------------------------------------------------------- several methods


def saliency_all(model: nn.Module, x: torch.Tensor, methods=METHODS, target: int | None = None, *,
                 layer: str | None = None, on_method: Callable[[str, float], None] | None = None,
                 **kwargs) -> dict[str, SaliencyResult]:
    """Each method's result for the same target class (the first method fixes it when
    ``target`` is None). ``on_method(method, seconds)`` is called after each."""
    results: dict[str, SaliencyResult] = {}
    for method in methods:
        start = time.perf_counter()
        r = saliency(model, x, method, target, layer=layer if method == "gradcam" else None, **kwargs)
        if on_method is not None:
            on_method(method, time.perf_counter() - start)
        target = r.target
        results[method] = r
    return results


def map_statistics(m: torch.Tensor) -> dict:
    """Numbers that describe a map: range, mean, the peak's (y, x), and how concentrated
    it is (the share of the map's total in its top 5 % of pixels; 0.05 for a flat map)."""
    m = m.detach().float().cpu()
    flat = m.flatten()
    total = float(flat.sum())
    k = max(1, round(0.05 * flat.numel()))
    peak = int(flat.argmax())
    return {
        "min": float(flat.min()), "max": float(flat.max()), "mean": float(flat.mean()), "std": float(flat.std()),
        "peak_yx": [peak // m.shape[1], peak % m.shape[1]],
        "top5pct_share": float(flat.topk(k).values.sum()) / total if total > 0 else None,
    }


def top_classes(model: nn.Module, x: torch.Tensor, k: int = 5) -> list[tuple[int, float]]:
    """The k most probable classes of one image: [(index, probability)]."""
    x = check_input(x)
    with _frozen(model), torch.no_grad():
        x = x.to(model_device(model, x.device), model_dtype(model, x.dtype))
        p = torch.softmax(_forward(model, x).float()[0], 0)
    values, index = p.topk(min(k, len(p)))
    return [(int(i), float(v)) for i, v in zip(index, values)]


__all__ = ["METHODS", "MAP_UNITS", "SaliencyResult", "saliency", "saliency_all", "default_gradcam_layer",
           "occlusion_window", "map_statistics", "top_classes"]
