"""Figures. Each function takes tensors/arrays and returns a matplotlib Figure built
without pyplot state; writing files is ``vizcnn.imageio.save_figure``'s job."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def as_display(projection: torch.Tensor) -> np.ndarray:
    """A projection (C, H, W) as an H×W×3 image the way the paper shows them:
    contrast-normalised per projection and centred on grey (0 → 0.5)."""
    p = projection.detach().float().cpu()
    scale = p.abs().max().item()
    img = 0.5 + 0.5 * p / scale if scale > 0 else torch.full_like(p, 0.5)
    img = img.permute(1, 2, 0).numpy()
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


# Layout of deconv_grid in cell units (one cell = one image): gap between a projection
# and its patch, between pairs, the label band above a pair, and the frame's margin.
_PAIR_GAP, _GAP, _LABEL, _PAD, _MARGIN = 0.06, 0.32, 0.3, 0.04, 0.05
_INCH_PER_CELL = 1.6
_MIN_WIDTH = 6.4  # inches


def deconv_grid(image: np.ndarray, projections: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]],
                labels: Sequence[str], title: str, *, columns: int = 3,
                legend: str = "each pair: projection (grey = 0, contrast-normalised) | image patch under the "
                              "unit's receptive field") -> Figure:
    """Zeiler & Fergus Fig. 2 for one image: each projection, cropped to its unit's
    receptive field, beside the image patch it came from; the pairs framed, each labelled.

    image: H×W×C in [0, 1]; projections: (K, C, H, W); boxes: (top, bottom, left, right);
    labels: one per pair (unit and activation); ``legend``: a second title line.
    All crops share one pixel scale (a crop clipped by the image border is drawn smaller),
    and are drawn in one axes with nearest-neighbour sampling, so small receptive fields
    stay sharp at any dpi and in vector formats.
    """
    k = len(projections)
    columns = max(1, min(columns, k))
    rows = max(1, math.ceil(k / columns))
    pair_w = 2 + _PAIR_GAP
    width = columns * pair_w + (columns - 1) * _GAP + 2 * (_PAD + _MARGIN)
    row_h = 1 + _LABEL + 2 * _PAD
    height = rows * row_h + _MARGIN
    side = max((max(b - t, r - l) for t, b, l, r in boxes), default=1) or 1
    rgb = _rgb(image)

    grid_w = width * _INCH_PER_CELL
    fig_w = max(grid_w, _MIN_WIDTH)  # one or two pairs: room for the title, the grid centred
    heads = [(line, 10, "black") for line in textwrap.wrap(title, int(fig_w / 0.085))]
    heads += [(line, 8, "0.3") for line in textwrap.wrap(legend or "", int(fig_w / 0.068))]
    title_in = 0.14 + sum(0.2 if size == 10 else 0.17 for _, size, _ in heads)
    fig_h = height * _INCH_PER_CELL + title_in
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes(((1 - grid_w / fig_w) / 2, 0, grid_w / fig_w, (fig_h - title_in) / fig_h))
    ax.set_aspect("equal")
    ax.axis("off")
    y = 0.08
    for line, size, colour in heads:
        fig.text(0.5, 1 - y / fig_h, line, ha="center", va="top", fontsize=size, color=colour)
        y += 0.2 if size == 10 else 0.17
    for i in range(k):
        top, bottom, left, right = boxes[i]
        r, c = divmod(i, columns)
        x0 = _MARGIN + _PAD + c * (pair_w + _GAP)
        y0 = r * row_h + _LABEL + _PAD
        crop = projections[i][:, top:bottom, left:right]
        dh, dw = (bottom - top) / side, (right - left) / side
        for j, img in enumerate((as_display(crop), rgb[top:bottom, left:right])):
            cx = x0 + j * (1 + _PAIR_GAP) + (1 - dw) / 2
            cy = y0 + (1 - dh) / 2
            ax.imshow(np.clip(img, 0, 1), extent=(cx, cx + dw, cy + dh, cy), interpolation="nearest")
        ax.add_patch(Rectangle((x0 - _PAD, y0 - _PAD), pair_w + 2 * _PAD, 1 + 2 * _PAD, fill=False,
                               edgecolor="0.7", linewidth=0.8))
        ax.text(x0 + pair_w / 2, y0 - _PAD - 0.04, labels[i], ha="center", va="bottom", fontsize=8)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    return fig
