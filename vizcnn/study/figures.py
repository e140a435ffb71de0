"""The ZFNet study's figures and report.md: the study's summary and results in, Figures
and Markdown out."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure

from .stats import NOT_REPRODUCED, REPRODUCED, fmt
from .measure import METRICS
from ..render.common import as_display

if TYPE_CHECKING:
    from .measure import ModelResult


def claims_figure(summary: dict, subtitle: str) -> Figure:
    """The study's main figure: one panel per claim, each design's value per seed (dots)
    and its mean with 95% interval (bar), the verdict in the panel's title."""
    claims = summary["claims"]
    designs = [d["name"] for d in summary["designs"]]
    fig = Figure(figsize=(10, 6.4), layout="constrained")
    fig.suptitle(f"Zeiler & Fergus §4.1 claims, measured: mean and 95% interval ({subtitle})", fontsize=10)
    axes = fig.subplots(2, 2).ravel()
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
        ax.set_ylabel(METRICS[claim["metric"]].replace(" (fraction)", "\n(fraction)"), fontsize=8)
        ax.set_title(f"{claim['claim']}: {claim['verdict']}", fontsize=9,
                     color={REPRODUCED: "tab:green", NOT_REPRODUCED: "tab:red"}.get(claim["verdict"], "0.3"))
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(labelsize=8)
        if ax is axes[0]:
            ax.legend(fontsize=7, loc="best")
    return fig


def _wrap(name: str) -> str:
    return name.replace(" (", "\n(")


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
    """Distribution of conv1's dominant frequencies per design (averaged over seeds), with
    each stride's Nyquist frequency and the mid band."""
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    for j, (name, runs) in enumerate(results.items()):
        hist = runs[0].conv1_spectra["frequency_histogram"]
        edges = np.array(hist["edges"])
        counts = np.mean([np.array(r.conv1_spectra["frequency_histogram"]["counts"])
                          / max(1, sum(r.conv1_spectra["frequency_histogram"]["counts"])) for r in runs], 0)
        conv1 = runs[0].conv1
        ax.step(edges[:-1], counts, where="post", color=f"C{j}",
                label=f"{name} ({conv1[0]}×{conv1[0]}/{conv1[1]}; {len(runs)} model{'s' if len(runs) > 1 else ''})")
        ax.axvline(0.5 / conv1[1], linestyle="--", alpha=0.6, color=f"C{j}")
    first = next(iter(results.values()))[0]
    lo, hi = first.conv1_spectra["bands"]["edges"]
    ax.axvspan(lo, hi, color="grey", alpha=0.12, label="mid band")
    ax.set(xlabel="dominant spatial frequency (cycles/pixel); dashed: Nyquist of each stride",
           ylabel="fraction of conv1 filters", title="conv1: where the filters' dominant frequencies lie")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def evolution_figure(evolutions: dict[str, dict[int, dict[str, torch.Tensor]]], steps: tuple[int, ...]) -> Figure:
    """Fig. 4: rows = (layer, unit), columns = training steps, one block of columns per design."""
    designs = [d for d, snaps in evolutions.items() if snaps]
    keys = list(next(iter(evolutions[designs[0]].values()))) if designs else []
    cols = [(d, s) for d in designs for s in sorted(evolutions[d])]
    fig = Figure(figsize=(0.9 * len(cols) + 1.2, 0.9 * max(1, len(keys)) + 0.9), layout="constrained")
    fig.suptitle("Feature evolution (Fig. 4): each unit's strongest activation over the probe images, "
                 "projected,\nat training steps (columns) for each design (seed 0); 'silent': the unit does not fire on any "
                 "probe image yet", fontsize=9)
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
    lines = ["| claim (paper) | " + " | ".join(d["name"] for d in summary["designs"]) + " | difference | verdict |",
             "|---" * (len(summary["designs"]) + 3) + "|"]
    for c in summary["claims"]:
        values = [("n/a" if c["values"][d["name"]] is None else fmt(c["values"][d["name"]]))
                  for d in summary["designs"]]
        diff = "n/a" if c["difference"] is None else f"{fmt(c['difference'])} ({c['difference_of']})"
        lines.append(f"| **{c['claim']}**: {c['paper']} | " + " | ".join(values) + f" | {diff} | {c['verdict']} |")
    return "\n".join(lines)


def report_markdown(summary: dict) -> str:
    head = ""
    if "preset" in summary:
        p = summary["preset"]
        head = (f"Recipe: {p['optimizer']} lr {p['lr']}, batch {p['batch']}, {p['steps']} steps per model, "
                f"weight decay {p['weight_decay']}, dropout 0.5 on fc6/fc7, conv1 init N(0, {p['conv1_init_std']}²), "
                f"filter renormalisation to RMS 0.1: {'on' if p['renorm'] else 'off'}; input {p['size']}px, "
                f"conv1/conv2 widths {p['channels'][0]}/{p['channels'][1]}. Seeds {summary['seeds']}: seed i "
                f"fixes init, data order and dropout, the same for every design.")
        title = f"`{p['name']}` preset"
    else:
        title = "models trained elsewhere"
        head = "Models: " + ", ".join(f"`{t}`" for t in summary["trained"]) + " (no training)."
    return f"""# ZFNet first-layer study: {title}

Data: {summary['data']}. {head}
Device {summary['device']}; {summary['machine']}; torch {summary['torch']}; wall time {summary['wall_seconds']} s.
Intervals: {summary['intervals']}.

## Claims

{claims_markdown(summary)}

A verdict reads the 95% interval of the difference, signed so that positive is the paper's direction:
reproduced when it lies above 0, not reproduced when it does not reach above 0, inconclusive at this budget
when it straddles 0.

## Every number

{markdown_table(summary)}

Files: `claims.png` (the claims, per seed), `fig6_conv1_*.png` (Fig. 6 b/c), `fig6_layer2_top9_*.png` (Fig. 6 d/e),
`conv1_frequencies.png`, `fig4_evolution.png`, `training_curves.png`, `summary.json` (every number, per seed).
"""


__all__ = ["claims_figure", "curves_figure", "frequency_figure", "evolution_figure", "markdown_table",
           "claims_markdown", "report_markdown"]
