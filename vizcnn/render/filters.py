"""Figures of a convolution's filters and their spectra: tensors and ``FilterSpectra`` in,
matplotlib Figures built without pyplot out (``vizcnn.writers.filters`` writes them)."""
from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..core.errors import BadArgumentError
from ..methods.spectra import FilterSpectra
from .common import MAX_WIDTH, num, wrap

MAX_SHOWN = 256  # filters drawn per grid; the JSON always has all of them
DB_RANGE = 40.0  # dynamic range of the spectrum panels, dB below each filter's peak


def filter_images(weight: torch.Tensor) -> tuple[np.ndarray, str]:
    """Filters (N, C, kh, kw) as N images (N, kh, kw, 3) in [0, 1], channels last, each
    normalised independently (its own min -> 0, max -> 1, as the paper's panels), and a
    word for what is shown: ``"RGB"`` for 3 input channels (grey when the three are equal, as
    in channel-averaged weights), ``"grey"`` for 1, and for any
    other count ``"strongest input channel"`` (the channel with the largest norm, grey).
    A constant filter is shown mid-grey."""
    w = weight.detach().float().cpu()
    if w.dim() != 4:
        raise BadArgumentError(f"expected filters (N, C, kh, kw), got shape {tuple(w.shape)}")
    c = w.shape[1]
    if c == 3 and bool((w == w[:, :1]).all()):  # channel-averaged (trained on grey): one grey image each
        shown, what = w[:, :1], "grey (its 3 channels are equal)"
    elif c == 3:
        shown, what = w, "RGB"
    elif c == 1:
        shown, what = w, "grey"
    else:
        strongest = w.pow(2).sum(dim=(2, 3)).argmax(dim=1)
        shown, what = w[torch.arange(w.shape[0]), strongest][:, None], "strongest input channel"
    lo = shown.amin(dim=(1, 2, 3), keepdim=True)
    span = shown.amax(dim=(1, 2, 3), keepdim=True) - lo
    img = torch.where(span > 0, (shown - lo) / span.clamp_min(1e-30), torch.full_like(shown, 0.5))
    img = img.permute(0, 2, 3, 1).numpy()
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img, what


def _layout(n: int) -> tuple[int, int]:
    columns = max(1, min(n, math.ceil(math.sqrt(n * 1.5))))
    return columns, math.ceil(n / columns)


def _shown_count(n: int, max_filters: int) -> tuple[int, str]:
    if not isinstance(max_filters, int) or max_filters < 1:
        raise BadArgumentError(f"max_filters must be a positive integer, got {max_filters!r}")
    shown = min(n, max_filters)
    return shown, (f"first {shown} of {n} filters" if shown < n else f"{n} filters")


def _mosaic(tiles: np.ndarray, columns: int, gap: int, fill: float) -> np.ndarray:
    """(N, h, w, ...) tiles -> one image, row-major, ``gap`` pixels of ``fill`` between."""
    n, h, w = tiles.shape[:3]
    rows = math.ceil(n / columns)
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, *tiles.shape[3:]), fill, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[i]
    return out


def _tile_origin(i: int, columns: int, h: int, w: int, gap: int) -> tuple[float, float]:
    """Top-left corner (x, y) of tile i in the mosaic's pixel coordinates."""
    r, c = divmod(i, columns)
    return c * (w + gap) - 0.5, r * (h + gap) - 0.5


def filter_grid(weight: torch.Tensor, title: str, *, flagged: torch.Tensor | None = None,
                max_filters: int = MAX_SHOWN) -> Figure:
    """The filters as images in a grid (Zeiler & Fergus Fig. 6 b/c), numbered row by row
    from 0. ``flagged`` (N,) bool marks filters drawn with a red frame (e.g. the
    dead ones, ``vizcnn.methods.spectra.dead_filters``)."""
    images, what = filter_images(weight)
    n, legend = _shown_count(len(images), max_filters)
    columns, rows = _layout(n)
    h, w = images.shape[1:3]
    gap = max(1, round(max(h, w) / 5))
    mosaic = _mosaic(images[:n], columns, gap, 1.0)
    fig_w = min(MAX_WIDTH, max(7.0, 0.75 * columns + 0.4))
    note = f"{legend} (numbered row by row from 0), {what}, each scaled to its own min–max"
    if flagged is not None and bool(flagged[:n].any()):
        note += f"\nred frame: dead, near-zero or structureless weights ({int(flagged.sum())} of {len(images)})"
    w_all = weight.detach().flatten(1)[:n]
    constant = int((w_all.amax(dim=1) == w_all.amin(dim=1)).sum()) if w_all.numel() else 0
    if constant:
        note += f"\nconstant filters (all weights equal, drawn flat mid-grey): {constant}"
    heading = wrap(f"{title}\n{note}", fig_w - 0.3, 9)
    tile_in = min(0.75, (fig_w - 0.4) / columns)  # the grid shrinks to fit the width
    fig = Figure(figsize=(fig_w, min(16.0, tile_in * rows) + 0.5 + 0.16 * heading.count("\n")),
                 layout="constrained")
    ax = fig.subplots()
    fig.suptitle(heading, fontsize=9)
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    if flagged is not None:
        for i in np.flatnonzero(flagged[:n].cpu().numpy()):
            x, y = _tile_origin(int(i), columns, h, w, gap)
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="red", linewidth=1.2))
    return fig


