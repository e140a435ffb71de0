"""Figures. Each function takes tensors/arrays and returns a matplotlib Figure built
without pyplot state; writing files is ``vizcnn.io.imageio.save_figure``'s job.

The figure standard every PNG vizcnn writes follows (the helpers below serve it):
a title naming model, weights, layer and method (:func:`figure_title`); axes in image
pixels wherever positions are shown (:func:`pixel_axes`); colour bars labelled with
what they measure; at most :data:`MAX_WIDTH` inches wide at the default DPI; numbers
without a negative zero (:func:`num`); titles wrapped to the figure (:func:`wrap`).
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch

#: The widest figure vizcnn draws, in inches (at the default 100 dpi: 1200 px).
MAX_WIDTH = 12.0


def num(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, never "-0" (a tiny negative number
    rounds to "0", not "-0")."""
    text = f"{float(value):.{digits}g}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def model_title(model_name: str, weights: str | None = None) -> str:
    """``alexnet (random weights)``, ``alexnet (imagenet weights)``, ``lenet5 (weights
    fashion-mnist)``; the bare name when the weights are not known."""
    if weights in ("random", "imagenet"):
        return f"{model_name} ({weights} weights)"
    return f"{model_name} (weights {weights})" if weights else model_name


def figure_title(model_name: str, *, weights: str | None = None, layer: str | None = None,
                 method: str | None = None, what: str | None = None) -> str:
    """One title line naming model and weights, then layer, method and what is shown,
    joined by " · " (parts left as None are skipped)."""
    parts = [model_title(model_name, weights), layer and f"layer {layer}", method, what]
    return " · ".join(p for p in parts if p)


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped so each line fits ``width_in`` inches at ``fontsize`` points
    (existing line breaks kept; a character is taken as 0.6 em, generous for sans-serif)."""
    chars = max(12, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(part for line in text.splitlines() for part in (textwrap.wrap(line, chars) or [""]))


def pixel_axes(ax, height: int, width: int, *, fontsize: float = 7, labels: bool = True,
               what: str = "") -> None:
    """Image-pixel axes on ``ax`` (origin top left, y down), ticks at whole pixels."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=4, integer=True, min_n_ticks=2))
    ax.tick_params(labelsize=fontsize, length=2, pad=1)
    if labels:
        ax.set_xlabel(f"{what}x (px)".strip(), fontsize=fontsize, labelpad=1)
        ax.set_ylabel(f"{what}y (px)".strip(), fontsize=fontsize, labelpad=1)


def as_display(projection: torch.Tensor) -> np.ndarray:
    """A projection (C, H, W) as an H×W×3 image the way the paper shows them:
    contrast-normalised per projection and centred on grey (0 → 0.5)."""
    p = projection.detach().float().cpu()
    scale = p.abs().max().item()
    img = 0.5 + 0.5 * p / scale if scale > 0 else torch.full_like(p, 0.5)
    img = img.permute(1, 2, 0).numpy()
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def look_alike(images: Sequence[torch.Tensor], threshold: float = 0.95) -> bool:
    """Whether every image correlates above ``threshold`` with the first (resampled to a
    common 16×16 grid first, so crops of different sizes compare)."""
    import torch.nn.functional as F

    flat = []
    for img in images:
        if img.numel() == 0:
            return False
        v = F.interpolate(img.detach().float().cpu()[None], size=(16, 16), mode="area").flatten()
        v = v - v.mean()
        norm = v.norm()
        if norm == 0:
            return False
        flat.append(v / norm)
    return all(float(flat[0] @ v) > threshold for v in flat[1:])


def rgb(image: np.ndarray) -> np.ndarray:
    """An image to draw: float32 clipped to [0, 1], grey (H×W or H×W×1) as three channels."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


__all__ = ["MAX_WIDTH", "num", "model_title", "figure_title", "wrap", "pixel_axes", "as_display", "look_alike", "rgb"]
