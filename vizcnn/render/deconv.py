"""Zeiler & Fergus Fig. 2 for one image: deconvnet projections beside their image patches."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .common import MAX_WIDTH, as_display, look_alike, rgb, wrap

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
    shown = rgb(image)
    crops = [projections[i][:, t:b, l:r] for i, (t, b, l, r) in enumerate(boxes[:k])]
    blank = [not bool(c.abs().max() > 0) if c.numel() else True for c in crops]
    if any(blank):
        n = sum(blank)
        legend = (f"{legend}\n" if legend else "") + (
            f"{n} of {k} projections are zero (blank grey): nothing reaches the input through those units' "
            "rectifiers, as happens where the activation is 0 or the weights are untrained")
    elif k > 1 and look_alike(crops):
        legend = (f"{legend}\n" if legend else "") + (
            "the projections look alike (correlation > 0.95): they depend little on the unit, as with "
            "untrained or weakly trained weights")

    ipc = min(_INCH_PER_CELL, MAX_WIDTH / width)
    grid_w = width * ipc
    fig_w = max(grid_w, _MIN_WIDTH)  # one or two pairs: room for the title, the grid centred
    heads = [(line, 10, "black") for line in wrap(title, fig_w - 0.2, 10).splitlines()]
    heads += [(line, 8, "0.3") for line in wrap(legend or "", fig_w - 0.2, 8).splitlines()]
    title_in = 0.14 + sum(0.2 if size == 10 else 0.17 for _, size, _ in heads)
    fig_h = height * ipc + title_in
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
        dh, dw = (bottom - top) / side, (right - left) / side
        for j, img in enumerate((as_display(crops[i]), shown[top:bottom, left:right])):
            cx = x0 + j * (1 + _PAIR_GAP) + (1 - dw) / 2
            cy = y0 + (1 - dh) / 2
            ax.imshow(np.clip(img, 0, 1), extent=(cx, cx + dw, cy + dh, cy), interpolation="nearest")
        if blank[i]:
            ax.text(x0 + 0.5, y0 + 0.5, "zero\nprojection", ha="center", va="center", fontsize=7, color="0.15")
        ax.add_patch(Rectangle((x0 - _PAD, y0 - _PAD), pair_w + 2 * _PAD, 1 + 2 * _PAD, fill=False,
                               edgecolor="0.7", linewidth=0.8))
        ax.text(x0 + pair_w / 2, y0 - _PAD - 0.04, labels[i], ha="center", va="bottom", fontsize=7.5,
                linespacing=1.1)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    return fig


__all__ = ["deconv_grid"]
