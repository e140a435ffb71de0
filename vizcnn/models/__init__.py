"""The model zoo: one registry for the classic CNN lineage (``registry``), one file per
architecture we define ourselves (``lenet5``, ``alexnet2012``, ``zfnet``), the model
cards (``cards``) and the learned weights shipped with the package (``shipped``,
``weights/``).

Names are imported when first used, so ``vizcnn.models.shipped`` (what ``vizcnn models``
reads) loads without torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_REGISTRY = ("IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "ModelSpec", "list_models", "get_spec", "build_model",
             "load_model", "default_weights", "imagenet_cache_file", "class_names", "shrink_classifier", "read_checkpoint",
             "load_checkpoint")

__all__ = list(_REGISTRY)


def __getattr__(name: str):
    if name in _REGISTRY:
        return getattr(importlib.import_module(".registry", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .registry import (IMAGENET_MEAN, IMAGENET_STD, MODELS, ModelSpec, build_model, class_names,
                           default_weights, get_spec, imagenet_cache_file, list_models, load_checkpoint, load_model,
                           read_checkpoint, shrink_classifier)
