"""Invariance curves (Zeiler & Fergus 2014, §4 / Fig. 5).

Sweep one transformation of the image (vertical translation, scale, rotation) and
measure, against the amount, how far the feature vectors move at layer 1 (the first
conv feature map) and at the last hidden layer (fc7 in the AlexNet family and ZFNet;
in general the input of the model's output layer), and the probability of the true
class.

Distances: the Euclidean distance between the flattened feature vectors of the
original and the transformed image, divided by the norm of the original's feature
vector (so 1.0 means "moved as far as the vector is long" and layers of different
sizes share an axis). The paper plots an unnormalised "canonical distance"; the raw
distances are in the result too.

Transformations act on the normalised image tensor with a bilinear affine warp about
the image centre (``torch.nn.functional.grid_sample``). Pixels that come from outside
the image take ``border``: ``"mean"`` (0 in normalised space, i.e. the dataset mean,
grey), ``"reflect"`` (mirrored image) or ``"replicate"`` (the edge pixel). The identity
(translation 0, scale 1, rotation 0) returns the image untouched.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import BadArgumentError, as_index
from ..core.layers import LayerTap, check_runnable, conv_layers, friendly_names
from ..core.state import model_device, model_dtype, preserved_model
from .deconv import check_input

#: Default sweeps: vertical translation in px (at 224 px; scaled with the image height),
#: scale factors, rotation in degrees counter-clockwise.
TRANSFORMS = ("translate", "scale", "rotate")
BORDERS = {"mean": "zeros", "reflect": "reflection", "replicate": "border"}
UNITS = {"translate": "vertical translation (px, + = down)", "scale": "scale factor",
         "rotate": "rotation (degrees, counter-clockwise)"}


def default_amounts(transform: str, height: int = 224) -> list[float]:
    """Translation -60..60 px in steps of 10 (scaled to the image height), scale 0.6..1.4 in
    steps of 0.1, rotation 0..350 degrees in steps of 10."""
    if transform == "translate":
        step = max(1, round(10 * height / 224))
        return [float(step * k) for k in range(-6, 7)]
    if transform == "scale":
        return [round(0.6 + 0.1 * k, 2) for k in range(9)]
    if transform == "rotate":
        return [float(10 * k) for k in range(36)]
    raise BadArgumentError(f"unknown transform {transform!r}; choose {', '.join(TRANSFORMS)}")


@dataclass(frozen=True)
class InvarianceResult:
    """One sweep. All tensors are (N,), one entry per amount, on the CPU.

    ``distance_first``/``distance_last``: normalised Euclidean distance (see the module
    docstring) at ``first_layer`` / ``last_layer``; ``raw_first``/``raw_last`` unnormalised;
    ``norm_first``/``norm_last``: the original image's feature-vector norms. ``probability``:
    softmax probability of class ``target``; ``top_class``: the most probable class.
    ``images``: the transformed images (N, C, H, W), normalised as the model's input.
    """

    transform: str
    amounts: torch.Tensor
    border: str
    first_layer: str
    last_layer: str
    distance_first: torch.Tensor
    distance_last: torch.Tensor
    raw_first: torch.Tensor
    raw_last: torch.Tensor
    norm_first: float
    norm_last: float
    target: int
    probability: torch.Tensor
    probability_clean: float
    top_class: torch.Tensor
    images: torch.Tensor


def _identity(transform: str, amount: float) -> bool:
    return amount == (1.0 if transform == "scale" else 0.0) or (transform == "rotate" and amount % 360 == 0)


def transform_images(x: torch.Tensor, transform: str, amounts: Sequence[float], *, border: str = "mean"
                     ) -> torch.Tensor:
    """The image x (1, C, H, W) under each amount of ``transform``: (N, C, H, W).

    translate: vertical shift in px (positive moves the content down); scale: zoom factor
    about the centre (> 1 enlarges); rotate: degrees counter-clockwise about the centre.
    """
    if border not in BORDERS:
        raise BadArgumentError(f"unknown border {border!r}; choose {', '.join(BORDERS)}")
    _, _, h, w = x.shape
    thetas = []
    for a in amounts:
        # The sampling grid maps output pixels to input pixels, in pixel units about the centre.
        if transform == "translate":
            m, t = torch.eye(2, dtype=torch.float64), torch.tensor([0.0, -a], dtype=torch.float64)
        elif transform == "scale":
            m, t = torch.eye(2, dtype=torch.float64) / a, torch.zeros(2, dtype=torch.float64)
        else:
            r = math.radians(a)
            # y points down in images: a counter-clockwise turn on screen samples the input at R(+r) p.
            m = torch.tensor([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]], dtype=torch.float64)
            t = torch.zeros(2, dtype=torch.float64)
        # pixel (x, y) about the centre -> normalised coordinates (align_corners=False): u = 2x / W
        d = torch.diag(torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64))
        theta = torch.cat([d @ m @ torch.linalg.inv(d), (d @ t)[:, None]], dim=1)
        thetas.append(theta)
    # In float64, so that whole-pixel shifts and quarter turns land exactly on pixel centres.
    theta = torch.stack(thetas).to(device=x.device)
    grid = F.affine_grid(theta, [len(amounts), *x.shape[1:]], align_corners=False)
    out = F.grid_sample(x.double().expand(len(amounts), -1, -1, -1), grid, mode="bilinear",
                        padding_mode=BORDERS[border], align_corners=False).to(x.dtype)
    for i, a in enumerate(amounts):
        if _identity(transform, a):
            out[i] = x[0]
    return out


def _last_hidden(model: nn.Module, x: torch.Tensor) -> tuple[str, str]:
    """(label, module path) of the module that produces the model's output: the last leaf
    module with weights of its own to run."""
    def weighted_leaf(m: nn.Module) -> bool:
        return not list(m.children()) and bool(list(m.parameters(False)) or list(m.buffers(False)))

    with preserved_model(model), torch.no_grad(), \
            LayerTap(model, None, inputs=True, record=lambda _n, _t: None, where=weighted_leaf) as tap:
        model.eval()
        model(x)
    if not tap.order:
        raise BadArgumentError(f"{type(model).__name__} has no layer with weights to take the last hidden layer from")
    path = tap.order[-1].partition(":")[0]
    fc = {p: n for n, p in friendly_names(model).items() if n.startswith("fc")}
    if path in fc and fc[path][2:].isdigit() and f"fc{int(fc[path][2:]) - 1}" in friendly_names(model):
        return f"fc{int(fc[path][2:]) - 1}", path
    return f"input of {path}", path


def last_hidden_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """The module that produces the model's output (the last leaf module with weights of its
    own to run) and a label for its input, the last hidden layer: ``fc7`` in the AlexNet
    family and ZFNet (``fc8``'s input), ``input of fc`` elsewhere."""
    label, path = _last_hidden(model, x)
    return label, model.get_submodule(path)


def invariance_curves(model: nn.Module, x: torch.Tensor, transform: str, amounts: Sequence[float] | None = None,
                      *, layers: tuple[str, str] | None = None, target: int | None = None, border: str = "mean",
                      batch_size: int = 64) -> InvarianceResult:
    """Zeiler & Fergus Fig. 5 for one image and one transformation.

    x: one normalised image (1, C, H, W) or (C, H, W). transform: translate | scale |
    rotate. amounts: the sweep (default :func:`default_amounts`). layers: (first, last)
    layer names to compare instead of the defaults (the first conv feature map and the
    last hidden layer); outputs are flattened. target: the "true" class (default: the top
    prediction on the original). border: see :func:`transform_images`. The original and
    all transformed images run together in batches of ``batch_size`` (one forward for the
    default sweeps), forward only, on the model's device; the model is left as it was.
    """
    x = check_input(x)
    if transform not in TRANSFORMS:
        raise BadArgumentError(f"unknown transform {transform!r}; choose {', '.join(TRANSFORMS)}")
    amounts = default_amounts(transform, x.shape[-2]) if amounts is None else list(amounts)
    if not amounts or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
                              for a in amounts):
        raise BadArgumentError(f"amounts must be a non-empty list of finite numbers, got {amounts!r}")
    amounts = [float(a) for a in amounts]
    if transform == "scale" and min(amounts) <= 0:
        raise BadArgumentError(f"scale factors must be positive, got {min(amounts)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    if target is not None:
        target = as_index(target, "target")
        if target < 0:
            raise BadArgumentError(f"target must be a non-negative class index, got {target!r}")
    if border not in BORDERS:
        raise BadArgumentError(f"unknown border {border!r}; choose {', '.join(BORDERS)}")
    check_runnable(model)
    x = x.detach().to(device=model_device(model, x.device), dtype=model_dtype(model, x.dtype))
    # Two taps: (label, layer name, record the module's input instead of its output)
    if layers is None:
        convs = conv_layers(model)
        if not convs:
            raise BadArgumentError(f"{type(model).__name__} has no convolution to take layer 1 from")
        label, path = _last_hidden(model, x)
        taps = [(convs[0], convs[0], False), (label, path, True)]
    else:
        if isinstance(layers, str) or len(layers) != 2:
            raise BadArgumentError(f"layers must be two layer names (first, last), got {layers!r}")
        taps = [(name, name, False) for name in layers]
    images = transform_images(x, transform, amounts, border=border)
    batch = torch.cat([x, images])
    feats: list[list[torch.Tensor]] = [[], []]

    def keeper(k: int):
        def keep(_name: str, t: torch.Tensor) -> torch.Tensor:
            feats[k].append(t.detach().flatten(1).double())
            return t
        return keep

    recorders = [LayerTap(model, name, inputs=use_input, record=keeper(k))
                 for k, (_, name, use_input) in enumerate(taps)]
    logits = []
    with preserved_model(model), torch.no_grad(), recorders[0], recorders[1]:
        model.eval()
        for start in range(0, len(batch), batch_size):
            logits.append(model(batch[start:start + batch_size]).float())
    logits = torch.cat(logits)
    if logits.dim() != 2:
        raise BadArgumentError(f"the model's output must be (N, classes) scores, got {tuple(logits.shape)}")
    for (name, *_), f in zip(taps, feats):
        if sum(len(t) for t in f) != len(batch):
            raise BadArgumentError(f"layer {name!r} did not run in the forward pass")
    probs = logits.softmax(1)
    classes = probs.shape[1]
    if target is not None and target >= classes:
        raise BadArgumentError(f"target {target} out of range: the classifier has classes 0..{classes - 1}")
    target = int(probs[0].argmax()) if target is None else target
    dist = []
    for f in feats:
        f = torch.cat(f)
        raw = (f[1:] - f[0]).norm(dim=1)
        norm = float(f[0].norm())
        dist.append((raw / norm if norm > 0 else raw, raw, norm))
    return InvarianceResult(
        transform=transform, amounts=torch.tensor(amounts, dtype=torch.float64), border=border, first_layer=taps[0][0],
        last_layer=taps[1][0], distance_first=dist[0][0].float().cpu(), distance_last=dist[1][0].float().cpu(),
        raw_first=dist[0][1].float().cpu(), raw_last=dist[1][1].float().cpu(), norm_first=dist[0][2],
        norm_last=dist[1][2], target=target, probability=probs[1:, target].cpu(),
        probability_clean=float(probs[0, target]), top_class=probs[1:].argmax(1).cpu(), images=images.cpu())


__all__ = ["InvarianceResult", "invariance_curves", "transform_images", "default_amounts", "last_hidden_layer",
           "TRANSFORMS", "BORDERS", "UNITS"]
