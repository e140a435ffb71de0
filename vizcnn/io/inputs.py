"""Turning an image into the tensor a model expects, and back for display."""
from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import torch

from ..core.errors import BadInputError
from .opencv import cv2


class InputSpec(Protocol):
    """What preparing an input needs to know of a model (a ``ModelSpec`` has it)."""

    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]


#: An image whose shorter side is below input_side / MAX_UPSCALE is refused: stretched more
#: than this, it no longer shows the model anything it was built to see.
MAX_UPSCALE = 8


def crop_box(h: int, w: int, size: tuple[int, int]) -> tuple[int, int, int, int, int]:
    """(top, left, height, width, OpenCV interpolation) of the source box that :func:`fit`
    resizes onto ``size`` = (H, W): the whole shorter side, the centre of the longer."""
    th, tw = size
    scale = max(th / h, tw / w)
    sh, sw = min(h, max(1, round(th / scale))), min(w, max(1, round(tw / scale)))
    return (h - sh) // 2, (w - sw) // 2, sh, sw, cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes the shorter side to fit (H, W) and centre-crops: H×W×C float in [0, 1].

    The crop box is chosen in source pixels and only the crop is resized, so a long
    thin image (200000×28) costs the size of its crop, not of the whole image scaled up.
    """
    top, left, sh, sw, interp = crop_box(*image.shape[:2], size)
    return resize_crop(image[top:top + sh, left:left + sw], size, interp)


def resize_crop(crop: np.ndarray, size: tuple[int, int], interp: int) -> np.ndarray:
    """``crop`` resized to ``size`` = (H, W) with ``interp``, as an H×W×C array."""
    th, tw = size
    resized = cv2.resize(np.ascontiguousarray(crop), (tw, th), interpolation=interp)
    if resized.ndim == 2:
        resized = resized[..., None]
    return np.ascontiguousarray(resized)


def normalize(image: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """H×W×C float image in [0, 1] → (1, C, H, W) tensor normalised with the model's mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def load_input(path: str | os.PathLike, spec: InputSpec) -> tuple[np.ndarray, torch.Tensor]:
    """Reads an image file and prepares it for ``spec``'s model.

    Returns (the H×W×C display image in [0, 1] the model sees, the normalised
    (1, C, H, W) tensor). One-channel models get the image's luminance. A
    ``samples/NAME`` that is not in the current folder is the sample shipped with
    vizcnn (:func:`vizcnn.io.samples.resolve_sample`).
    """
    from .imageio import read_fitted
    from .samples import resolve_sample

    c, h, w = spec.input_size
    path = resolve_sample(path)  # samples/NAME not here: the shipped copy, said on stderr
    shown, (ih, iw) = read_fitted(path, (h, w), gray=(c == 1))  # one float copy, at the input's size
    if min(ih, iw) * MAX_UPSCALE < min(h, w):
        raise BadInputError(f"image {path} is {iw}×{ih} px: too small for "
                            f"{spec.name}'s {w}×{h} input (more than {MAX_UPSCALE}× upscaling)")
    return shown, normalize(shown, spec)


__all__ = ["InputSpec", "MAX_UPSCALE", "crop_box", "fit", "normalize", "load_input", "resize_crop"]
