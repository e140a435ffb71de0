"""Zeiler & Fergus Fig. 7, occlusion sensitivity: an ``OcclusionResult`` in, a matplotlib
Figure built without pyplot out (``vizcnn.writers.occlusion`` writes it)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import ScalarFormatter

from ..methods.occlusion import OcclusionResult
from .common import MAX_WIDTH, as_display, figure_title, num, pixel_axes, rgb, wrap

#: Classes given their own colour in panel (e); the rest are "other".
LEGEND_CLASSES = 6


def class_name(index: int, names: Sequence[str] | None, width: int = 22) -> str:
    if names is not None and 0 <= index < len(names):
        name = names[index]
        return f"{index} {name if len(name) <= width else name[:width - 1] + '…'}"
    return f"class {index}"


def _extent(result: OcclusionResult) -> list[float]:
    """Each map cell drawn at its occluder's centre, one stride wide, in image pixels."""
    (wh, ww), (sh, sw) = result.window, result.stride
    ys = result.tops.double() + wh / 2
    xs = result.lefts.double() + ww / 2
    return [float(xs[0]) - sw / 2, float(xs[-1]) + sw / 2, float(ys[-1]) + sh / 2, float(ys[0]) - sh / 2]


def _colorbar(fig: Figure, im, ax, label: str) -> None:
    """A colour bar beside ``ax`` (an inset, so every panel keeps the same size), labelled
    with what it measures, its ticks the values themselves (no offset: nearly flat maps
    of an untrained model would otherwise read as "1e-7 + 1.024e-3")."""
    cax = ax.inset_axes((1.03, 0.0, 0.045, 1.0))
    bar = fig.colorbar(im, cax=cax, format=ScalarFormatter(useOffset=False))
    bar.ax.tick_params(labelsize=7)
    bar.set_label(label, fontsize=7, labelpad=2)


def _title(ax, text: str, fontsize: float = 9) -> None:
    """A panel title wrapped to the panel's own width (a third of the widest figure, less
    the colour bar's room), so it never runs off the page nor reaches its edge."""
    ax.set_title(wrap(text, MAX_WIDTH / 3 - 1.1, fontsize), fontsize=fontsize)


def _target_words(result: OcclusionResult, target_label: str | None) -> str:
    if target_label:
        return target_label
    return "predicted class" if result.target == result.clean_class else "target class"


