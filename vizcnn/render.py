"""Figures. Each function takes tensors/arrays and returns a matplotlib Figure built
without pyplot state; writing files is ``vizcnn.imageio.save_figure``'s job."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure


def as_display(projection: torch.Tensor) -> np.ndarray:
    """A projection (C, H, W) as an H×W×3 image the way the paper shows them:
    contrast-normalised per projection and centred on grey (0 → 0.5)."""
    p = projection.detach().float().cpu()
    scale = p.abs().max().item()
    img = 0.5 + 0.5 * p / scale if scale > 0 else torch.full_like(p, 0.5)
    img = img.permute(1, 2, 0).numpy()
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def _show(ax, img: np.ndarray, title: str | None = None) -> None:
    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def deconv_grid(image: np.ndarray, projections: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]],
                labels: Sequence[str], title: str, *, columns: int = 3) -> Figure:
    """Zeiler & Fergus Fig. 2 for one image: each projection, cropped to its unit's
    receptive field, beside the image patch it came from.

    image: H×W×3 in [0, 1]; projections: (K, C, H, W); boxes: (top, bottom, left, right).
    """
    k = len(projections)
    columns = min(columns, k)
    rows = math.ceil(k / columns)
    fig = Figure(figsize=(2.0 * 2 * columns, 2.1 * rows + 0.5), layout="constrained")
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(rows, 2 * columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    for i in range(k):
        top, bottom, left, right = boxes[i]
        r, c = divmod(i, columns)
        crop = projections[i][:, top:bottom, left:right]
        for j, (img, name) in enumerate(((as_display(crop), labels[i]), (rgb[top:bottom, left:right], "patch"))):
            ax = axes[r, 2 * c + j]
            ax.axis("on")
            _show(ax, img, name)
    return fig
