"""The zoo's lineage figure: published accuracy against computed size."""
from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .common import wrap

if TYPE_CHECKING:  # a type only: rendering takes the cards, it does not compute them
    from ..models.cards import ModelCard


def lineage_figure(cards: list[ModelCard]) -> Figure:
    """Published ImageNet top-1 accuracy against computed parameter count (log scale).
    Each point's name is placed where it overlaps no other name (models of nearly the
    same size and accuracy, such as vgg16 and vgg19, would otherwise print over each
    other), with a thin leader line when it had to move away from its point."""
    fig = Figure(figsize=(8, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    points = sorted((c for c in cards if c.spec.top1 is not None), key=lambda c: (c.params, c.spec.top1))
    for c in points:
        ax.scatter(c.params, c.spec.top1, s=30, color="tab:red" if c.spec.tv_name is None else "tab:blue", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (computed, log scale)")
    ax.set_ylabel("ImageNet top-1 accuracy (%, published)")
    fig.suptitle(wrap("vizcnn model zoo · the classic CNN lineage: accuracy vs. size\n"
                      "blue: torchvision IMAGENET1K_V1 weights; red: the original papers' single-net figures", 7.6, 10), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if points:
        xs = [c.params for c in points]
        ax.set_xlim(min(xs) / 2.5, max(xs) * 4)  # room for names on both sides
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed = []
    offsets = [(5, 3, "left"), (5, -11, "left"), (-5, 3, "right"), (-5, -11, "right"), (5, 14, "left"),
               (5, -22, "left"), (-5, 14, "right"), (-5, -22, "right"), (5, 25, "left"), (5, -33, "left")]
    for c in points:
        choice = offsets[0]  # where nothing is free, the first place, so the name is at least there
        for dx, dy, ha in offsets:
            probe = ax.annotate(c.spec.name, (c.params, c.spec.top1), textcoords="offset points", xytext=(dx, dy),
                                fontsize=8, ha=ha, va="bottom")
            box = probe.get_window_extent(renderer)
            probe.remove()
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed):
                choice = (dx, dy, ha)
                break
        dx, dy, ha = choice
        leader = {"arrowstyle": "-", "color": "0.5", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3}
        text = ax.annotate(c.spec.name, (c.params, c.spec.top1), textcoords="offset points", xytext=(dx, dy),
                           fontsize=8, ha=ha, va="bottom", arrowprops=leader if abs(dy) > 11 else None)
        placed.append(text.get_window_extent(renderer))
    return fig


__all__ = ["lineage_figure"]
