"""Conveniences for research scripts: an image file as the tensor any model expects, and
the receptive-field boxes of units, so a script can draw what the CLI draws."""
from __future__ import annotations

import os
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from .deconv import Activations
from .errors import BadArgumentError, BadInputError
from .imageio import read_image
from .inputs import MAX_UPSCALE, fit, normalize
from .layers import cached_geometry, resolve_layer
from .models import IMAGENET_MEAN, IMAGENET_STD


def load_image(path: str | os.PathLike, size: int | tuple[int, int] = 224, *,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               gray: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """Reads an image file for a model of your own (for a zoo model, :func:`vizcnn.load_input`).

    size: the model's input side in px (int) or (height, width); the shorter side is
    resized to fit and the centre cropped. mean, std: the normalisation the model was
    trained with, per channel, on values in [0, 1] (default ImageNet's, as torchvision's
    models expect). gray: one channel (luminance), for models like LeNet-5.

    Returns (the H×W×C display image in [0, 1] the model sees, the normalised
    (1, C, H, W) float tensor).
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    channels = 1 if gray else 3
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise BadArgumentError(f"size must be a positive int or (height, width), got {size!r}")
    if len(mean) != channels or len(std) != channels:
        raise BadArgumentError(f"mean and std need {channels} value(s) each for a {'gray' if gray else 'colour'} "
                               f"image, got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise BadArgumentError(f"std must be positive, got {tuple(std)}")
    image = read_image(path, gray=gray)
    if min(image.shape[:2]) * MAX_UPSCALE < min(h, w):
        raise BadInputError(f"image {path} is {image.shape[1]}×{image.shape[0]} px: too small for a {w}×{h} "
                            f"input (more than {MAX_UPSCALE}× upscaling)")
    shown = fit(image, (h, w))
    return shown, normalize(shown, SimpleNamespace(mean=tuple(mean), std=tuple(std)))


def receptive_field_boxes(model: nn.Module, x: torch.Tensor, layer: str,
                          units: Activations | Sequence[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """The image region each unit of ``layer`` sees: (top, bottom, left, right) in input px,
    bottom and right exclusive, clipped to the image.

    x: the input (1, C, H, W) or (C, H, W) (only its shape is used). units: the
    :class:`Activations` that :func:`vizcnn.project_top` / :func:`vizcnn.top_activations`
    return, or (y, x) positions in the layer's map.
    """
    resolve_layer(model, layer)
    size = tuple(x.shape[-3:])
    info = cached_geometry(model, size)[layer]
    if isinstance(units, Activations):
        units = list(zip(units.y.tolist(), units.x.tolist()))
    return [info.box(int(y), int(x_), size[1], size[2]) for y, x_ in units]


__all__ = ["load_image", "receptive_field_boxes"]
