"""vizcnn: Zeiler & Fergus-style visualization and deconvnet toolkit for PyTorch CNNs.

>>> import vizcnn
>>> model = vizcnn.load_model("alexnet", weights="random")
>>> x = torch.randn(1, 3, 224, 224)
>>> proj = vizcnn.project(model, x, "conv5", channel=[3, 7])   # (2, 3, 224, 224)
"""
from .deconv import Activations, project, project_top, top_activations
from .errors import BadArgumentError, BadInputError, UnknownNameError, VizcnnError
from .extract import Extractor
from .layers import friendly_names, layer_geometry, resolve_layer
from .models import class_names, list_models, load_model
from .rules import ReverseRules

__all__ = [
    "Activations", "BadArgumentError", "BadInputError", "Extractor", "ReverseRules", "UnknownNameError",
    "VizcnnError", "class_names", "friendly_names", "layer_geometry", "list_models", "load_model", "project",
    "project_top", "resolve_layer", "top_activations",
]
