"""Figures of dataset passes: top-k grids (Zeiler & Fergus Fig. 2) and dead-filter
histograms. Each function returns a matplotlib Figure built without pyplot state."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ..io.opencv import cv2
from .common import MAX_WIDTH, look_alike, num, wrap

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


def _is_dead(c: Cell) -> bool:
    """A zero-valued winner: the unit did not fire there (any "winner" of a unit that
    never fires is one of these)."""
    return not c[2] > 0


def _never_fire(units: Sequence[int]) -> str:
    """"unit 4 never fires", "2 units never fire: 1 and 4", "3 units never fire: 1, 4 and 7"."""
    if len(units) == 1:
        return f"unit {units[0]} never fires"
    listed = ", ".join(map(str, units[:-1])) + f" and {units[-1]}"
    return f"{len(units)} units never fire: {listed}"


def _label_size(text: str, width_px: float, dpi: float, largest: float = 6.0, smallest: float = 3.5) -> float:
    """The font size (pt) at which ``text`` fits ``width_px`` (a character taken as 0.6 em,
    as :func:`vizcnn.render.common.wrap` does), at most ``largest``, at least ``smallest``."""
    fits = width_px / max(1, len(text)) / 0.6 * 72 / dpi
    return float(min(largest, max(smallest, fits)))


def topk_page(rows: Sequence[tuple[int, Sequence[Cell | None]]], title: str, *, cell: int | None = None) -> Figure:
    """One page of a layer's top-k grid: a row per unit, in each row k pairs
    (projection | image patch) best first, the activation value above each pair.

    rows: (unit, k cells, None for an empty slot). ``cell``: pixels per image (default
    from the largest patch, 48 to 96). Zero-valued winners (the unit does not fire
    there) are labelled "dead (0)" and framed in dashed red, and the title counts them;
    when every projection on the page looks alike the title says so. The page is at
    most ``MAX_WIDTH`` inches wide: wide pages are drawn at a smaller scale.
    """
    k = max((len(c) for _, c in rows), default=1)
    if cell is None:
        largest = max((max(c[1].shape[:2]) for _, cs in rows for c in cs if c is not None), default=64)
        cell = int(min(96, max(48, largest)))
    pair = 2 * cell + _GAP
    width = k * pair + (k - 1) * _PAIR_GAP
    dpi = 100
    scale = min(1.0, (MAX_WIDTH - 0.9) * dpi / width)  # figure px per mosaic px
    label = math.ceil(_LABEL / scale)  # the band above a row stays 12 figure px tall
    row_h = cell + label
    height = len(rows) * row_h
    mosaic = np.ones((height, width, 3), dtype=np.float32)
    texts, frames = [], []
    dead_cells, shown, dead_units = 0, 0, []
    for r, (u, cells) in enumerate(rows):
        y0 = r * row_h + label
        present = [c for c in cells if c is not None]
        if present and all(_is_dead(c) for c in present):
            dead_units.append(u)
        for j, c in enumerate(cells):
            x0 = j * (pair + _PAIR_GAP)
            if c is None:
                continue
            proj, patch, value, caption = c
            shown += 1
            mosaic[y0:y0 + cell, x0:x0 + cell] = _fit_cell(proj, cell)
            mosaic[y0:y0 + cell, x0 + cell + _GAP:x0 + pair] = _fit_cell(patch, cell)
            if _is_dead(c):
                dead_cells += 1
                frames.append((x0, y0))
                texts.append((x0 + pair / 2, y0 - 2 / scale, f"dead (0) · {caption}", "#cc3311"))
            else:
                texts.append((x0 + pair / 2, y0 - 2 / scale, f"{num(value)} · {caption}", "black"))
    notes = []
    if dead_cells:
        notes.append(f"dashed red, \"dead (0)\": {dead_cells} of {shown} winners have activation 0 (the unit does "
                     f"not fire there; its projection is blank)"
                     + (f"; {_never_fire(dead_units)}" if dead_units else ""))
    # receptive fields clipped at the image border give smaller crops: compare full-size ones
    full = max((c[0].shape for _, cs in rows for c in cs if c is not None), default=None, key=lambda s: s[0] * s[1])
    means = [np.mean([c[0] for c in cs if c is not None and not _is_dead(c) and c[0].shape == full], axis=0)
             for _, cs in rows if any(c is not None and not _is_dead(c) and c[0].shape == full for c in cs)]
    if len(means) > 1 and look_alike([torch.from_numpy(np.ascontiguousarray(m.transpose(2, 0, 1))) for m in means]):
        notes.append("the projections of different units look alike (correlation > 0.95): "
                     "they depend little on the unit, as with untrained or weakly trained weights")
    fw = width * scale / dpi + 0.9  # inches: the mosaic, room for the row labels and the title
    fw_fig = max(fw, 6.0)
    heading = wrap(title, fw_fig - 0.2, 9)
    note = wrap("\n".join(notes), fw_fig - 0.2, 7.5) if notes else ""
    lines_t, lines_n = heading.count("\n") + 1, (note.count("\n") + 1 if note else 0)
    margin_t, margin_b = 0.3 + 0.16 * lines_t + 0.14 * lines_n, 0.1
    fh = height * scale / dpi + margin_t + margin_b
    fig = Figure(figsize=(fw_fig, fh), dpi=dpi)
    left = 0.8 + (fw_fig - fw) / 2
    ax = fig.add_axes((left / fw_fig, margin_b / fh, (width * scale / dpi) / fw_fig, (height * scale / dpi) / fh))
    ax.imshow(mosaic, interpolation="nearest" if scale == 1 else "antialiased")
    pair_px = pair * scale  # a label gets its pair's width: the font shrinks to fit the whole name
    for x, y, text, colour in texts:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=_label_size(text, pair_px, dpi), color=colour)
    for x0, y0 in frames:
        ax.add_patch(Rectangle((x0 - 1.5, y0 - 1.5), pair + 2, cell + 2, fill=False, edgecolor="#cc3311",
                               linestyle="--", linewidth=1.0))
    ax.set_yticks([r * row_h + label + cell / 2 for r in range(len(rows))],
                  [f"unit {u}" + ("\n(dead)" if u in dead_units else "") for u, _ in rows], fontsize=8)
    ax.set_xticks([j * (pair + _PAIR_GAP) + pair / 2 for j in range(k)], [f"#{j + 1}" for j in range(k)], fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(heading, fontsize=9, y=1 - 0.05 / fh, va="top")
    if note:
        fig.text(0.5, 1 - (0.08 + 0.16 * lines_t) / fh, note, ha="center", va="top", fontsize=7.5, color="#cc3311"
                 if dead_cells else "0.3")
    return fig


def dead_filter_figure(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, min_firing: float,
                       *, bins: int = 30) -> Figure:
    """Per layer a histogram of the filters' firing fractions (fraction of positions with
    activation > 0) on a log axis, so that the firing threshold (dashed) sits where it
    can be seen; dead filters stacked in red. Filters firing on fewer than a tenth of the
    threshold's share of positions (0 included) get their own bar at the left, labelled
    "< lo", apart from every filter that fires.

    rows: (layer, firing (C,) in [0, 1], dead (C,) bool).
    """
    from matplotlib.ticker import FixedLocator, NullFormatter

    n = len(rows)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(3.9 * cols, 3.0 * nrows + 0.6), layout="constrained")
    fig.suptitle(wrap(title, 3.9 * cols - 0.3, 9), fontsize=9)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    lo = min_firing / 10 if min_firing > 0 else 1e-4
    edges = np.geomspace(lo, 1, bins + 1)
    bar = (lo / 12, lo / 3)  # the "< lo" bar, a decade left of the axis's first bin
    centre = math.sqrt(bar[0] * bar[1])
    decades = [10.0 ** k for k in range(math.ceil(math.log10(lo) - 1e-9), 1)]
    for ax, (name, firing, dead) in zip(axes.flat, rows):
        firing, dead = np.asarray(firing, dtype=float), np.asarray(dead, dtype=bool)
        placed = np.where(firing < lo, centre, firing)
        ax.hist([placed[~dead], placed[dead]], bins=np.concatenate([bar, edges]), stacked=True,
                color=["#4477aa", "#cc3311"],
                label=[f"live ({int((~dead).sum())})", f"dead ({int(dead.sum())})"])
        ax.axvline(min_firing, color="black", linestyle="--", linewidth=1.0, label=f"min firing {min_firing:g}")
        ax.set_xscale("log")
        ax.set_xlim(lo / 20, 1.3)
        ax.xaxis.set_major_locator(FixedLocator([centre, *decades]))
        ax.xaxis.set_major_formatter(lambda v, _pos: f"< {lo:g}" if math.isclose(v, centre) else f"{v:g}")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(wrap(f"{name}: {int(dead.sum())} of {len(dead)} filters dead ({100 * dead.mean():.1f}%)", 3.6, 9),
                     fontsize=9)
        ax.set_xlabel("fraction of positions where it fires (> 0), log scale", fontsize=8)
        ax.set_ylabel("filters", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return fig


__all__ = ["topk_page", "dead_filter_figure"]
