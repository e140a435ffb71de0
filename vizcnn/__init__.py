"""vizcnn: Zeiler & Fergus-style visualization and deconvnet toolkit for PyTorch CNNs.

>>> import torch, vizcnn
>>> model = vizcnn.load_model("alexnet", weights="random")
>>> x = torch.randn(1, 3, 224, 224)
>>> proj = vizcnn.project(model, x, "conv5", channel=[3, 7])   # (2, 3, 224, 224)

The package is layered (docs/ARCHITECTURE.md): ``core`` (rules, layers, state, errors),
``io`` (reading and writing), ``models`` (the zoo), ``methods`` (the analyses),
``render`` (figures), ``writers`` (one per command). The names below are the analyses
researchers call; they are imported when first used, so ``import vizcnn`` (and
``vizcnn --help``) does not load torch or matplotlib.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: public name -> the module that defines it
_HOME = {
    # analyses
    "project": "methods.deconv", "project_top": "methods.deconv", "top_activations": "methods.deconv",
    "Activations": "methods.deconv", "saliency": "methods.saliency", "saliency_map": "methods.saliency",
    "occlude": "methods.occlusion", "invariance_curves": "methods.invariance", "scan": "api",
    "project_winners": "api", "atlas": "writers.atlas", "filter_spectra": "methods.spectra",
    "sanity_check": "methods.sanity",
    "Extractor": "core.extract", "ReverseRules": "core.rules", "activation_policy": "core.rules",
    "LayerTap": "core.layers",
    # models and layers
    "load_model": "models.registry", "list_models": "models.registry", "class_names": "models.registry",
    "get_spec": "models.registry", "friendly_names": "core.layers", "layer_geometry": "core.layers",
    "resolve_layer": "core.layers", "conv_layers": "core.layers",
    # inputs
    "load_image": "api", "load_input": "io.inputs", "open_data": "io.sources", "receptive_field_boxes": "api",
    # drawing: tensors in, matplotlib Figures out; save_figure writes one
    "deconv_grid": "render.deconv", "panel_figure": "render.saliency", "occlusion_figure": "render.occlusion",
    "invariance_figure": "render.invariance", "save_figure": "io.imageio",
    # errors
    "VizcnnError": "core.errors", "BadInputError": "core.errors", "BadArgumentError": "core.errors",
    "UnknownNameError": "core.errors", "ActivationError": "core.errors", "ActivationWarning": "core.errors",
}

#: exported under another name: ``saliency_map`` is ``saliency`` (its name before 0.2)
_ALIAS = {"saliency_map": "saliency"}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), _ALIAS.get(name, name))
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    try:  # vizcnn.core, vizcnn.methods, ...: subpackages work as attributes too
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .api import load_image, project_winners, receptive_field_boxes, scan
    from .core.errors import (ActivationError, ActivationWarning, BadArgumentError, BadInputError, UnknownNameError,
                              VizcnnError)
    from .core.extract import Extractor
    from .core.layers import LayerTap, conv_layers, friendly_names, layer_geometry, resolve_layer
    from .core.rules import ReverseRules, activation_policy
    from .io.imageio import save_figure
    from .io.inputs import load_input
    from .io.sources import open_data
    from .methods.deconv import Activations, project, project_top, top_activations
    from .methods.invariance import invariance_curves
    from .methods.occlusion import occlude
    from .methods.saliency import saliency
    from .methods.saliency import saliency as saliency_map
    from .methods.sanity import sanity_check
    from .methods.spectra import filter_spectra
    from .writers.atlas import atlas
    from .models.registry import class_names, get_spec, list_models, load_model
    from .render.deconv import deconv_grid
    from .render.invariance import invariance_figure
    from .render.occlusion import occlusion_figure
    from .render.saliency import panel_figure
