"""Conveniences for research scripts, where reading meets computing: an image file as
the tensor any model expects, the receptive-field boxes of units, and the dataset pass
over an image collection (``vizcnn.io.sources`` reads, ``vizcnn.methods.scan`` computes).
The methods themselves never read files; these functions hand them what they read."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from .core.errors import BadArgumentError, BadInputError
from .core.layers import cached_geometry, resolve_layer
from .core.progress import ProgressFn, each
from .core.state import model_device
from .io.imageio import read_fitted
from .io.inputs import MAX_UPSCALE, normalize
from .io.samples import resolve_sample
from .io.sources import ImageSource, load, loader
from .methods.deconv import Activations
from .methods.scan import Projection, ScanResult, TopK, backproject_winners, rank_and_world, scan_batches
from .models.registry import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("vizcnn.data")


def load_image(path: str | os.PathLike, size: int | tuple[int, int] = 224, *,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               gray: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """Reads an image file for a model of your own (for a zoo model, :func:`vizcnn.load_input`).

    size: the model's input side in px (int) or (height, width); the shorter side is
    resized to fit and the centre cropped. mean, std: the normalisation the model was
    trained with, per channel, on values in [0, 1] (default ImageNet's, as torchvision's
    models expect). gray: one channel (luminance), for models like LeNet-5.

    Returns (the H×W×C display image in [0, 1] the model sees, the normalised
    (1, C, H, W) float tensor). A ``samples/NAME`` that is not in the current folder is
    the sample shipped with vizcnn, said on stderr (:func:`vizcnn.io.samples.resolve_sample`).
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
    path = resolve_sample(path)  # samples/NAME not here: the shipped copy, said on stderr
    shown, (ih, iw) = read_fitted(path, (h, w), gray=gray)  # one float copy, at the input's size
    if min(ih, iw) * MAX_UPSCALE < min(h, w):
        raise BadInputError(f"image {path} is {iw}×{ih} px: too small for a {w}×{h} "
                            f"input (more than {MAX_UPSCALE}× upscaling)")
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


def scan(model: nn.Module, source: ImageSource, spec, *, topk_layers: Sequence[str] = (),
         stats_layers: Sequence[str] = (), top: int = 9, distinct_images: bool = False, batch_size: int = 32,
         num_workers: int | None = None, group=None, geometry: dict | None = None,
         progress: ProgressFn | None = None, observers: Sequence = ()) -> ScanResult:
    """One pass over ``source``, prepared for ``spec`` (the model's ModelSpec, or anything
    with ``input_size``, ``mean``, ``std``), on the model's device.

    Computes the top-``top`` activations of every unit of ``topk_layers`` and the
    statistics of ``stats_layers`` in the same truncated forward per batch. Under an
    initialised process group (``group``, default the world) each rank reads images
    rank, rank + world, … and every rank returns the merged result. The model runs in
    eval mode and is left exactly as it was. ``observers``: further streamed reductions
    of the same forward (see :func:`vizcnn.methods.scan.scan_batches`).
    """
    rank, world = rank_and_world(group)
    device = model_device(model)
    batches = loader(source, spec, indices=range(rank, len(source), world), batch_size=batch_size,
                     num_workers=num_workers, pin_memory=device.type == "cuda")
    shard = len(range(rank, len(source), world))
    batches = each(progress, f"data pass ({shard} images)", batches, -(-shard // batch_size))
    return scan_batches(model, batches, tuple(spec.input_size), topk_layers=topk_layers, stats_layers=stats_layers,
                        top=top, distinct_images=distinct_images, group=group, geometry=geometry,
                        observers=observers)


def project_winners(model: nn.Module, source: ImageSource, spec, layer: str, topk: TopK, units: Sequence[int], *,
                    method: str = "deconvnet", batch_size: int = 64, geometry=None,
                    progress: ProgressFn | None = None) -> dict[tuple[int, int], Projection]:
    """The winners of ``units`` (a :class:`TopK` from :func:`scan`) projected back to
    pixels, each image read again from ``source`` (:func:`vizcnn.methods.scan.backproject_winners`).
    Winners whose image cannot be read again are left out, with a warning."""
    def read(i: int):
        try:
            return load(source, i, spec)
        except BadInputError as e:
            log.warning("cannot re-read winning image %d (%s): %s", i, source.describe(i), e)
            return None

    return backproject_winners(model, read, tuple(spec.input_size), layer, topk, units, method=method,
                               batch_size=batch_size, geometry=geometry, progress=progress)


__all__ = ["load_image", "receptive_field_boxes", "scan", "project_winners"]