def spectra_grid(spectra: FilterSpectra, title: str, *, max_filters: int = MAX_SHOWN,
                 db_range: float = DB_RANGE) -> Figure:
    """Each filter's power spectrum, centred (DC in the middle of each tile), in dB below
    its own peak (log scale), with the stride's Nyquist square drawn (the energy outside
    it aliases); tiles numbered row by row. Ticks on the bottom-left tile in cycles/pixel;
    fy grows downwards, as image rows do, so a tile has the orientation of its filter
    image (the peaks lie across the filter's stripes)."""
    if spectra.power is None:
        raise BadArgumentError("these spectra were computed with keep_power=False; nothing to draw")
    power = spectra.power.detach().double().cpu()
    n, legend = _shown_count(power.shape[0], max_filters)
    columns, rows = _layout(n)
    size = power.shape[-1]
    peak = power[:n].flatten(1).amax(dim=1).clamp_min(1e-300)[:, None, None]
    db = (10 * torch.log10(power[:n].clamp_min(1e-300) / peak)).clamp(min=-db_range)
    db[power[:n].flatten(1).amax(dim=1) <= 0] = -db_range
    gap = max(2, size // 8)
    mosaic = np.ma.masked_invalid(_mosaic(db.numpy(), columns, gap, np.nan))
    freq = spectra.freq.cpu().numpy()
    step = float(freq[1] - freq[0]) if len(freq) > 1 else 1.0
    ny, nx = 0.5 / spectra.stride[0], 0.5 / spectra.stride[1]
    fig_w = min(MAX_WIDTH, max(7.5, 1.0 * columns + 1.6))
    box = (f"cyan box: Nyquist of stride {stride_text(spectra.stride)}, |fx| ≤ {nx:g}, |fy| ≤ {ny:g}"
           if spectra.stride != (1, 1) else "stride 1: nothing aliases")
    zero = np.flatnonzero((power[:n].flatten(1).amax(dim=1) <= 0).numpy())
    heading = wrap(f"{title}\npower spectra, dB below each filter's peak ({legend}, numbered row by row)\n"
                   f"{box}\nabove each tile: filter: % of its energy outside the box (aliased)"
                   + (f"\nall-zero filters (no spectrum, drawn black): {', '.join(map(str, zero))}" if len(zero) else ""),
                   fig_w - 0.3, 9)
    tile_in = min(1.0, (fig_w - 1.6) / columns)  # the grid shrinks to fit the width
    fig = Figure(figsize=(fig_w, min(16.0, tile_in * rows) + 1.3 + 0.16 * heading.count("\n")),
                 layout="constrained")
    ax = fig.subplots()
    fig.suptitle(heading, fontsize=9)
    cmap = colormaps["magma"].with_extremes(bad="white")  # the gaps between tiles
    image = ax.imshow(mosaic, cmap=cmap, vmin=-db_range, vmax=0, interpolation="nearest")

    def to_px(f: float) -> float:  # frequency -> pixel offset inside a tile (the image's rows grow downwards)
        return (f - freq[0]) / step

    for i in range(n):
        x0, y0 = _tile_origin(i, columns, size, size, gap)
        if spectra.stride != (1, 1):
            ax.add_patch(Rectangle((x0 + 0.5 + to_px(-nx), y0 + 0.5 + to_px(-ny)), 2 * nx / step, 2 * ny / step,
                                   fill=False, edgecolor="cyan", linewidth=0.7))
        ax.text(x0 + size / 2, y0 - 0.5, f"{i}: {100 * float(spectra.alias_fraction[i]):.0f}%",
                ha="center", va="bottom", fontsize=5.5)
    ax.set_ylim(mosaic.shape[0] - 0.5, -0.5 - gap)  # room for the first row's labels
    x0, y0 = _tile_origin((rows - 1) * columns, columns, size, size, gap)
    ticks = [-0.5, -0.25, 0.0, 0.25] if tile_in >= 0.8 else [-0.25, 0.25]  # small tiles: labels must not touch
    ax.set_xticks([x0 + 0.5 + to_px(f) for f in ticks], [f"{f:g}" for f in ticks], fontsize=6)
    ax.set_yticks([y0 + 0.5 + to_px(f) for f in ticks], [f"{f:g}" for f in ticks], fontsize=6)
    ax.set_xlabel("fx (cycles/pixel); ticks for the bottom-left tile", fontsize=8)
    ax.set_ylabel("fy (cycles/pixel; + is down, as image rows)", fontsize=8)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    bar = fig.colorbar(image, ax=ax, shrink=0.6, aspect=30, pad=0.01)
    bar.set_label("power, dB re the filter's peak", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig


def stride_text(stride: tuple[int, int]) -> str:
    return str(stride[0]) if stride[0] == stride[1] else f"{stride[0]}x{stride[1]}"


def _sorted_panel(ax, title: str, ylabel: str, top: float, n: int, legend: str) -> None:
    """Titles and frames a panel of one bar per filter, sorted."""
    ax.set_title(title, fontsize=8.5)
    ax.set_xlabel("filter (sorted)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, top)
    ax.set_xlim(-0.5, n - 0.5)
    ax.legend(fontsize=7, loc=legend)


def summary_figure(spectra: FilterSpectra, numbers: dict, title: str) -> Figure:
    """(a) histogram of dominant (peak) and mean radial frequencies with the band edges and
    the stride's Nyquist frequency; (b) aliasing fraction per filter, sorted, against the
    white-noise expectation; (c) structure score per filter, sorted, against the noise
    threshold. ``numbers``: the layer's numbers (:func:`vizcnn.methods.spectra.summarize`)."""
    s = spectra
    fig = Figure(figsize=(MAX_WIDTH, 4.8), layout="constrained")
    fig.suptitle(wrap(title, MAX_WIDTH - 0.4, 10), fontsize=10)
    a, b, c = fig.subplots(1, 3)

    bins = np.arange(0, math.sqrt(0.5) + 1 / 32, 1 / 32)
    a.hist(s.peak_frequency.cpu().numpy(), bins=bins, color="tab:blue", alpha=0.75, label="peak (dominant)")
    a.hist(s.mean_frequency.cpu().numpy(), bins=bins, histtype="step", color="black", linewidth=1.2,
           label="power-weighted mean")
    lo, hi = numbers["bands"]["edges"]
    for edge in (lo, hi):
        a.axvline(edge, color="0.4", linestyle="--", linewidth=1)
    ymax = a.get_ylim()[1]
    for x, name in ((lo / 2, "low"), ((lo + hi) / 2, "mid"), ((hi + math.sqrt(0.5)) / 2, "high")):
        a.text(x, ymax * 0.97, name, ha="center", va="top", fontsize=8, color="0.3")
    nyq = 0.5 / max(s.stride)
    a.axvline(nyq, color="red", linewidth=1.5, label=f"Nyquist of stride {max(s.stride)} ({nyq:g})")
    fr = numbers["bands"]["fractions"]
    a.set_title(f"(a) dominant frequency: low {fr['low']:.0%} · mid {fr['mid']:.0%} · high {fr['high']:.0%}"
                f"\nhistogram entropy {num(numbers['frequency_entropy'], 2)} (0 one bin … 1 even)", fontsize=8.5)
    a.set_xlabel("radial frequency (cycles/pixel)")
    a.set_ylabel("filters")
    a.set_xlim(0, math.sqrt(0.5))
    a.legend(fontsize=7, loc="center right")

    alias = torch.sort(s.alias_fraction.cpu(), descending=True).values.numpy()
    rank = np.arange(len(alias))
    b.bar(rank, alias, width=1.0, color="tab:orange")
    noise = numbers["alias_fraction"]["noise_expected"]
    b.axhline(noise, color="black", linestyle="--", linewidth=1, label=f"white noise: 1 − 1/s² = {noise:.3g}")
    af = numbers["alias_fraction"]
    _sorted_panel(b, f"(b) energy outside the Nyquist square, stride {stride_text(s.stride)}\n"
                     f"median {af['median']:.2f} · energy-weighted {af['energy_weighted']:.2f}",
                  "aliased fraction of the filter's energy", 1, len(alias), "lower left")

    order = torch.argsort(s.structure.cpu(), descending=True)
    score = s.structure.cpu()[order].numpy()
    flags = s.structured.cpu()[order].numpy()
    c.bar(rank[flags], score[flags], width=1.0, color="tab:green", label="structured")
    c.bar(rank[~flags], score[~flags], width=1.0, color="tab:red", label="no spatial structure")
    thresholds = torch.unique(1 - s.flatness_threshold / s.noise_flatness.clamp_min(1e-30))
    if len(thresholds) == 1 and float(s.noise_flatness[0]) != 1.0:
        c.axhline(float(thresholds[0]), color="black", linestyle="--", linewidth=1,
                  label=f"noise {100 * (1 - numbers['structure']['noise_quantile']):.0f}th percentile")
    st = numbers["structure"]
    _sorted_panel(c, f"(c) structure = 1 − spectral flatness / noise's\n"
                     f"{st['unstructured']} of {len(s)} filters noise-like (no structure)",
                  "structure score (0 noise … 1 pure tone)", 1.02, len(score), "upper right")
    return fig


__all__ = ["MAX_SHOWN", "DB_RANGE", "filter_grid", "filter_images", "spectra_grid", "summary_figure", "stride_text"]
