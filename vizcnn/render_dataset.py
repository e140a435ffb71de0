"""Figures of dataset passes: top-k grids (Zeiler & Fergus Fig. 2) and dead-filter
histograms. Each function returns a matplotlib Figure built without pyplot state."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: (projection H×W×3 in [0, 1], image patch H×W×C in [0, 1], activation value, caption)
Cell = tuple[np.ndarray, np.ndarray, float, str]

_GAP, _PAIR_GAP, _LABEL = 2, 10, 12  # px between projection and patch, between pairs, above a row


def _fit_cell(img: np.ndarray, size: int) -> np.ndarray:
    """Scales an H×W×C image to fit a size×size cell (aspect kept, centred on white)."""
    img = np.clip(img, 0, 1).astype(np.float32)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    h, w = img.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA)
    if img.ndim == 2:
        img = img[:, :, None]
    cell = np.ones((size, size, 3), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    cell[top:top + nh, left:left + nw] = img
    return cell


def topk_page(rows: Sequence[tuple[int, Sequence[Cell | None]]], title: str, *, cell: int | None = None) -> Figure:
    """One page of a layer's top-k grid: a row per unit, in each row k pairs
    (projection | image patch) best first, the activation value above each pair.

    rows: (unit, k cells, None for an empty slot). ``cell``: pixels per image (default
    from the largest patch, 48 to 96).
    """
    k = max((len(c) for _, c in rows), default=1)
    if cell is None:
        largest = max((max(c[1].shape[:2]) for _, cs in rows for c in cs if c is not None), default=64)
        cell = int(min(96, max(48, largest)))
    pair = 2 * cell + _GAP
    width = k * pair + (k - 1) * _PAIR_GAP
    row_h = cell + _LABEL
    height = len(rows) * row_h
    mosaic = np.ones((height, width, 3), dtype=np.float32)
    texts = []
    for r, (_, cells) in enumerate(rows):
        y0 = r * row_h + _LABEL
        for j, c in enumerate(cells):
            x0 = j * (pair + _PAIR_GAP)
            if c is None:
                continue
            proj, patch, value, caption = c
            mosaic[y0:y0 + cell, x0:x0 + cell] = _fit_cell(proj, cell)
            mosaic[y0:y0 + cell, x0 + cell + _GAP:x0 + pair] = _fit_cell(patch, cell)
            texts.append((x0 + pair / 2, y0 - 2, f"{value:.3g} · {caption}"))
    dpi = 100
    fw = max(width / dpi + 0.9, 6.0)  # inches: the mosaic 1:1, room for the row labels and the title
    lines = [part for line in title.splitlines() for part in textwrap.wrap(line, int(fw * 14))]
    margin_t, margin_b = 0.4 + 0.16 * len(lines), 0.1
    fh = height / dpi + margin_t + margin_b
    fig = Figure(figsize=(fw, fh), dpi=dpi)
    left = 0.8 + (fw - 0.9 - width / dpi) / 2
    ax = fig.add_axes((left / fw, margin_b / fh, (width / dpi) / fw, (height / dpi) / fh))
    ax.imshow(mosaic, interpolation="nearest")
    for x, y, text in texts:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=6)
    ax.set_yticks([r * row_h + _LABEL + cell / 2 for r in range(len(rows))], [f"unit {u}" for u, _ in rows],
                  fontsize=8)
    ax.set_xticks([j * (pair + _PAIR_GAP) + pair / 2 for j in range(k)], [f"#{j + 1}" for j in range(k)], fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle("\n".join(lines), fontsize=9, y=1 - 0.05 / fh, va="top")
    return fig


def dead_filter_figure(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, min_firing: float,
                       *, bins: int = 40) -> Figure:
    """Per layer a histogram of the filters' firing fractions (fraction of positions with
    activation > 0), dead filters stacked in red, the firing threshold dashed.

    rows: (layer, firing (C,) in [0, 1], dead (C,) bool).
    """
    n = len(rows)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * nrows + 0.6), layout="constrained")
    fig.suptitle(title, fontsize=9)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    edges = np.linspace(0, 1, bins + 1)
    for ax, (name, firing, dead) in zip(axes.flat, rows):
        firing, dead = np.asarray(firing, dtype=float), np.asarray(dead, dtype=bool)
        ax.hist([firing[~dead], firing[dead]], bins=edges, stacked=True, color=["#4477aa", "#cc3311"],
                label=[f"live ({int((~dead).sum())})", f"dead ({int(dead.sum())})"])
        ax.axvline(min_firing, color="black", linestyle="--", linewidth=0.8, label=f"min firing {min_firing:g}")
        ax.set_title(f"{name}: {int(dead.sum())} of {len(dead)} filters dead ({100 * dead.mean():.1f}%)", fontsize=9)
        ax.set_xlabel("fraction of positions where the filter fires (> 0)", fontsize=8)
        ax.set_ylabel("filters", fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return fig


__all__ = ["topk_page", "dead_filter_figure"]
