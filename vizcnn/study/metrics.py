"""What each claim of Zeiler & Fergus §4.1 / Fig. 6 is measured by: pure compute, tensors in,
plain numbers out (no files, no figures).

The claims are about AlexNet's 11×11 stride-4 first layer against ZFNet's 7×7 stride 2:
(b) vs (c) "dead" filters and a lack of mid frequencies, (d) vs (e) aliasing artifacts in
the layer-2 features. Each function below measures one of them in a way whose answer on a
hand-built case is known (tests/test_study_metrics.py):

- :func:`frequency_coverage`: where each *effective* filter's energy peaks, in cycles per
  input pixel, against bands fixed in advance (``vizcnn.methods.spectra.BANDS``). Dead
  filters come from :func:`vizcnn.methods.spectra.dead_filters` (one definition for the
  study, ``vizcnn filters`` and ``dead-filters``).
- aliasing, measured as aliasing, three ways:

  (a) :func:`dense_alias_fraction`: the share of conv1's dense (stride-1) response energy,
      on the data, that the stride folds: the energy outside the stride's Nyquist square.
      :func:`data_alias_fraction` is the same share for the images themselves (how much
      the data holds to alias at all);
  (b) :func:`shift_variation`: how much the layer-2 maps change when the input moves by
      less than the network's stride (Zhang, ICML 2019): an alias-free network's
      globally pooled features do not change under a circular shift;
  (c) :func:`projection_hf_ratio`: the deconv projections' energy above a common cutoff,
      relative to the input patches under the same windows (Fig. 6 d, e): more high
      frequency than the image content they come from.

Energy-weighted shares come with per-item values and weights so the caller can put an
interval on them (``vizcnn.study.stats``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import BadArgumentError, BadInputError
from ..core.extract import Extractor
from ..core.state import preserved_model
from ..methods.spectra import (BANDS, band_of, dead_filters, effective_filters, entropy_bins, filter_spectra,
                               frequency_histogram, normalised_entropy)

DEFAULT_SHIFTS = ((1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (2, 2), (3, 0), (0, 3), (3, 3))
HF_CUTOFF = 1 / 4  # cycles/pixel: the common yardstick of (c), the same for every design


# --------------------------------------------------------------------------- helpers

def _stride(stride) -> int:
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise BadArgumentError(f"stride must be a positive integer, got {stride!r}")
    return stride


def _images(images, channels: int | None = None) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.numel() == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise BadInputError(f"expected a batch of images (N, C, H, W), got {shape}")
    if channels is not None and images.shape[1] != channels:
        raise BadInputError(f"the filters take {channels} input channels, the images have {images.shape[1]}")
    x = images.detach().to(torch.float64) if images.device.type != "mps" else images.detach().float()
    if not torch.isfinite(x).all():
        raise BadInputError("the images hold NaN or Inf")
    return x


def _inside_weights(n: int, stride: int, x: torch.Tensor) -> torch.Tensor:
    """(n,) weight of each DFT bin k of an n-point axis inside the Nyquist band |f| <= 1/(2s):
    1 strictly inside, 1/2 on the band edge (the bins +-n/(2s) fold onto each other, so the
    half-open band [-1/(2s), 1/(2s)) holds one of them: half of the pair, for a real signal
    whose power is symmetric), 0 outside."""
    k = torch.fft.fftfreq(n, 1 / n, dtype=torch.float64).abs()  # |k| = n |f|
    twice = 2 * stride * k  # compare 2 s |k| with n exactly (integers)
    w = torch.where(twice < n, 1.0, torch.where(twice == n, 0.5, 0.0))
    return w.to(device=x.device, dtype=x.dtype)


def _outside_square(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(outside, total) power per item of x (B, C, H, W), summed over channels, per-channel
    spatial mean removed, each map cropped to a multiple of ``stride`` from the top left
    (so that the stride's folding of the DFT is exact: subsampling an n-point map by s maps
    bin k onto k mod n/s, and the bins outside the band are exactly those folded)."""
    h, w = (x.shape[-2] // stride) * stride, (x.shape[-1] // stride) * stride
    if h == 0 or w == 0:
        raise BadInputError(f"maps of {x.shape[-2]}x{x.shape[-1]} px are smaller than the stride {stride}")
    x = x[..., :h, :w]
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    f = torch.fft.fft2(x)
    p = (f.real ** 2 + f.imag ** 2).sum(dim=1)  # (B, h, w)
    inside = _inside_weights(h, stride, p)[:, None] * _inside_weights(w, stride, p)[None, :]
    total = p.sum(dim=(-2, -1))
    return total - (p * inside).sum(dim=(-2, -1)), total


def _weighted(outside: torch.Tensor, total: torch.Tensor) -> dict:
    """The energy-weighted share with its per-item values and weights."""
    values = torch.where(total > 0, outside / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))
    overall = float(outside.sum() / total.sum()) if float(total.sum()) > 0 else 0.0
    return {"fraction": min(max(overall, 0.0), 1.0), "values": values.clamp(0, 1).cpu().tolist(),
            "weights": total.cpu().tolist()}


