"""An optimised stimulus per unit: regularised activation maximisation (Erhan et al. 2009;
Olah et al., "Feature Visualization", Distill 2017), with lucent's defaults as the reference.

The image is parameterised, not optimised pixel by pixel:

* **Fourier basis with spectrum scaling**: the free variables are the real and imaginary
  parts of the image's 2-D real FFT (initial standard deviation 0.01); each frequency f
  (cycles/px) is scaled by 1 / max(f, 1 / max(H, W)) before the inverse FFT ("ortho"
  norm), divided by 4: every frequency then moves the image about equally, so gradient
  steps do not pile up high-frequency noise (lucent's ``fft_image``, decay power 1).
* **Decorrelated colour**: the three channels are mixed by the square root of ImageNet's
  colour covariance (lucent's ``color_correlation_svd_sqrt``, normalised by its largest
  column norm), then squashed by a sigmoid into [0, 1] (``to_valid_rgb``).
* **Grey** for grey-input models: one Fourier channel, sigmoid, repeated to the model's
  input channels (no colour mixing).

Each step the image passes lucent's ``standard_transforms`` before the model — pad 12
(constant 0.5), jitter 8, scale by one of 1 + (i - 5)/50 (i = 0..10), rotate by one of
-10..10 degrees (0 five times as likely), jitter 4 — with the pixel amounts scaled by
the input side / 224 (at least 1 px), since lucent's are for 224 px inputs; then the
model's own normalisation. The objective is lucent's ``neuron``: the unit at the centre
of its map (the atlas sets the stimulus beside the dataset's strongest activations,
which are single positions too; lucent's ``channel``, the map's mean, reached less than
half their median on the shipped Fashion-MNIST AlexNet's conv5 in 128 steps). A
rectified layer's objective is read before its ReLU (the same maximiser, and a gradient
where the unit is silent). Adam, learning rate 0.05.

Batched: one unit per batch element; the random transforms are drawn once per step and
shared by the batch, and each unit's initial spectrum comes from its own seed
(``seed``, unit), so a unit's image depends on the seed and the steps only, not on
which units share its batch (up to the rounding of batched convolutions).
Deterministic on the CPU for a given seed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import BadArgumentError
from ..core.layers import LayerTap, resolve_layer, run_until_stopped
from ..core.progress import ProgressFn
from ..core.state import model_device, model_dtype, preserved_model

#: lucent's colour_correlation_svd_sqrt (ImageNet's RGB covariance, square root).
COLOR_CORRELATION_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]],
                                        dtype=np.float32)
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))
LEARNING_RATE = 0.05
INIT_SD = 0.01
#: lucent's standard_transforms, in px for a 224 px input.
PAD, JITTER1, JITTER2 = 12, 8, 4
SCALES = tuple(1 + (i - 5) / 50 for i in range(11))
ANGLES = tuple(range(-10, 11)) + (0,) * 5


@dataclass
class Stimuli:
    """Optimised images of units of one layer: ``images`` (U, H, W, C_in) float32 in
    [0, 1] (the image the model sees, before its normalisation), ``units`` (U,) and
    ``activation`` (U, C_layer): every unit's maximum over positions on each image
    (row u: the optimised image of units[u])."""

    units: list[int]
    images: np.ndarray
    activation: torch.Tensor
    steps: int
    seed: int


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Frequency magnitude (cycles/px) of each entry of a (h, w // 2 + 1) rfft2 spectrum."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


class FourierImage:
    """A batch of images parameterised by their scaled spectra: ``params`` (B, C, h, w//2+1, 2)
    is the leaf to optimise; :meth:`rgb` gives (B, 3 or 1, H, W) in [0, 1]."""

    def __init__(self, batch_seeds: Sequence[int], size: tuple[int, int], *, grey: bool, device: torch.device):
        h, w = size
        self.size, self.grey = size, grey
        channels = 1 if grey else 3
        freqs = rfft2d_freqs(h, w)
        shape = (channels, *freqs.shape, 2)
        init = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) * INIT_SD for s in batch_seeds]
        self.params = torch.stack(init).to(device).requires_grad_(True)
        scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w))
        self.scale = torch.tensor(scale, dtype=torch.float32, device=device)[None, None, :, :, None]
        self.mix = torch.tensor(COLOR_CORRELATION.T, device=device)

    def rgb(self) -> torch.Tensor:
        spectrum = torch.view_as_complex((self.scale * self.params).contiguous())
        image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / 4.0
        if not self.grey:
            image = torch.einsum("bchw,cd->bdhw", image, self.mix)
        return torch.sigmoid(image)


def _px(amount: int, side: int) -> int:
    return max(1, int(round(amount * side / 224)))


def _jitter(x: torch.Tensor, d: int, rng: np.random.Generator) -> torch.Tensor:
    """lucent's jitter: drop dy rows and dx columns from the top left (dx, dy < d)."""
    dx, dy = int(rng.integers(d)), int(rng.integers(d))
    return x[:, :, dy:, dx:]


def _scale_rotate(x: torch.Tensor, scale: float, angle: float) -> torch.Tensor:
    """One bilinear resample: scaled by ``scale`` (output size too) and rotated by
    ``angle`` degrees about the centre (the corners filled by edge values)."""
    n, c, h, w = x.shape
    out = (max(1, int(h * scale)), max(1, int(w * scale)))
    a = math.radians(angle)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         dtype=x.dtype, device=x.device).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, *out], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def transform(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """lucent's standard_transforms (see the module docstring) on a (B, C, H, W) batch."""
    side = min(x.shape[-2:])
    x = F.pad(x, [_px(PAD, side)] * 4, value=0.5)
    x = _jitter(x, _px(JITTER1, side), rng)
    x = _scale_rotate(x, SCALES[int(rng.integers(len(SCALES)))], ANGLES[int(rng.integers(len(ANGLES)))])
    return _jitter(x, _px(JITTER2, side), rng)


def _objective_tap(model: nn.Module, layer: str) -> tuple[LayerTap, str]:
    """A tap for the objective: the input of ``layer`` when it is a ReLU (see the module
    docstring), else its output."""
    path, _ = resolve_layer(model, layer)
    before = isinstance(model.get_submodule(path), nn.ReLU)
    return LayerTap(model, [layer], inputs=before, stop=True, record=lambda _n, t: t.clone() if before else t), \
        layer


def optimise_units(model: nn.Module, layer: str, units: Sequence[int], spec, *, steps: int = 128, seed: int = 0,
                   grey: bool = False, batch_size: int = 16, progress: ProgressFn | None = None,
                   what: str = "optimising") -> Stimuli:
    """An optimised stimulus for each of ``units`` of ``layer`` (see the module docstring),
    ``batch_size`` units a batch. ``spec``: the input size (C, H, W), ``mean`` and
    ``std`` of the model (its ModelSpec). ``grey``: one grey image repeated to the
    input's channels (a model trained on grey images). The model is left as it was."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise BadArgumentError(f"optimisation steps must be a positive integer, got {steps!r}")
    c, h, w = spec.input_size
    grey = grey or c == 1
    if c not in (1, 3):
        raise BadArgumentError(f"optimised stimuli need a 1- or 3-channel input, the model takes {c}")
    device, dtype = model_device(model), model_dtype(model)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device)[None, :, None, None]
    std = torch.tensor(spec.std, dtype=torch.float32, device=device)[None, :, None, None]
    units = [int(u) for u in units]
    images, rows = [], []
    batches = [units[i:i + batch_size] for i in range(0, len(units), batch_size)]
    done, total = 0, len(batches) * steps
    with preserved_model(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for batch in batches:
            image = FourierImage([seed * 1_000_003 + u for u in batch], (h, w), grey=grey, device=device)
            opt = torch.optim.Adam([image.params], lr=LEARNING_RATE)
            rng = np.random.default_rng(seed)  # the same transforms for every batch
            ch = torch.tensor(batch, device=device)
            pick = torch.arange(len(batch), device=device)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                x = transform(image.rgb(), rng).expand(-1, c, -1, -1)
                tap, name = _objective_tap(model, layer)
                with tap, torch.enable_grad():
                    run_until_stopped(model, ((x - mean) / std).to(dtype))
                tap.check()
                act = tap[name]
                act = act[:, :, None, None] if act.dim() == 2 else act
                loss = -act[pick, ch, act.shape[2] // 2, act.shape[3] // 2].float().sum()
                loss.backward()
                opt.step()
                done += 1
                if progress is not None:
                    progress(done, total, what)
            with torch.no_grad():
                final = image.rgb().expand(-1, c, -1, -1).detach()
            images.append(final.permute(0, 2, 3, 1).cpu().numpy())
            rows.append(unit_maxima(model, layer, (final - mean) / std))
    return Stimuli(units, np.concatenate(images) if images else np.zeros((0, h, w, c), np.float32),
                   torch.cat(rows) if rows else torch.zeros((0, 0)), steps, seed)


def unit_maxima(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """(N, C) every unit's maximum over positions in ``layer`` for a normalised batch x."""
    from ..core.extract import Extractor

    with Extractor(model, [layer]) as ex:
        act = ex.run(x)[layer]
    return (act.flatten(2).amax(dim=2) if act.dim() == 4 else act).float().cpu()


def is_grey(spec) -> bool:
    """Whether a model takes grey images: one input channel, or three normalised alike
    (equal mean and std per channel: the shipped Fashion-MNIST weights, which see grey
    images as 3 equal channels)."""
    c = spec.input_size[0]
    return c == 1 or (c == 3 and len(set(spec.mean)) == 1 and len(set(spec.std)) == 1)


__all__ = ["Stimuli", "FourierImage", "optimise_units", "unit_maxima", "transform", "is_grey", "rfft2d_freqs"]