def occlusion_figure(image: np.ndarray, result: OcclusionResult, *, model_name: str,
                     class_names: Sequence[str] | None = None, weights: str | None = None,
                     target_label: str | None = None) -> Figure:
    """Zeiler & Fergus Fig. 7 for one image, as equal square panels in two rows, all in
    the image's pixel frame: (a) the image with the occluder at the position that hurts
    the chosen class most, (b) the total activation of the strongest map of
    ``result.layer``, (c) its deconvnet projection, (d) the probability of the chosen
    class, (e) the most probable class, with a legend of the top classes (or a note that
    one class wins everywhere). Maps (b), (d), (e) draw each cell at its occluder's
    centre. image: H×W×C in [0, 1]. ``target_label`` names the class of (d) ("true
    class" where the caller knows the label; default "predicted class" when it is the
    unoccluded prediction, else "target class")."""
    shown = rgb(image)
    h, w = shown.shape[:2]
    fig = Figure(figsize=(MAX_WIDTH, 8.4), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.06, wspace=0.12, hspace=0.08)
    axes = fig.subplots(2, 3).flat
    n = result.shape[0] * result.shape[1]
    target = class_name(result.target, class_names, 30)
    words = _target_words(result, target_label)
    title = figure_title(model_name, weights=weights, layer=result.layer,
                         method=f"occlusion sensitivity (Zeiler & Fergus Fig. 7), {result.method} inference",
                         what=f"grey {result.window[0]}×{result.window[1]} px square, stride {result.stride[0]} px, "
                              f"{result.shape[0]}×{result.shape[1]} = {n} positions")
    fig.suptitle(wrap(title, MAX_WIDTH - 0.4, 10), fontsize=10)
    extent = _extent(result)

    ax = axes[0]
    ax.imshow(shown, interpolation="nearest")
    i, j = np.unravel_index(int(torch.argmin(result.probability)), result.shape)
    top, bottom, left, right = result.box(i, j)
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, facecolor=(0.5, 0.5, 0.5, 0.85),
                           edgecolor="yellow", linewidth=1.2))
    _title(ax, f"(a) input; occluder where\np({words}) is lowest", fontsize=9)
    pixel_axes(ax, h, w)

    ax = axes[1]
    im = ax.imshow(result.activation.numpy(), extent=extent, cmap="viridis", interpolation="nearest")
    _colorbar(fig, im, ax, f"sum of map {result.channel}'s activations")
    _title(ax, f"(b) {result.layer} map {result.channel}: total activation\n"
                 f"(unoccluded: {num(result.activation_clean)})", fontsize=9)
    pixel_axes(ax, h, w, what="occluder centre ")

    ax = axes[2]
    if result.projection is not None:
        top, bottom, left, right = result.projection_box
        ax.imshow(np.clip(as_display(result.projection), 0, 1), interpolation="nearest")
        # drawn through the centres of the box's edge pixels, above the frame: a receptive field
        # as large as the image would otherwise lie on the axes' own border, unseen
        ax.add_patch(Rectangle((left, top), max(right - left - 1, 0.5), max(bottom - top - 1, 0.5), fill=False,
                               edgecolor="tab:orange", linestyle="--", linewidth=1.6, zorder=5))
        whole = (top, left) == (0, 0) and (bottom, right) == (h, w)
        where = f"the whole {w}×{h} px image" if whole else f"{right - left}×{bottom - top} px"
        _title(ax, f"(c) deconvnet projection of {result.layer} map {result.channel} at (y={result.unit[0]}, "
                     f"x={result.unit[1]})\norange dashes: its receptive field, {where}", fontsize=9)
        pixel_axes(ax, h, w)
        if not bool(result.projection.abs().max() > 0):
            ax.text(w / 2, h / 2, "zero projection:\nthe unit's activation is 0", ha="center", va="center",
                    fontsize=8)
    else:
        ax.axis("off")
        _title(ax, "(c) projection not computed", fontsize=9)

    ax = axes[3]
    im = ax.imshow(result.probability.numpy(), extent=extent, cmap="magma", interpolation="nearest")
    _colorbar(fig, im, ax, f"p({words})")
    _title(ax, f"(d) p({words}) = p({target})\n(unoccluded: {num(result.probability_clean)})", fontsize=9)
    pixel_axes(ax, h, w, what="occluder centre ")

    ax = axes[4]
    labels = result.top_class.numpy()
    classes, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shown = [int(c) for c in classes[order][:LEGEND_CLASSES]]
    palette = list(colormaps["tab10"].colors)
    coded = np.full(labels.shape, len(shown), dtype=int)
    for k, c in enumerate(shown):
        coded[labels == c] = k
    colours = palette[:len(shown)] + [(0.8, 0.8, 0.8)]
    ax.imshow(coded, extent=extent, cmap=ListedColormap(colours),
              norm=BoundaryNorm(np.arange(len(colours) + 1) - 0.5, len(colours)), interpolation="nearest")
    pixel_axes(ax, h, w, what="occluder centre ")
    _title(ax, "(e) most probable class per occluder position", fontsize=9)
    if len(classes) == 1:
        ax.text((extent[0] + extent[1]) / 2, (extent[2] + extent[3]) / 2,
                f"{class_name(shown[0], class_names)}\nwins at every position", ha="center", va="center",
                fontsize=9, color="white", bbox={"facecolor": (0, 0, 0, 0.35), "edgecolor": "none"})
    total = labels.size
    handles = [Patch(color=palette[k], label=f"{class_name(c, class_names)} ({100 * int((labels == c).sum()) / total:.0f}%)"
                     + (" ★" if c == result.target else ""))
               for k, c in enumerate(shown)]
    if len(classes) > len(shown):
        handles.append(Patch(color=(0.8, 0.8, 0.8), label=f"{len(classes) - len(shown)} other classes"))
    key = axes[5]
    key.axis("off")
    one = "\none class wins everywhere:\nno occluder position\nchanges the prediction" if len(classes) == 1 else ""
    key.legend(handles=handles, loc="center left", fontsize=8, frameon=False,
               title=f"(e) classes, % of positions\n★ = the class of panel (d){one}",
               title_fontsize=8, alignment="left")
    return fig


# --------------------------------------------------------------------------- invariance


__all__ = ["occlusion_figure", "class_name", "LEGEND_CLASSES"]
