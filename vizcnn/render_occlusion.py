"""Figures and report writers for occlusion sensitivity (Fig. 7) and invariance (Fig. 5).

``occlusion_figure`` / ``invariance_figure`` take results and return matplotlib Figures
built without pyplot; ``write_occlusion`` / ``write_invariance`` compute, render and write
a run's PNGs and summary.json (what the CLI commands call).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import ScalarFormatter

from .imageio import save_figure
from .invariance import TRANSFORMS, UNITS, InvarianceResult, invariance_curves
from .occlusion import OcclusionResult, occlude
from .output import OutputDir
from .render import MAX_WIDTH, as_display, figure_title, num, pixel_axes, wrap

#: Classes given their own colour in panel (e); the rest are "other".
LEGEND_CLASSES = 6


def _name(index: int, names: Sequence[str] | None, width: int = 22) -> str:
    if names is not None and 0 <= index < len(names):
        name = names[index]
        return f"{index} {name if len(name) <= width else name[:width - 1] + '…'}"
    return f"class {index}"


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


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
    """A panel title wrapped to a third of the widest figure, so it never runs off the page."""
    ax.set_title(wrap(text, MAX_WIDTH / 3 - 0.6, fontsize), fontsize=fontsize)


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
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    fig = Figure(figsize=(MAX_WIDTH, 8.4), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.06, wspace=0.12, hspace=0.08)
    axes = fig.subplots(2, 3).flat
    n = result.shape[0] * result.shape[1]
    target = _name(result.target, class_names, 30)
    words = _target_words(result, target_label)
    title = figure_title(model_name, weights=weights, layer=result.layer,
                         method=f"occlusion sensitivity (Zeiler & Fergus Fig. 7), {result.method} inference",
                         what=f"grey {result.window[0]}×{result.window[1]} px square, stride {result.stride[0]} px, "
                              f"{result.shape[0]}×{result.shape[1]} = {n} positions")
    fig.suptitle(wrap(title, MAX_WIDTH - 0.4, 10), fontsize=10)
    extent = _extent(result)

    ax = axes[0]
    ax.imshow(rgb, interpolation="nearest")
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
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="tab:orange",
                               linestyle="--", linewidth=1.0))
        _title(ax, f"(c) deconvnet projection of {result.layer} map {result.channel} at (y={result.unit[0]}, "
                     f"x={result.unit[1]})\ndashed: its {bottom - top}×{right - left} px receptive field", fontsize=9)
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
                f"{_name(shown[0], class_names)}\nwins at every position", ha="center", va="center",
                fontsize=9, color="white", bbox={"facecolor": (0, 0, 0, 0.35), "edgecolor": "none"})
    total = labels.size
    handles = [Patch(color=palette[k], label=f"{_name(c, class_names)} ({100 * int((labels == c).sum()) / total:.0f}%)"
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


def occlusion_summary(result: OcclusionResult, class_names: Sequence[str] | None = None) -> dict:
    """The result as plain JSON-ready Python (maps as nested lists, row = occluder top)."""
    i, j = np.unravel_index(int(torch.argmin(result.probability)), result.shape)
    top, bottom, left, right = result.box(i, j)

    def name(c: int) -> str | None:
        return class_names[c] if class_names is not None and 0 <= c < len(class_names) else None

    return {
        "positions": list(result.shape), "window": list(result.window), "stride": list(result.stride),
        "fill": result.fill, "tops": result.tops.tolist(), "lefts": result.lefts.tolist(),
        "layer": result.layer, "strongest_map": result.channel, "strongest_unit": list(result.unit),
        "projection_box": None if result.projection_box is None else dict(zip(("top", "bottom", "left", "right"),
                                                                              result.projection_box)),
        "target": result.target, "target_name": name(result.target),
        "probability_unoccluded": result.probability_clean,
        "top_class_unoccluded": result.clean_class, "top_class_unoccluded_name": name(result.clean_class),
        "top5_unoccluded": [{"class": c, "name": name(c), "probability": p} for c, p in result.clean_top],
        "min_probability": {"value": float(result.probability.min()), "row": int(i), "col": int(j),
                            "box": {"top": top, "bottom": bottom, "left": left, "right": right}},
        "method": result.method, "timings_s": result.timings,
        "maps": {"activation": result.activation.tolist(), "probability": result.probability.tolist(),
                 "top_class": result.top_class.tolist()},
        "top_classes": {str(c): {"name": name(int(c)), "positions": int(k)}
                        for c, k in zip(*np.unique(result.top_class.numpy(), return_counts=True))},
    }


def write_occlusion(out: OutputDir, model, model_name: str, image: np.ndarray, x: torch.Tensor, *,
                    window=None, stride=None, layer: str | None = None, target: int | None = None,
                    incremental: str | bool = "auto", batch_size: int = 64,
                    class_names: Sequence[str] | None = None, extra: dict | None = None) -> dict:
    """``vizcnn occlusion``: occlusion.png (Fig. 7) and summary.json."""
    result = occlude(model, x, window=window, stride=stride, layer=layer, target=target, batch_size=batch_size,
                     incremental=incremental)
    save_figure(occlusion_figure(image, result, model_name=model_name, class_names=class_names,
                                 weights=(extra or {}).get("weights"),
                                 target_label=None if target is None else "target class"),
                out.path("occlusion.png"))
    summary = {"model": model_name, **(extra or {}), "input_size": list(x.shape[1:]),
               **occlusion_summary(result, class_names), "figure": "occlusion.png"}
    return out.finish(summary)


# --------------------------------------------------------------------------- invariance

def _denormalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    img = x.detach().cpu().permute(1, 2, 0).numpy() * np.asarray(std) + np.asarray(mean)
    return _rgb(img)


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
    target = _name(result.target, class_names, 30)
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


def invariance_summary(result: InvarianceResult, class_names: Sequence[str] | None = None) -> dict:
    return {
        "transform": result.transform, "border": result.border, "amounts": result.amounts.tolist(),
        "first_layer": result.first_layer, "last_layer": result.last_layer,
        "distance_first": result.distance_first.tolist(), "distance_last": result.distance_last.tolist(),
        "raw_distance_first": result.raw_first.tolist(), "raw_distance_last": result.raw_last.tolist(),
        "norm_first": result.norm_first, "norm_last": result.norm_last,
        "target": result.target,
        "target_name": class_names[result.target] if class_names and result.target < len(class_names) else None,
        "probability_original": result.probability_clean, "probability": result.probability.tolist(),
        "top_class": result.top_class.tolist(),
    }


def write_invariance(out: OutputDir, model, model_name: str, x: torch.Tensor, *, transforms: Sequence[str] = TRANSFORMS,
                     amounts: Sequence[float] | None = None, target: int | None = None, border: str = "mean",
                     batch_size: int = 64, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                     class_names: Sequence[str] | None = None, extra: dict | None = None) -> dict:
    """``vizcnn invariance``: invariance_<transform>.png per transform and summary.json."""
    results = [invariance_curves(model, x, t, amounts, target=target, border=border, batch_size=batch_size)
               for t in transforms]
    entries = []
    for r in results:
        file = f"invariance_{r.transform}.png"
        save_figure(invariance_figure(r, model_name=model_name, mean=mean, std=std, class_names=class_names,
                                      weights=(extra or {}).get("weights"),
                                      target_label="predicted class" if target is None else "target class"),
                    out.path(file))
        entries.append({**invariance_summary(r, class_names), "file": file})
    summary = {"model": model_name, **(extra or {}), "input_size": list(x.shape[1:]),
               "distance": "Euclidean distance between flattened feature vectors of the original and the "
                           "transformed image, divided by the norm of the original's vector",
               "transforms": entries}
    return out.finish(summary)


__all__ = ["occlusion_figure", "occlusion_summary", "write_occlusion", "invariance_figure", "invariance_summary",
           "write_invariance", "LEGEND_CLASSES"]
