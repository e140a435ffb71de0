"""vizcnn: Zeiler & Fergus-style visualization and deconvnet toolkit for PyTorch CNNs.

>>> import torch, vizcnn
>>> model = vizcnn.load_model("alexnet", weights="random")
>>> x = torch.randn(1, 3, 224, 224)
>>> proj = vizcnn.project(model, x, "conv5", channel=[3, 7])   # (2, 3, 224, 224)

Names are imported when first used, so ``import vizcnn`` (and ``vizcnn --help``) does
not load torch or matplotlib.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: public name -> the module that defines it
_HOME = {
    # analyses
    "project": "deconv", "project_top": "deconv", "top_activations": "deconv", "Activations": "deconv",
    "saliency_map": "saliency", "occlude": "occlusion", "invariance_curves": "invariance", "scan": "dataset",
    "filter_spectra": "spectra", "sanity_check": "sanity", "Extractor": "extract", "ReverseRules": "rules",
    "activation_policy": "rules", "LayerTap": "layers",
    # models and layers
    "load_model": "models", "list_models": "models", "class_names": "models", "get_spec": "models",
    "friendly_names": "layers", "layer_geometry": "layers", "resolve_layer": "layers", "conv_layers": "layers",
    # inputs
    "load_image": "api", "load_input": "inputs", "open_data": "data", "receptive_field_boxes": "api",
    # drawing: tensors in, matplotlib Figures out; save_figure writes one
    "deconv_grid": "render", "panel_figure": "render_saliency", "occlusion_figure": "render_occlusion",
    "invariance_figure": "render_occlusion", "save_figure": "imageio",
    # errors
    "VizcnnError": "errors", "BadInputError": "errors", "BadArgumentError": "errors", "UnknownNameError": "errors",
    "ActivationError": "errors", "ActivationWarning": "errors",
}

#: exported under another name: ``vizcnn.saliency`` is the module (importing a submodule
#: sets the package attribute of its name, so a function there would not stay put)
_ALIAS = {"saliency_map": "saliency"}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), _ALIAS.get(name, name))
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    try:  # vizcnn.render, vizcnn.layers, ...: submodules work as attributes too
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .api import load_image, receptive_field_boxes
    from .data import open_data
    from .dataset import scan
    from .deconv import Activations, project, project_top, top_activations
    from .errors import (ActivationError, ActivationWarning, BadArgumentError, BadInputError, UnknownNameError,
                         VizcnnError)
    from .extract import Extractor
    from .imageio import save_figure
    from .inputs import load_input
    from .invariance import invariance_curves
    from .layers import LayerTap, conv_layers, friendly_names, layer_geometry, resolve_layer
    from .models import class_names, get_spec, list_models, load_model
    from .occlusion import occlude
    from .render import deconv_grid
    from .render_occlusion import invariance_figure, occlusion_figure
    from .render_saliency import panel_figure
    from .rules import ReverseRules, activation_policy
    from .saliency import saliency as saliency_map
    from .sanity import sanity_check
    from .spectra import filter_spectra
