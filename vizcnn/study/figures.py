"""The ZFNet study's figures and report.md: the study's summary and results in, Figures
and Markdown out."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure

from .stats import CONTRADICTED, EQUIVALENT, REPRODUCED, fmt, number
from .measure import METRICS
from ..render.common import as_display

if TYPE_CHECKING:
    from .measure import ModelResult


def claims_figure(summary: dict, subtitle: str) -> Figure:
    """The study's main figure: one panel per claim, each design's value per seed (dots)
    and its mean with 95% interval (bar), the verdict in the panel's title."""
    claims = summary["claims"]
    designs = [d["name"] for d in summary["designs"]]
    fig = Figure(figsize=(12, 7.2), layout="constrained")
    fig.suptitle(f"Zeiler & Fergus §4.1 claims, measured: mean and 95% interval ({subtitle})", fontsize=10)
    rows = max(1, -(-len(claims) // 3))
    axes = fig.subplots(rows, 3, squeeze=False).ravel()
    for ax in axes[len(claims):]:
        ax.set_visible(False)
    for ax, claim in zip(axes, claims):
        for j, name in enumerate(designs):
            ci = claim["values"].get(name)
            if ci is None:
                ax.text(j, 0.5, "n/a", ha="center", va="center", transform=ax.get_xaxis_transform(), fontsize=8)
                continue
            values = next(d for d in summary["designs"] if d["name"] == name)["per_seed"]
            points = [v[claim["metric"]] for v in values]
            ax.plot([j + 0.12] * len(points), points, "o", color="0.55", markersize=4,
                    label="one seed" if j == 0 and len(points) > 1 else None)
            err = None if ci["lo"] is None else [[ci["mean"] - ci["lo"]], [ci["hi"] - ci["mean"]]]
            ax.errorbar([j - 0.08], [ci["mean"]], yerr=err, fmt="s", color=f"C{j}", capsize=4, markersize=6,
                        label="mean, 95% CI" if j == 0 else None)
        ax.set_xticks(range(len(designs)), [_wrap(n) for n in designs], fontsize=8)
        ax.set_xlim(-0.6, len(designs) - 0.4)
        ax.set_ylabel(_wrap_label(METRICS[claim["metric"]]), fontsize=7)
        ax.set_title(f"{claim['claim']}:\n{claim['verdict']}", fontsize=9,
                     color=VERDICT_COLOURS.get(claim["verdict"], "0.3"))
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(labelsize=8)
        if ax is axes[0]:
            ax.legend(fontsize=7, loc="best")
    return fig


VERDICT_COLOURS = {REPRODUCED: "tab:green", CONTRADICTED: "tab:red", EQUIVALENT: "tab:blue"}


def _wrap(name: str) -> str:
    return name.replace(" (", "\n(").replace("conv1-", "conv1\n")


def _wrap_label(text: str, width: int = 34) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line])


