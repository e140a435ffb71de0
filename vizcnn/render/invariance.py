"""Zeiler & Fergus Fig. 5 for one transformation: tensors in, a Figure out."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ..methods.invariance import UNITS, InvarianceResult
from .common import MAX_WIDTH, figure_title, rgb, wrap
from .occlusion import class_name


def _denormalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    img = x.detach().cpu().permute(1, 2, 0).numpy() * np.asarray(std) + np.asarray(mean)
    return rgb(img)


_BORDER_TEXT = {"mean": "dataset mean (grey)", "reflect": "mirrored", "replicate": "edge pixel repeated"}


def _amount(transform: str, a: float) -> str:
    if transform == "translate":
        return "0 px" if a == 0 else f"{a:+g} px"
    return f"×{a:g}" if transform == "scale" else f"{a:g}°"


def invariance_figure(result: InvarianceResult, *, model_name: str, mean: Sequence[float] = (0.0,),
                      std: Sequence[float] = (1.0,), class_names: Sequence[str] | None = None,
                      examples: int = 5, weights: str | None = None, target_label: str = "predicted class") -> Figure:
    """Zeiler & Fergus Fig. 5 for one transformation: a strip of transformed images, then the
    layer-1 distance, the last-hidden-layer distance and the probability of the target
    class (``target_label``: "predicted class" unless the caller chose or knows it) against
    the amount. mean/std undo the input normalisation for the strip."""
    amounts = result.amounts.numpy()
    unit = UNITS[result.transform]
    fig = Figure(figsize=(MAX_WIDTH, 6.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.55])
    picks = np.unique(np.linspace(0, len(amounts) - 1, min(examples, len(amounts))).round().astype(int))
    strip = top.subplots(1, len(picks), squeeze=False)[0]
    for ax, k in zip(strip, picks):
        ax.imshow(_denormalise(result.images[k], mean, std), interpolation="bilinear")
        ax.set_title(_amount(result.transform, float(amounts[k])), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    noun = {"translate": "vertical translation", "scale": "scale", "rotate": "rotation"}[result.transform]
    title = figure_title(model_name, weights=weights,
                         layer=f"{result.first_layer} (first), {result.last_layer} (last hidden)",
                         method=f"invariance to {noun} (Zeiler & Fergus Fig. 5)",
                         what=f"pixels from outside the image: {_BORDER_TEXT[result.border]}")
    top.suptitle(wrap(title, MAX_WIDTH - 0.4, 10), fontsize=10)
    axes = bottom.subplots(1, 3)
    marker = "o" if len(amounts) <= 40 else None
    for ax, values, title in ((axes[0], result.distance_first, f"layer 1 ({result.first_layer})"),
                              (axes[1], result.distance_last, f"last hidden layer ({result.last_layer})")):
        ax.plot(amounts, values.numpy(), marker=marker, markersize=3, color="tab:blue")
        ax.set_title(wrap(f"{title}: distance to the original", 3.6, 9), fontsize=9)
        ax.set_ylabel("‖f(T x) − f(x)‖ / ‖f(x)‖", fontsize=8)
    target = class_name(result.target, class_names, 30)
    ax = axes[2]
    ax.plot(amounts, result.probability.numpy(), marker=marker, markersize=3, color="tab:red")
    ax.axhline(result.probability_clean, color="grey", linewidth=0.8, linestyle="--", label="original image")
    ax.set_title(wrap(f"p({target_label}) = p({target})", 3.6, 9), fontsize=9)
    ax.set_ylabel(f"p({target_label})", fontsize=8)
    ax.set_ylim(0, 1.15 * max(float(result.probability.max()), result.probability_clean))
    ax.legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return fig


__all__ = ["invariance_figure"]