# --------------------------------------------------------------------------- aliasing (a)

def dense_alias_fraction(weight: torch.Tensor, images: torch.Tensor, stride: int, padding: int = 0) -> dict:
    """Aliasing (a): the share of conv1's response energy, on the data, that its stride folds.

    conv1 is run densely (stride 1, the given zero ``padding``, no bias) on ``images``
    (N, C, H, W) with ``weight`` (F, C, kh, kw); each response map has its spatial mean
    removed (DC is never folded, and a constant background would otherwise dominate);
    the map is cropped to a multiple of ``stride`` and its power computed on its own DFT
    bins. The share outside the Nyquist square ``|fx|, |fy| <= 1/(2 stride)`` is exactly
    the energy a stride-``stride`` convolution folds onto lower frequencies: the strided
    output is the dense map subsampled, and subsampling adds each bin outside the square
    onto one inside it (bins on the square's edge count half: each pair folds onto itself).

    Why this measures the claim: "aliasing" in §4.1 is what the large stride does to the
    first layer's response; the filter's own spectrum (``filter_spectra``' alias fraction)
    says what it *would* fold on white noise, this says what it folds on the data it was
    trained on, which may hold little above the stride's Nyquist frequency.

    The DFT sees the map as periodic: a map that does not fade out towards its border adds
    the wrap's jump as broadband energy (a smooth image filling the frame: about 0.03 at
    stride 4 where 0 is due). Objects on a plain background, as on the study's canvases,
    do not; data whose content runs to the frame edge is overstated by that much, the
    same for every design.

    Returns ``fraction`` (sum of folded energy / sum of energy over all images and maps),
    ``values`` (per image) and ``weights`` (each image's response energy: ``fraction`` is
    their weighted mean), ``stride``, ``nyquist``.
    """
    stride = _stride(stride)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or weight.numel() == 0:
        raise BadInputError(f"expected filters (F, C, kh, kw), got "
                            f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise BadArgumentError(f"padding must be a non-negative integer, got {padding!r}")
    x = _images(images, weight.shape[1])
    w = weight.detach().to(device=x.device, dtype=x.dtype)
    outside, total = [], []
    per_image = w.shape[0] * (x.shape[-2] + 2 * padding) * (x.shape[-1] + 2 * padding)
    rows = max(1, (1 << 24) // per_image)  # bounded memory: about 16M values of dense maps at a time
    for start in range(0, x.shape[0], rows):
        dense = F.conv2d(x[start:start + rows], w, padding=padding)
        o, t = _outside_square(dense, stride)
        outside.append(o)
        total.append(t)
    return {**_weighted(torch.cat(outside), torch.cat(total)), "stride": stride, "nyquist": 0.5 / stride}


def data_alias_fraction(images: torch.Tensor, stride: int) -> float:
    """The share of the images' own energy (each channel's mean removed) outside the Nyquist
    square of ``stride``, on the same DFT bins as :func:`dense_alias_fraction`: how much
    the data holds that a stride-``stride`` layer could alias at all. White noise gives
    ``1 - 1/stride^2``; a smooth (upscaled) image gives nearly 0."""
    stride = _stride(stride)
    outside, total = _outside_square(_images(images), stride)
    return _weighted(outside, total)["fraction"]


# --------------------------------------------------------------------------- aliasing (b)

def _check_shifts(shifts) -> list[tuple[int, int]]:
    try:
        out = [(int(dy), int(dx)) for dy, dx in shifts]
    except (TypeError, ValueError):
        raise BadArgumentError(f"shifts must be (dy, dx) pairs of integers, got {shifts!r}") from None
    if not out:
        raise BadArgumentError("give at least one shift")
    return out


def shift_variation(model: nn.Module, layer: str, images: torch.Tensor,
                    shifts: Sequence[tuple[int, int]] = DEFAULT_SHIFTS) -> dict:
    """Aliasing (b): how much ``layer``'s globally pooled features change when the input is
    shifted by less than the network's stride (Zhang, "Making convolutional networks
    shift-invariant again", ICML 2019).

    For each image x and shift d = (dy, dx): v(d) = the layer's output for the input
    circularly shifted by d (``torch.roll``), averaged over its spatial positions per
    channel; the variation is ``||v(d) - v(0)|| / ||v(0)||``. Global pooling and a
    circular shift commute for every shift-equivariant, alias-free map, so this is 0 for a
    stride-1 network; subsampling makes it depend on the phase of the input, by the
    energy the stride folds onto the pooled (DC) output. Why this measures the claim: the
    paper's "aliasing artifacts" in the layer-2 features are exactly this dependence on
    sub-stride position.

    A circular shift wraps the image's border round; on images whose border is plain
    background (the study's canvases, Fashion-MNIST) that moves the content only, and the
    network's zero padding meets the same background at every shift. Measured on the
    shipped Fashion-MNIST weights (32 test images, conv2): AlexNet 0.09, ZFNet 0.21.

    The model runs in eval mode without gradients through vizcnn's Extractor and comes
    back exactly as it was (modes, flags; no hooks left). Returns ``mean`` (over images
    and shifts), ``values`` (per image, the mean over shifts; the interval's items),
    ``per_shift`` ({"dy,dx": mean over images}), ``shifts``. An image whose pooled
    features are all zero at d = 0 counts 0 if they stay zero, else 1.
    """
    if not isinstance(model, nn.Module):
        raise BadInputError(f"expected an nn.Module, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.numel() == 0:
        raise BadInputError("expected a batch of images (N, C, H, W)")
    shifts = _check_shifts(shifts)

    def pooled(ex: Extractor, x: torch.Tensor) -> torch.Tensor:
        out = ex.run(x)[layer]
        out = out.double()
        return out.mean(dim=(-2, -1)) if out.dim() == 4 else out.flatten(1)

    rows = []
    with preserved_model(model), Extractor(model, [layer]) as ex:
        for start in range(0, images.shape[0], 64):
            x = images[start:start + 64].detach()
            v0 = pooled(ex, x)
            base = v0.norm(dim=1)
            change = []
            for dy, dx in shifts:
                diff = (pooled(ex, torch.roll(x, shifts=(dy, dx), dims=(-2, -1))) - v0).norm(dim=1)
                rel = torch.where(base > 0, diff / base.clamp_min(torch.finfo(base.dtype).tiny),
                                  (diff > 0).double())
                change.append(rel)
            rows.append(torch.stack(change, dim=1).cpu())
    table = torch.cat(rows)  # (N, shifts)
    return {"mean": float(table.mean()), "values": table.mean(dim=1).tolist(),
            "per_shift": {f"{dy},{dx}": float(table[:, j].mean()) for j, (dy, dx) in enumerate(shifts)},
            "shifts": [list(s) for s in shifts], "layer": layer}


# --------------------------------------------------------------------------- aliasing (c)

def _hann(n: int, x: torch.Tensor) -> torch.Tensor:
    if n < 3:
        return torch.ones(n, device=x.device, dtype=x.dtype)
    return torch.hann_window(n + 2, periodic=False, dtype=x.dtype, device=x.device)[1:-1]


def _above_cutoff(items: list[torch.Tensor], cutoff: float, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(above, total) power per item: each (C, h, w) item's per-channel window-weighted
    mean removed, tapered by a separable Hann window (so the crop's edges add no
    broadband energy), its power summed over channels, the part at radial frequency >
    ``cutoff``. Items of equal shape share one FFT."""
    above = torch.zeros(len(items), dtype=torch.float64)
    total = torch.zeros(len(items), dtype=torch.float64)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(items):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.numel() == 0:
            raise BadInputError(f"{what} item {i}: expected a (C, h, w) tensor, got "
                                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if not torch.isfinite(t).all():
            raise BadInputError(f"{what} item {i} holds NaN or Inf")
        groups.setdefault(tuple(t.shape), []).append(i)
    for (c, h, w), idx in groups.items():
        x = torch.stack([items[i].detach().double().cpu() for i in idx])
        win = _hann(h, x)[:, None] * _hann(w, x)[None, :]
        mean = (x * win).sum(dim=(-2, -1), keepdim=True) / win.sum()
        f = torch.fft.fft2((x - mean) * win)
        p = (f.real ** 2 + f.imag ** 2).sum(dim=1)
        fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
        high = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() > cutoff
        above[idx] = (p * high).sum(dim=(-2, -1))
        total[idx] = p.sum(dim=(-2, -1))
    return above, total


def projection_hf_ratio(projections: Sequence[torch.Tensor], patches: Sequence[torch.Tensor],
                        cutoff: float = HF_CUTOFF) -> dict:
    """Aliasing (c), for Fig. 6 (d, e): the energy-weighted share of the deconv projections'
    power above a common radial ``cutoff`` (1/4 cycle/px for every design), divided by the
    same share in the input patches under the same windows.

    ``projections`` and ``patches``: equally long lists of (C, h, w) tensors, item i the
    projection of a unit's winner and the image patch it came from (crops vary in size;
    items of one shape share an FFT). Each item has its mean removed and a Hann taper
    applied (edges would otherwise add broadband energy). A ratio of 1 means the
    projections hold as much high frequency as the image content they come from; above 1,
    more: the high-frequency "artifacts" of the paper. Dividing by the patches' share
    separates the network from the data (a design whose windows fall on busier image
    content would otherwise look more "aliased").

    Returns ``ratio``, ``projection_share``, ``patch_share``, ``cutoff``, and per item
    ``projection_values``/``projection_weights`` and ``patch_values``/``patch_weights``.
    """
    if not isinstance(cutoff, (int, float)) or isinstance(cutoff, bool) or not 0 < cutoff < math.sqrt(0.5):
        raise BadArgumentError(f"cutoff must be in (0, {math.sqrt(0.5):.3f}) cycles/pixel, got {cutoff!r}")
    projections, patches = list(projections), list(patches)
    if not projections or len(projections) != len(patches):
        raise BadInputError(f"expected equally long, non-empty lists of projections and patches, got "
                            f"{len(projections)} and {len(patches)}")
    for i, (a, b) in enumerate(zip(projections, patches)):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape[-2:] != b.shape[-2:]:
            raise BadInputError(f"item {i}: projection {tuple(a.shape)} and patch {tuple(b.shape)} differ in size")
    pa, pt = _above_cutoff(projections, float(cutoff), "projection")
    qa, qt = _above_cutoff(patches, float(cutoff), "patch")
    proj, patch = _weighted(pa, pt), _weighted(qa, qt)
    ratio = proj["fraction"] / patch["fraction"] if patch["fraction"] > 0 else float("inf")
    return {"ratio": ratio, "projection_share": proj["fraction"], "patch_share": patch["fraction"],
            "cutoff": float(cutoff), "projection_values": proj["values"], "projection_weights": proj["weights"],
            "patch_values": patch["values"], "patch_weights": patch["weights"]}


# --------------------------------------------------------------------------- frequency coverage

def frequency_coverage(weight: torch.Tensor, grey: bool) -> dict:
    """Where each effective filter's energy peaks: the dominant (largest-power) radial
    frequency of each filter, in cycles per input pixel, counted in the bands fixed in
    advance (``BANDS``: low < 1/6, mid [1/6, 1/3), extreme-high >= 1/3), with the histogram
    in bins of 1/16 cycle/px and its normalised entropy.

    ``grey``: the model's input is grey fed as equal channels, so the filter the data
    trains is the channel sum (:func:`vizcnn.methods.spectra.effective_filters`); the
    colour differences are untrained initialisation noise and would otherwise be
    counted. Why this measures the claim: "a mix of extremely high and low frequency
    information, with little coverage of the mid frequencies" is a statement about the
    distribution of the filters' dominant frequencies, in image (input-pixel) units,
    whatever the stride. The frequency is independent of the stride; the kernel size is
    separated from the stride by the study's factorial design.

    Dead filters (:func:`vizcnn.methods.spectra.dead_filters`) are noise, whose peak lands
    anywhere (mostly in the extreme-high band: most of the frequency grid lies there), so
    the same numbers are also given over the live filters alone (``live``).

    Returns ``peak_frequency`` (per filter), ``bands`` {edges, counts, fractions},
    ``mid_fraction``, ``histogram`` {edges, counts}, ``entropy``, ``grey``, ``filters``,
    ``dead`` (indices) and ``live`` {filters, counts, fractions, mid_fraction} (fractions
    None when every filter is dead).
    """
    eff = effective_filters(weight, grey)
    s = filter_spectra(eff, 1, keep_power=False, structure=False)
    peaks = s.peak_frequency.double().cpu()
    n = int(peaks.numel())
    band = band_of(peaks, BANDS)
    counts = torch.bincount(band, minlength=3).tolist()
    hist = frequency_histogram(peaks)
    names = ("low", "mid", "high")
    dead = dead_filters(weight, grey=grey).dead.cpu()
    alive = int((~dead).sum())
    live = torch.bincount(band[~dead], minlength=3).tolist()
    return {"filters": n, "grey": grey, "peak_frequency": peaks.tolist(),
            "bands": {"edges": list(BANDS), "counts": dict(zip(names, counts)),
                      "fractions": {k: c / n for k, c in zip(names, counts)}},
            "mid_fraction": counts[1] / n,
            "histogram": {"edges": entropy_bins(), "counts": hist}, "entropy": normalised_entropy(hist),
            "dead": dead.nonzero().flatten().tolist(),
            "live": {"filters": alive, "counts": dict(zip(names, live)),
                     "fractions": {k: c / alive for k, c in zip(names, live)} if alive else None,
                     "mid_fraction": live[1] / alive if alive else None}}


__all__ = ["DEFAULT_SHIFTS", "HF_CUTOFF", "data_alias_fraction", "dense_alias_fraction", "frequency_coverage",
           "projection_hf_ratio", "shift_variation"]