def curves_figure(results: dict[str, list[ModelResult]]) -> Figure:
    """Training loss and batch accuracy per design: mean over seeds, min–max band."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    seeds = max(len(r) for r in results.values())
    fig.suptitle(f"Training curves ({seeds} seed{'s' if seeds > 1 else ''}: mean, band = min to max over seeds)",
                 fontsize=10)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for j, (name, runs) in enumerate(results.items()):
        steps = runs[0].curves["step"]
        n = min(len(r.curves["step"]) for r in runs)
        for ax, key in ((loss_ax, "loss"), (acc_ax, "train_top1")):
            values = np.array([r.curves[key][:n] for r in runs])
            top1 = np.mean([r.metrics["top1"] for r in runs])
            ax.plot(steps[:n], values.mean(0), color=f"C{j}",
                    label=f"{name} (held-out top-1 {top1:.2f})" if key == "train_top1" else name)
            if len(runs) > 1:
                ax.fill_between(steps[:n], values.min(0), values.max(0), color=f"C{j}", alpha=0.2)
    loss_ax.set(xlabel="training step", ylabel="cross-entropy loss (batch)", title="training loss")
    acc_ax.set(xlabel="training step", ylabel="top-1 accuracy (batch)", title="training accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def frequency_figure(results: dict[str, list[ModelResult]]) -> Figure:
    """Distribution of conv1's dominant frequencies per design (the fraction of filters
    per bin, averaged over seeds), one panel per design on a shared axis so that no
    design's line hides another's, with the bands fixed in advance shaded and each
    design's stride Nyquist frequency dashed."""
    n = len(results)
    fig = Figure(figsize=(min(12, 3.2 * n + 1), 3.6), layout="constrained")
    fig.suptitle("conv1: where the filters' dominant frequencies lie (fraction of filters per 1/16 cycle/px bin, "
                 "mean over seeds)", fontsize=9)
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    for j, (ax, (name, runs)) in enumerate(zip(axes, results.items())):
        hist = runs[0].coverage.get("histogram") or runs[0].conv1_spectra["frequency_histogram"]
        edges = np.array(hist["edges"])
        counts = np.mean([np.array((r.coverage.get("histogram") or r.conv1_spectra["frequency_histogram"])["counts"])
                          / max(1, sum((r.coverage.get("histogram") or r.conv1_spectra["frequency_histogram"])
                                       ["counts"])) for r in runs], 0)
        conv1 = runs[0].conv1
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=f"C{j}", alpha=0.75)
        ax.axvline(0.5 / conv1[1], linestyle="--", color="0.2", lw=1, label=f"Nyquist of stride {conv1[1]}")
        bands = (runs[0].coverage.get("bands") or {}).get("edges") or runs[0].conv1_spectra["bands"]["edges"]
        lo, hi = bands[:2] if len(bands) >= 2 else bands
        ax.axvspan(lo, hi, color="grey", alpha=0.15, label=f"mid band {number(lo, 3)}–{number(hi, 3)}")
        mid = np.mean([r.metrics["mid_fraction"] for r in runs])
        ax.set_title(f"{name} ({conv1[0]}×{conv1[0]}/{conv1[1]})\nmid band: {mid:.2f} of filters, "
                     f"{len(runs)} model{'s' if len(runs) > 1 else ''}", fontsize=8)
        ax.set_xlabel("dominant frequency (cycles/pixel)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.set_ylabel("fraction of conv1 filters", fontsize=8)
            ax.legend(fontsize=6, loc="upper right")
    return fig


def dominance_figure(d: dict) -> Figure:
    """Fig. 6 (a): conv1 without renormalisation against with it — the largest filter's
    norm over the median filter's — and the run's renormalisation counts."""
    curves = d.get("curves") or {}
    fig = Figure(figsize=(7.5 if curves.get("step") else 5.8, 3.4), layout="constrained")
    fig.suptitle(f"Fig. 6 (a): {d['name']}'s conv1 with and without filter renormalisation (seed {d['seed']})",
                 fontsize=9)
    ax, cax = fig.subplots(1, 2) if curves.get("step") else (fig.subplots(), None)
    labels, values = [], []
    for key, label in (("on", "renormalised\n(RMS ≤ 0.1)"), ("off", "not\nrenormalised")):
        if d.get(key) and d[key].get("max_over_median") is not None:
            labels.append(label)
            values.append(d[key]["max_over_median"])
    ax.bar(labels, values, color=["C0", "C3"][:len(values)])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    if values:
        ax.set_ylim(0, 1.15 * max(values))
    ax.set_ylabel("largest conv1 filter norm / median", fontsize=8)
    same = d.get("on") is not None and d.get("on") == d.get("off")
    ax.set_title("renormalisation never fired: the two networks are identical" if same else
                 "one feature dominates when this is large", fontsize=8)
    ax.tick_params(labelsize=7)
    if cax is not None:
        cax.plot(curves["step"], curves["loss"], color="C3", label="not renormalised")
        cax.set(xlabel="training step", ylabel="loss (batch)")
        cax.set_title("training loss without renormalisation", fontsize=8)
        cax.tick_params(labelsize=7)
        cax.grid(alpha=0.3)
    return fig


def evolution_figure(evolutions: dict[str, dict[int, dict[str, torch.Tensor]]], steps: tuple[int, ...]) -> Figure:
    """Fig. 4: rows = (layer, unit), columns = training steps, one block of columns per design."""
    designs = [d for d, snaps in evolutions.items() if snaps]
    keys = list(next(iter(evolutions[designs[0]].values()))) if designs else []
    cols = [(d, s) for d in designs for s in sorted(evolutions[d])]
    width = max(6.5, min(12, 0.9 * len(cols) + 1.2))
    fig = Figure(figsize=(width, 0.9 * max(1, len(keys)) + 1.1), layout="constrained")
    fig.suptitle(_wrap_label("Feature evolution (Fig. 4): each unit's strongest activation over the probe images, "
                             "projected, at training steps (columns) for each design (first seed); 'silent': the "
                             "unit does not fire on any probe image yet", width=int(width * 13)), fontsize=9)
    if not keys or not cols:
        return fig
    axes = fig.subplots(len(keys), len(cols), squeeze=False)
    for i, key in enumerate(keys):
        for j, (design, step) in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            crop = evolutions[design][step].get(key)
            if crop is not None and crop.numel() and crop.abs().max() > 0:
                ax.imshow(as_display(crop), interpolation="nearest")
            else:  # the unit is silent on every probe image at this step: nothing to project
                ax.text(0.5, 0.5, "silent", ha="center", va="center", fontsize=6, color="0.4",
                        transform=ax.transAxes)
            if i == 0:
                ax.set_title(f"{design}\nstep {step}", fontsize=6)
            if j == 0:
                layer, unit = key.split(":")
                ax.set_ylabel(f"{layer}\nunit {unit}", fontsize=7, rotation=0, ha="right", va="center")
    return fig


def markdown_table(summary: dict) -> str:
    """Every number per design as ``mean [95% CI]``."""
    names = [d["name"] for d in summary["designs"]]
    lines = ["| measure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for d_metric in METRICS:
        cells = []
        for d in summary["designs"]:
            ci = d["metrics"][d_metric]
            cells.append("n/a" if ci is None else fmt(ci))
        lines.append(f"| {METRICS[d_metric]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_markdown(summary: dict) -> str:
    lines = ["| claim (paper) | " + " | ".join(d["name"] for d in summary["designs"]) +
             " | difference, paper's direction > 0 | verdict | seeds the effect needs |",
             "|---" * (len(summary["designs"]) + 4) + "|"]
    for c in summary["claims"]:
        values = [("n/a" if c["values"][d["name"]] is None else fmt(c["values"][d["name"]]))
                  for d in summary["designs"]]
        diff = "n/a" if c["difference"] is None else f"{fmt(c['difference'])} ({c.get('difference_of', '')})"
        need = c.get("seeds_needed")
        lines.append(f"| **{c['claim']}**: {c['paper']} | " + " | ".join(values) +
                     f" | {diff} | {c['verdict']}: {c.get('why', '')} | {'—' if need is None else need} |")
    return "\n".join(lines)


def factorial_markdown(summary: dict) -> str:
    effects = summary.get("factorial")
    if not effects:
        return "The 2×2 factorial (11/4, 7/2, 11/2, 7/4) was not run, so kernel size and stride are not separated."
    lines = ["| measure | kernel 11 − 7 | stride 4 − 2 | interaction |", "|---|---|---|---|"]
    for m, e in effects.items():
        lines.append(f"| {METRICS[m]} | " + " | ".join(fmt(e[k]) for k in ("kernel 11 − 7", "stride 4 − 2",
                                                                             "interaction")) + " |")
    return "\n".join(lines)


def _data_line(summary: dict) -> str:
    data = summary["data"]
    if isinstance(data, dict):  # --trained: one line per model
        return "Data, per model:\n" + "\n".join(f"- `{k}`: {v}" for k, v in data.items())
    out = f"Data: {data}."
    ny = summary.get("data_outside_nyquist")
    if ny:
        out += " The data's own energy outside each stride's Nyquist square: " + ", ".join(
            f"{k} {v:.3f}" for k, v in ny.items()) + "."
    return out


def report_markdown(summary: dict) -> str:
    if "preset" in summary:
        p = summary["preset"]
        head = (f"Recipe: {p['optimizer']} lr {p['lr']} (momentum {p['momentum']}, linear warm-up over "
                f"{p['warmup']:.0%} of the steps, ×0.1 for the last quarter, gradient norm clipped at {p['clip']}), "
                f"batch {p['batch']}, {p['steps']} steps per model, weight decay {p['weight_decay']}, dropout 0.5 "
                f"on fc6/fc7, conv1 init N(0, {p['conv1_init_std']}²), body He-normal, biases 0, filter "
                f"renormalisation to RMS 0.1: {'on' if p['renorm'] else 'off'}; input {p['size']}px, conv1/conv2 "
                f"widths {p['channels'][0]}/{p['channels'][1]}. Seeds {summary['seeds']}: seed i fixes each "
                f"layer's initial weights (bit-identical for identically shaped layers of every design), the data "
                f"order and dropout.")
        title = f"`{p['name']}` preset"
        renorm = [f"{d['name']}: " + ", ".join(str(r["curves"].get("rescaled_total", 0)) for r in d["per_seed"])
                  for d in summary["designs"]]
        extra = "Filters renormalised over the whole run, per seed: " + "; ".join(renorm) + "."
        off = summary.get("renormalisation_off")
        fired = sum(r["curves"].get("rescaled_total", 0) for d in summary["designs"] for r in d["per_seed"])
        if off and off.get("off") and off.get("on") and fired == 0 and off["off"] == off["on"]:
            extra += (f"\n\nFig. 6 (a) is **not testable** at this scale: renormalisation never fired in any network "
                      f"(no conv filter's RMS reached 0.1; conv1's largest was {off['on']['rms_max']:.3f}), so "
                      f"{off['name']} trained without it is the same network, bit for bit (largest conv1 filter norm "
                      f"{off['off']['max_over_median']:.2f}× the median in both).")
        elif off and off.get("off") and off.get("on"):
            extra += (f"\n\nFig. 6 (a): without renormalisation, {off['name']}'s largest conv1 filter norm is "
                      f"{off['off']['max_over_median']:.1f}× the median filter's (with it: "
                      f"{off['on']['max_over_median']:.1f}×); its top filter holds {off['off']['top_share']:.2f} of the "
                      f"layer's squared norm (with it: {off['on']['top_share']:.2f}). See `fig6a_renormalisation.png`.")
    else:
        title = "models trained elsewhere"
        head = "Models: " + ", ".join(f"`{t}`" for t in summary["trained"]) + " (no training)."
        extra = ""
    return f"""# ZFNet first-layer study: {title}

{_data_line(summary)}

{head}
Device {summary['device']}; {summary['machine']}; torch {summary['torch']}; wall time {summary['wall_seconds']} s.
Intervals: {summary['intervals']}.

## Claims

{claims_markdown(summary)}

A verdict reads the 95% interval of the difference, signed so that positive is the paper's direction: *reproduced*
when it lies above 0, *contradicted* when it lies below 0, *equivalent within the margin* when it lies inside a
margin stated in advance (accuracy: ±1 point), *not testable* when the phenomenon is absent from every network,
the differences have no variance or a network learned too little (held-out top-1 under twice chance), and
*inconclusive* otherwise. "Seeds the effect needs": how many seeds the observed mean difference and spread would need
for the interval to exclude 0 four times in five.

## The 2×2 factorial: kernel size and stride, separated

{factorial_markdown(summary)}

Main effects paired by seed: "kernel 11 − 7" averages 11/4 and 11/2 against 7/4 and 7/2; "stride 4 − 2" averages
11/4 and 7/4 against 11/2 and 7/2.

## Renormalisation

{extra}

## Every number

{markdown_table(summary)}

Files: `claims.png` (the claims, per seed), `fig6_conv1_*.png` (Fig. 6 b/c), `fig6_layer2_top9_*.png` (Fig. 6 d/e),
`fig6a_renormalisation.png` (Fig. 6 a), `conv1_frequencies.png`, `fig4_evolution.png`, `training_curves.png`,
`summary.json` (every number, per seed).
"""


__all__ = ["claims_figure", "curves_figure", "frequency_figure", "dominance_figure", "evolution_figure",
           "markdown_table", "claims_markdown", "factorial_markdown", "report_markdown"]
