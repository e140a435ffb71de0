"""Figures for saliency maps and their sanity checks.

Each function takes tensors/arrays and returns a matplotlib ``Figure`` built without
pyplot state; ``vizcnn.io.imageio.save_figure`` writes it.

Display scaling: gradient-type maps are dominated by a few extreme pixels, so every
map is shown from 0 to its 99.5th percentile (``display_max``) and brighter pixels
saturate; the colour bar of the map figure says so (its top end is open).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from .common import MAX_WIDTH, num, pixel_axes, rgb, wrap

CMAP = "turbo"
#: Percentile of a map shown as full colour.
PERCENTILE = 99.5


def _np(m: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        m = m.detach().float().cpu().numpy()
    return np.asarray(m, dtype=np.float32)


def display_max(m: torch.Tensor | np.ndarray) -> float:
    """The value shown as full colour: the map's 99.5th percentile (its maximum when the
    percentile is 0; 1 for an all-zero map)."""
    a = _np(m)
    top = float(np.percentile(a, PERCENTILE))
    if top <= 0:
        top = float(a.max())
    return top if top > 0 else 1.0


def normalised(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """The map scaled to [0, 1] for display (0 → 0, the 99.5th percentile and above → 1)."""
    return np.clip(_np(m) / display_max(m), 0, 1)


def heatmap(m: torch.Tensor | np.ndarray, cmap: str = CMAP) -> np.ndarray:
    """H×W×3 colour image of a map."""
    return colormaps[cmap](normalised(m))[..., :3].astype(np.float32)


def overlay(image: np.ndarray, m: torch.Tensor | np.ndarray, *, alpha: float = 0.6, cmap: str = CMAP) -> np.ndarray:
    """The map's colours blended over a greyed copy of the image, more opaque where the
    map is strong so the image stays readable where nothing is salient."""
    shown = rgb(image)
    grey = shown.mean(axis=2, keepdims=True) * np.ones((1, 1, 3), dtype=np.float32)
    base = 0.35 * shown + 0.65 * grey  # desaturated, so the colour map's hues read as the map
    n = normalised(m)
    a = (alpha * (0.25 + 0.75 * n))[..., None]
    return np.clip((1 - a) * base + a * heatmap(m, cmap), 0, 1)


def _constant_note(a: np.ndarray) -> str:
    """A caption line for a map that shows nothing (every pixel the same value)."""
    return f"\nthe map is constant ({num(a.max())}) everywhere: nothing is salient" if a.max() == a.min() else ""


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def map_figure(m: torch.Tensor, title: str, label: str, *, cmap: str = CMAP) -> Figure:
    """The map alone, in its own units, with a colour bar (open at the top: values above
    the 99.5th percentile are shown as the top colour)."""
    a = _np(m)
    fig = Figure(figsize=(5.6, 5.2), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(a, cmap=cmap, vmin=0, vmax=display_max(a), interpolation="nearest")
    pixel_axes(ax, *a.shape[:2])
    fig.suptitle(wrap(title + _constant_note(a), 5.3, 9), fontsize=9)
    bar = fig.colorbar(im, ax=ax, shrink=0.85, extend="max" if a.max() > display_max(a) else "neither")
    bar.set_label(wrap(label, 4.0, 8), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig


def overlay_figure(image: np.ndarray, m: torch.Tensor, title: str, *, cmap: str = CMAP) -> Figure:
    """The image and the map overlaid on it, side by side."""
    fig = Figure(figsize=(8.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    axes[0].imshow(rgb(image), interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(overlay(image, m, cmap=cmap), interpolation="nearest")
    axes[1].set_title("saliency overlay", fontsize=9)
    for ax in axes:
        pixel_axes(ax, *rgb(image).shape[:2])
    fig.suptitle(wrap(title + _constant_note(_np(m)), 7.6, 10), fontsize=10)
    _colour_key(fig, axes, cmap)
    return fig


def _colour_key(fig: Figure, axes, cmap: str) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=cmap), ax=axes, shrink=0.7, pad=0.01)
    bar.set_ticks([0, 1], labels=["0", "≥ 99.5th\npercentile"])
    bar.ax.tick_params(labelsize=7)
    bar.set_label("saliency, per map", fontsize=8)


def panel_figure(image: np.ndarray, maps: Mapping[str, torch.Tensor], title: str,
                 subtitles: Mapping[str, str] | None = None, *, cmap: str = CMAP) -> Figure:
    """The image, then each method's map overlaid on it, titled with the method; at most
    four panels a row (rows wrap), pixel axes on the input."""
    n = len(maps) + 1
    columns = min(n, 4)
    rows = -(-n // columns)
    side = 2.3
    fig = Figure(figsize=(side * columns + 1.2, (side + 0.45) * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).flat
    axes[0].imshow(rgb(image), interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    pixel_axes(axes[0], *rgb(image).shape[:2], fontsize=6)
    for ax, (method, m) in zip(axes[1:], maps.items()):
        ax.imshow(overlay(image, m, cmap=cmap), interpolation="nearest")
        sub = (subtitles or {}).get(method)
        blank = " (constant: nothing salient)" if _np(m).max() == _np(m).min() else ""
        ax.set_title(wrap(method + blank + (f"\n{sub}" if sub else ""), side - 0.1, 8), fontsize=8)
        pixel_axes(ax, *rgb(image).shape[:2], fontsize=6, labels=False)
    for ax in axes[n:]:
        ax.axis("off")
    fig.suptitle(wrap(title, side * columns + 0.8, 10), fontsize=10)
    _colour_key(fig, list(axes[:n]), cmap)
    return fig


def sanity_maps_figure(maps: Mapping[str, Sequence[torch.Tensor]], columns: Sequence[str], title: str,
                       image: np.ndarray | None = None, *, notes: Mapping[str, str] | None = None,
                       cmap: str = "gray") -> Figure:
    """Rows = methods, columns = the original map and the map after each cascade step
    (each map scaled to its own 99.5th percentile, as Adebayo et al. show them).
    notes: a second line under each method's row label (its verdict)."""
    methods = list(maps)
    ncol = len(columns) + (image is not None)
    tile = min(1.05, (MAX_WIDTH - 1.8) / ncol)  # many cascade steps: smaller tiles, never wider than the page
    fig_w = tile * ncol + 1.8
    fig = Figure(figsize=(fig_w, (tile + 0.1) * len(methods) + 1.6), layout="constrained")
    axes = fig.subplots(len(methods), ncol, squeeze=False)
    for r, method in enumerate(methods):
        offset = 0
        if image is not None:
            axes[r, 0].imshow(rgb(image), interpolation="nearest")
            offset = 1
            if r == 0:
                axes[r, 0].set_title("input", fontsize=7)
        for c, m in enumerate(maps[method]):
            ax = axes[r, c + offset]
            ax.imshow(normalised(m), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            a = _np(m)
            if a.max() == a.min():  # say so, rather than show a black square
                ax.text(0.5, 0.5, f"constant\n({num(a.max(), 2)})", transform=ax.transAxes, ha="center",
                        va="center", fontsize=6, color="0.8")
            if r == 0:
                long = len(columns[c]) > 9
                ax.set_title(columns[c], fontsize=6.5, rotation=40 if long else 0, ha="left" if long else "center",
                             rotation_mode="anchor")
        note = (notes or {}).get(method)
        axes[r, 0].set_ylabel(method + (f"\n{note}" if note else ""), fontsize=8)
        for ax in axes[r]:
            _off(ax)
    fig.suptitle(wrap(title, fig_w - 0.3, 9), fontsize=9)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=cmap), ax=axes, shrink=0.6, pad=0.01, aspect=30)
    bar.set_ticks([0, 1], labels=["0", "≥ 99.5th\npct."])
    bar.ax.tick_params(labelsize=6)
    bar.set_label("saliency, each map to its own scale", fontsize=7)
    return fig


