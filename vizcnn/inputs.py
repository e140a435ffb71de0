"""Turning an image into the tensor a model expects, and back for display."""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from .errors import BadInputError
from .models import ModelSpec

#: An image whose shorter side is below input_side / MAX_UPSCALE is refused: stretched more
#: than this, it no longer shows the model anything it was built to see.
MAX_UPSCALE = 8


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes the shorter side to fit (H, W) and centre-crops: H×W×C float in [0, 1]."""
    h, w = image.shape[:2]
    th, tw = size
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    if resized.ndim == 2:
        resized = resized[..., None]
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(resized[top:top + th, left:left + tw])


def normalize(image: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    """H×W×C float image in [0, 1] → (1, C, H, W) tensor normalised with the model's mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def load_input(path: str | os.PathLike, spec: ModelSpec) -> tuple[np.ndarray, torch.Tensor]:
    """Reads an image file and prepares it for ``spec``'s model.

    Returns (the H×W×C display image in [0, 1] the model sees, the normalised
    (1, C, H, W) tensor). One-channel models get the image's luminance.
    """
    from .imageio import read_image

    c, h, w = spec.input_size
    image = read_image(path, gray=(c == 1))
    if min(image.shape[:2]) * MAX_UPSCALE < min(h, w):
        raise BadInputError(f"image {path} is {image.shape[1]}×{image.shape[0]} px: too small for "
                            f"{spec.name}'s {w}×{h} input (more than {MAX_UPSCALE}× upscaling)")
    shown = fit(image, (h, w))
    return shown, normalize(shown, spec)
