"""The model card: computed parameter counts, FLOPs and layer geometry for each architecture."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import nn

from .layers import LayerInfo, count_flops, layer_geometry
from .models import MODELS, ModelSpec, build_model, get_spec


@dataclass(frozen=True)
class ModelCard:
    spec: ModelSpec
    params: int
    flops: int
    convs: list[LayerInfo]


def _skeleton(name: str) -> nn.Module:
    """The architecture without real weights where possible (the meta device: no memory,
    no compute), else built on the CPU."""
    try:
        with torch.device("meta"):
            return build_model(name)
    except (NotImplementedError, RuntimeError):
        return build_model(name)


def model_card(name: str) -> ModelCard:
    spec = get_spec(name)
    model = _skeleton(name).eval()
    geometry = layer_geometry(model, spec.input_size, device=next(model.parameters()).device)
    kinds = {p: type(m).__name__ for p, m in model.named_modules()}
    convs = [info for key, info in geometry.items()
             if key == info.path and info.kernel is not None and "Conv" in kinds.get(info.path, "")]
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelCard(spec, params, count_flops(model, spec.input_size), convs)


def model_cards() -> list[ModelCard]:
    return [model_card(name) for name in MODELS]


def lineage_figure(cards: list[ModelCard]) -> Figure:
    """Published ImageNet top-1 accuracy against computed parameter count (log scale)."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    points = [c for c in cards if c.spec.top1 is not None]
    for c in points:
        ax.scatter(c.params, c.spec.top1, s=30, color="tab:red" if c.spec.tv_name is None else "tab:blue")
        ax.annotate(c.spec.name, (c.params, c.spec.top1), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (computed, log scale)")
    ax.set_ylabel("ImageNet top-1 accuracy (%, published)")
    ax.set_title("The classic CNN lineage: accuracy vs. size\n"
                 "blue: torchvision IMAGENET1K_V1 weights; red: the original papers' single-net figures")
    ax.grid(True, which="both", alpha=0.3)
    return fig