def sanity_curves_figure(steps: Sequence[str], metrics: Mapping[str, Mapping[str, Sequence[float]]],
                         title: str, *, threshold: float | None = None, threshold_metric: str | None = None,
                         verdict_step: int | None = None,
                         intervals: Mapping[str, Mapping[str, tuple[Sequence, Sequence]]] | None = None) -> Figure:
    """Similarity to the original map against cascade depth, one line per method:
    rank correlation of the absolute maps, of the signed maps, and SSIM.

    steps: x tick labels (``original``, then the layer randomised at each step, top down);
    metrics: {metric name: {method: values, one per step}}; intervals: {metric name:
    {method: (lower bounds, upper bounds)}}, shaded around each line (across images).
    """
    names = list(metrics)
    gaps = any(v is None or (isinstance(v, float) and np.isnan(v))
               for per in metrics.values() for values in per.values() for v in values)
    per_row = len(names) if len(steps) <= 12 else 1  # long cascades: one metric per row, full width
    rows = -(-len(names) // per_row)
    fig_w = min(MAX_WIDTH, max(6.0, 0.42 * len(steps) + 2.5) * per_row / 1.6 + 1.6)
    fig = Figure(figsize=(fig_w, 4.2 * rows), layout="constrained")
    axes = fig.subplots(rows, per_row, squeeze=False).flat
    x = np.arange(len(steps))
    for ax, name in zip(axes, names):
        for method, values in metrics[name].items():
            v = np.array([np.nan if val is None else val for val in values], dtype=float)
            line, = ax.plot(x, v, marker="o", ms=3, label=method)
            band = (intervals or {}).get(name, {}).get(method)
            if band is not None:
                lo, hi = (np.array([np.nan if b is None else b for b in side], dtype=float) for side in band)
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.axhline(0, color="0.6", lw=0.8)
        if threshold is not None and name == threshold_metric:
            ax.axhline(threshold, color="0.3", lw=0.8, ls="--", label=f"pass threshold {threshold}")
        if verdict_step is not None:
            ax.axvline(verdict_step, color="0.3", lw=0.8, ls=":")
        upright = len(steps) > 10  # long cascades: vertical names, so neighbours cannot touch
        ax.set_xticks(x, list(steps), rotation=90 if upright else 60, ha="center" if upright else "right", fontsize=7)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("similarity to the original map", fontsize=8)
        ax.set_title(wrap(name, fig_w / per_row - 0.6, 9), fontsize=9)
        ax.grid(alpha=0.3)
    fig.supxlabel(wrap("cascading randomization: re-initialised down to this layer (from the classifier, "
                       "cumulative)", fig_w - 2.5, 8), fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    legend = fig.legend(handles, labels, fontsize=7, loc="outside right center",
                        title="gaps: the map became constant\n(e.g. all zero), so no ranking" if gaps else None)
    if gaps:
        legend.get_title().set_fontsize(6)
    fig.suptitle(wrap(title, fig_w - 0.3, 9), fontsize=9)
    return fig


__all__ = ["CMAP", "display_max", "normalised", "heatmap", "overlay", "map_figure", "overlay_figure",
           "panel_figure", "sanity_maps_figure", "sanity_curves_figure"]
