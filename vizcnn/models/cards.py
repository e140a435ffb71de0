"""Model cards: each architecture's computed parameter count, FLOPs and conv geometry
(``vizcnn models``, the report's card), from the model itself on the meta device."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.layers import LayerInfo, count_flops, feeding_layer, friendly_names, is_conv, layer_geometry, meta_copy
from .registry import MODELS, ModelSpec, build_model, get_spec


@dataclass(frozen=True)
class ModelCard:
    """A model's numbers: ``convs`` is each convolution's geometry (kernel, stride,
    output shape, receptive field) in forward order; FLOPs are 2 per multiply-add."""

    spec: ModelSpec | None
    params: int
    flops: int
    convs: list[LayerInfo]


def skeleton(name: str) -> nn.Module:
    """Zoo model ``name`` without real weights where possible (the meta device: no memory,
    no compute), else built on the CPU."""
    try:
        with torch.device("meta"):
            return build_model(name)
    except (NotImplementedError, RuntimeError):
        return build_model(name)


def card(model: nn.Module, input_size: tuple[int, int, int], spec: ModelSpec | None = None) -> ModelCard:
    """The card of ``model`` itself for one ``input_size`` (C, H, W) image: trainable
    parameters, FLOPs and each convolution (:func:`vizcnn.core.layers.is_conv`), computed
    on a parameter-free meta copy (no weights are copied)."""
    probe = meta_copy(model).eval()
    geometry = layer_geometry(probe, input_size)
    modules = dict(probe.named_modules())
    convs = [info for key, info in geometry.items()
             if key == info.path and info.kernel is not None and info.path in modules and is_conv(modules[info.path])]
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelCard(spec, params, count_flops(probe, input_size), convs)


def model_card(name: str) -> ModelCard:
    """The card of zoo model ``name`` at its input size."""
    spec = get_spec(name)
    return card(skeleton(name), spec.input_size, spec)


def model_cards() -> list[ModelCard]:
    return [model_card(name) for name in MODELS]


def _conv_friendly(model: nn.Module) -> dict[str, str]:
    """conv module path -> the friendly name of its (rectified) output (features.0 -> conv1)."""
    names = {}
    for friendly in friendly_names(model):
        path = feeding_layer(model, friendly)
        if path is not None:
            names.setdefault(path, friendly)
    return names


def card_json(model: nn.Module, model_name: str, input_size: tuple[int, int, int], spec=None) -> dict:
    """The model as a table (the report's card): per convolution its kernel, stride,
    padding, output shape, receptive field, jump (px between neighbouring units) and
    parameters; totals of trainable parameters and FLOPs (2 per multiply-add) for one
    image (:func:`card`); the published figures come from ``spec`` where given."""
    c = card(model, input_size)
    modules = dict(model.named_modules())
    friendly = _conv_friendly(model)
    convs = []
    for info in c.convs:
        m = modules[info.path]
        padding = getattr(m, "padding", None)
        convs.append({
            "layer": friendly.get(info.path, info.path), "module": info.path, "kind": info.kind,
            "kernel": list(info.kernel), "stride": list(info.stride),
            "padding": list(padding) if isinstance(padding, (tuple, list)) else padding,
            "output": list(info.shape), "receptive_field": list(info.rf), "jump": list(info.jump),
            "params": sum(p.numel() for p in m.parameters()),
        })
    summary = {"name": model_name, "input_size": list(input_size), "params": c.params, "flops": c.flops,
               "gflops": round(c.flops / 1e9, 4), "convs": convs,
               "conv_params": sum(row["params"] for row in convs)}
    if spec is not None:
        summary.update({"family": spec.family, "num_classes": spec.num_classes,
                        "published_params": spec.published_params, "top1": spec.top1, "top5": spec.top5,
                        "source": spec.source})
    return summary


__all__ = ["ModelCard", "card", "card_json", "model_card", "model_cards", "skeleton"]
