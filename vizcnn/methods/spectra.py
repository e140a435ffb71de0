"""Spatial-frequency analysis of convolution filters (Zeiler & Fergus §4.1 in numbers).

Everything here works from weights alone: a weight tensor ``(N, C, kh, kw)`` (N
filters over C input channels) or, with the same function, a batch of 2-D images
or deconvnet projections ``(N, C, H, W)`` (a single ``(H, W)`` array is one grey
image). Frequencies are in **cycles per input pixel**; the axis runs from -0.5 to
0.5 (the input's own Nyquist frequency).

Conventions, chosen so that each number means what the paper's sentences mean:

* **Power spectrum.** ``P(f) = sum_c |W_c(f)|^2``: the squared magnitude of each input
  channel's 2-D DFT, zero-padded to ``size x size``, summed over input channels, with
  nothing removed (no mean subtraction, no luminance projection). This is the power
  spectrum of the filter's response to white input whose channels are uncorrelated,
  so "energy above Nyquist" is exactly the fraction of the response's variance that a
  strided convolution folds back. It keeps the DC term (a colour blob *is* a
  low-frequency filter) and colour-opponent filters (a red-green edge has no luminance
  at all: a luminance projection would call it empty). By Parseval, ``P.mean() ==
  (w ** 2).sum()``.
* **Aliasing fraction** at stride ``s``: the fraction of the filter's energy outside
  the square ``|fx| <= 1/(2 sx)``, ``|fy| <= 1/(2 sy)``. Subsampling by ``s`` in each
  axis folds every frequency outside that square onto one inside it (frequencies
  inside it survive unchanged), so this is exactly the energy a stride-s convolution
  aliases. It is computed on the *continuous* spectrum, not on FFT bins: the energy in
  the square is ``sum_d R(d) g_y(dy) g_x(dx)`` with ``R`` the filter's autocorrelation
  (summed over channels) and ``g(d) = sin(pi d / s) / (pi d)`` (``1/s`` at ``d = 0``),
  and the total is ``R(0)``. The result does not depend on the FFT size, stride 1 gives
  exactly 0, and a white-noise filter gives ``1 - 1/(sy sx)`` in expectation (the area
  outside the square): 0.75 at stride 2, 0.9375 at stride 4.
* **Dominant frequency**: the radial frequency ``sqrt(fx^2 + fy^2)`` of the largest
  bin of ``P`` (``peak_frequency``, 0 for a filter whose peak is its DC term), and the
  power-weighted mean radial frequency over the grid (``mean_frequency``; white noise
  gives about 0.383, the mean distance from the centre of the unit square).
* **Frequency bands** (``BANDS``): low ``< 1/6`` (periods longer than 6 px), mid
  ``[1/6, 1/3)`` (periods of 3 to 6 px), extreme-high ``>= 1/3`` (periods under 3 px, up
  to the corner of the grid at ``sqrt(2)/2``). The edges are fixed in advance and belong
  to neither design of the ZFNet study: they are not the Nyquist frequencies of its
  strides (1/8 at stride 4, 1/4 at stride 2), so a filter's band says where its energy
  sits in the image, not which side of its own stride's limit it falls. Mid-frequency
  coverage is the fraction of filters whose peak lies in the mid band, and the
  normalised entropy of the histogram of peaks in bins of 1/16 cycles/px (0: all peaks in
  one bin, 1: evenly spread).
* **Structure**: spectral flatness ``exp(mean log P) / mean P`` (1 for a flat
  spectrum, towards 0 for power concentrated in a few frequencies), compared with the
  flatness of seeded white-Gaussian filters of the same shape (same number of active
  input channels, same size, same FFT grid): ``structure = 1 - flatness / median noise
  flatness`` (about 0 for noise; a Gabor or an edge scores 0.4 to 1). A filter is
  ``structured`` when its flatness is below the ``NOISE_QUANTILE`` quantile of the noise
  flatnesses, i.e. flatter spectra than that are indistinguishable from noise. An
  all-zero filter has flatness 1 and is unstructured. Measured on seeded samples:
  white noise has flatness about 0.84 with 3 input channels (0.58 with 1) and 98-99%
  of noise filters are called unstructured; Gabor filters (frequency 0.05-0.45,
  sigma k/6-k/3) have flatness under 0.01 at 7x7 and 11x11 and are all structured. It
  is the weights-only view of "dead" filters: a filter that training left as noise, or
  shrank to nothing, is unstructured (activation-based deadness is ``dead-filters``'s).
* **Effective filter** (:func:`effective_filters`): what the data can train. When grey
  images are fed as C equal channels, a filter's response is ``(sum_c w_c) * x``: only
  the channel sum sees the data. The colour differences never receive a gradient and
  stay initialisation noise, which would otherwise count as "energy" at every
  frequency. So for a grey-input model the dominant frequency, the bands and the
  structure are measured on the channel sum (one channel); for colour input the weight
  is its own effective filter. A layer whose C channels are identical (the shipped
  Fashion-MNIST weights, channel-averaged) is grey by construction
  (:func:`identical_channels`).
* **Dead filters** (:func:`dead_filters`), in the paper's sense: Fig. 6's caption puts
  "dead" in quotes and means the filter *pictures*, near-zero or structureless. A filter
  is dead when its effective filter's L2 norm is under ``DEAD_NORM_RATIO`` (0.1) of the
  layer's median norm, or it is unstructured (the test above). 0.1 is 20 dB below the
  layer's typical filter: its response to the same input is a tenth of a typical
  filter's, drawn with the layer's shared colour scale it is a blank tile, while filters
  that training shaped stay within a factor of a few of the median (a white-noise layer
  of the same shape has norm ratios within about 0.8-1.2; the shipped AlexNet's smallest
  structured filter has 0.35). The base rate is the fraction of a seeded white-noise
  layer of the same shape that the same rule flags (``noise_rate``, about 0.99: a layer
  at initialisation is noise); its complement is the chance a noise filter passes as
  structured, the structure test's false-positive rate (``NOISE_QUANTILE`` by
  construction). The functional count, a unit that never fires on held-out data, is
  ``dead-filters``'s other number (:meth:`vizcnn.methods.scan.FilterStats.dead`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from ..core.errors import BadArgumentError, BadInputError
from ..core.layers import conv_layers, feeding_layer, friendly_names, is_conv, resolve_layer

DEFAULT_SIZE = 64
BANDS = (1 / 6, 1 / 3)  # low | mid | extreme-high edges, cycles/pixel, fixed in advance
ENTROPY_BIN = 1 / 16  # cycles/pixel
NOISE_QUANTILE = 0.01
DEAD_NORM_RATIO = 0.1  # a filter under a tenth of the layer's median norm is "dead" (near zero)
_NOISE_SAMPLES = 256
_MAX_RADIUS = math.sqrt(0.5)  # the corner of the frequency grid


@dataclass(frozen=True)
class FilterSpectra:
    """Per-filter spectral numbers for N filters (or images); all tensors are on the input's device.

    power: (N, n, n) power spectrum summed over input channels, centred (DC at index
        ``n // 2``), rows = fy, columns = fx; None when computed with ``keep_power=False``.
    freq: (n,) the centred frequency axis in cycles/pixel (``-0.5 ... 0.5 - 1/n``).
    stride: (sy, sx) the stride the aliasing fraction refers to.
    kernel: (kh, kw) the filters' spatial size.
    peak: (N, 2) (fy, fx) of the largest bin, cycles/pixel.
    peak_frequency, mean_frequency: (N,) radial frequencies, cycles/pixel.
    alias_fraction: (N,) energy outside the stride's Nyquist square / total energy.
    flatness, structure: (N,) spectral flatness and the noise-calibrated structure score.
    structured: (N,) bool, flatness below the noise threshold ``flatness_threshold``;
        ``noise_flatness`` is the median noise flatness the structure score divides by.
    energy: (N,) sum of squared weights; norm = sqrt(energy); rms = norm / sqrt(C kh kw).
    """

    power: torch.Tensor | None
    freq: torch.Tensor
    stride: tuple[int, int]
    kernel: tuple[int, int]
    peak: torch.Tensor
    peak_frequency: torch.Tensor
    mean_frequency: torch.Tensor
    alias_fraction: torch.Tensor
    flatness: torch.Tensor
    structure: torch.Tensor
    structured: torch.Tensor
    flatness_threshold: torch.Tensor  # (N,) noise quantile for the filter's shape and active channels
    noise_flatness: torch.Tensor  # (N,) median flatness of white noise of that shape
    energy: torch.Tensor
    norm: torch.Tensor
    rms: torch.Tensor

    def __len__(self) -> int:
        return int(self.energy.shape[0])


def _pair(value, what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise BadArgumentError(f"{what} must be a positive integer or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise BadInputError(f"expected a tensor of filters (N, C, kh, kw) or an image (H, W), got {type(x).__name__}")
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() != 4:
        raise BadInputError(f"expected filters (N, C, kh, kw) or one image (H, W), got shape {tuple(x.shape)}; "
                            f"add a dimension to say which axes are which")
    if x.numel() == 0:
        raise BadInputError(f"empty tensor of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if not torch.isfinite(x).all():
        raise BadInputError("the filters hold NaN or Inf")
    return x.detach()


def fft_size(kernel: tuple[int, int], size: int | None = None) -> int:
    """The FFT size used for ``kernel``: ``size`` (default 64, or ``2 * max(kh, kw)`` when
    that is larger), which must be at least ``2 max(kh, kw) - 1`` so that the circular
    autocorrelation behind the aliasing fraction equals the linear one."""
    need = 2 * max(kernel) - 1
    if size is None:
        return max(DEFAULT_SIZE, need + 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < need:
        raise BadArgumentError(f"FFT size must be an integer >= 2*{max(kernel)}-1 = {need} for "
                               f"{kernel[0]}x{kernel[1]} filters, got {size!r}")
    return size


def _lag_weights(n: int, stride: int, device, dtype) -> torch.Tensor:
    """g(d) on the circular lag grid: the integral of e^{2 pi i f d} over |f| <= 1/(2s)."""
    lag = torch.fft.fftfreq(n, 1 / n, dtype=torch.float64)  # 0, 1, ..., -1 (signed lags)
    g = torch.sinc(lag / stride) / stride
    g[(lag != 0) & (lag.remainder(stride) == 0)] = 0.0  # exact zeros (sinc in floats is ~1e-17 there)
    return g.to(device=device, dtype=dtype)


def _raw_power(x: torch.Tensor, n: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, n, n) uncentred power summed over channels."""
    f = torch.fft.fft2(x, s=(n, n))
    return (f.real ** 2 + f.imag ** 2).sum(dim=1)


def _flatness(power: torch.Tensor) -> torch.Tensor:
    """exp(mean log P) / mean P per row of (N, n, n); 1 for an all-zero spectrum."""
    flat = power.flatten(1)
    mean = flat.mean(dim=1)
    floor = (mean * 1e-12).clamp_min(torch.finfo(flat.dtype).tiny)[:, None]
    geo = torch.exp(torch.log(flat.clamp_min(floor)).mean(dim=1))
    return torch.where(mean > 0, (geo / mean.clamp_min(torch.finfo(flat.dtype).tiny)).clamp(max=1.0),
                       torch.ones_like(mean))


@lru_cache(maxsize=64)
def _noise_flatness(channels: int, kh: int, kw: int, n: int) -> tuple[float, float]:
    """(median, NOISE_QUANTILE quantile) of the flatness of seeded white-Gaussian filters
    (channels, kh, kw) on an n x n grid. Seeded and computed on the CPU in float64 so it
    is the same everywhere and leaves the global RNG alone."""
    gen = torch.Generator().manual_seed(1234 + 7919 * channels + 131 * kh + kw)
    chunk = max(1, min(_NOISE_SAMPLES, (1 << 23) // max(1, channels * n * n)))
    values = []
    for start in range(0, _NOISE_SAMPLES, chunk):
        m = min(chunk, _NOISE_SAMPLES - start)
        noise = torch.randn(m, channels, kh, kw, generator=gen, dtype=torch.float64)
        values.append(_flatness(_raw_power(noise, n)))
    flat = torch.cat(values)
    return float(flat.median()), float(torch.quantile(flat, NOISE_QUANTILE))


def filter_spectra(weight: torch.Tensor, stride: int | tuple[int, int] = 1, *, size: int | None = None,
                   keep_power: bool = True, structure: bool = True, batch_size: int = 512) -> FilterSpectra:
    """Spectral numbers for each filter of ``weight`` (N, C, kh, kw), or each image of a
    batch (N, C, H, W) or a single (H, W) image, with the aliasing fraction for ``stride``.

    ``size``: FFT size (see :func:`fft_size`); ``keep_power=False`` drops the (N, n, n)
    spectra (for large batches of big projections); ``structure=False`` skips the noise
    calibration of the structure score (``structure`` is then NaN and ``structured``
    False; worth it for big images, whose calibration means 256 noise images of their
    size); ``batch_size``: most rows per FFT batch (fewer when the rows are large, to keep each
    batch near 128 MB). Computed in float64 on the input's device (float32 on MPS). The
    input is never modified.
    """
    x = _as_batch(weight)
    sy, sx = _pair(stride, "stride")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BadArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    N, C, kh, kw = x.shape
    n = fft_size((kh, kw), size)
    dev, dtype = x.device, torch.float64
    if dev.type == "mps":  # no float64 there
        dtype = torch.float32
    freq = torch.fft.fftfreq(n, dtype=dtype).to(dev)  # uncentred, cycles/pixel
    fy, fx = freq[:, None].expand(n, n), freq[None, :].expand(n, n)
    radius = torch.sqrt(fy ** 2 + fx ** 2).flatten()
    in_square = _lag_weights(n, sy, dev, dtype)[:, None] * _lag_weights(n, sx, dev, dtype)[None, :]

    parts: dict[str, list[torch.Tensor]] = {k: [] for k in
                                            ("power", "peak", "peak_f", "mean_f", "alias", "flat", "energy", "active")}
    rows = max(1, min(batch_size, (1 << 23) // (C * n * n)))  # about 128 MB of complex values per FFT batch
    for start in range(0, N, rows):
        xc = x[start:start + rows].to(dtype)
        p = _raw_power(xc, n)  # (m, n, n)
        flat = p.flatten(1)
        total = flat.sum(dim=1)  # n^2 * energy
        energy = (xc ** 2).sum(dim=(1, 2, 3))
        idx = flat.argmax(dim=1)
        peak = torch.stack([freq[idx // n], freq[idx % n]], dim=1)
        safe = total.clamp_min(torch.finfo(dtype).tiny)
        mean_f = (flat * radius).sum(dim=1) / safe
        r = torch.fft.ifft2(p).real  # autocorrelation, exact because n >= 2k - 1
        inside = (r * in_square).sum(dim=(1, 2)) / r[:, 0, 0].clamp_min(torch.finfo(dtype).tiny)
        alias = torch.where(energy > 0, (1 - inside).clamp(0.0, 1.0), torch.zeros_like(inside))
        parts["peak"].append(peak)
        parts["peak_f"].append(torch.where(energy > 0, peak.norm(dim=1), torch.zeros_like(energy)))
        parts["mean_f"].append(torch.where(energy > 0, mean_f, torch.zeros_like(energy)))
        parts["alias"].append(alias)
        parts["flat"].append(_flatness(p))
        parts["energy"].append(energy)
        parts["active"].append((xc ** 2).sum(dim=(2, 3)).gt(0).sum(dim=1))
        if keep_power:
            parts["power"].append(torch.fft.fftshift(p, dim=(-2, -1)).float())
    cat = {k: torch.cat(v) if v else None for k, v in parts.items()}

    # Calibrate against noise with the same number of active channels (grouped and
    # connection-table convolutions leave some channels at zero).
    active = cat["active"]
    median = torch.ones(N, dtype=dtype, device=dev)
    threshold = torch.zeros(N, dtype=dtype, device=dev)
    if not structure:
        median.fill_(float("nan"))
        threshold.fill_(float("nan"))
    for c in torch.unique(active).tolist() if structure else []:
        if c == 0:
            continue
        med, q = _noise_flatness(int(c), kh, kw, n)
        median[active == c], threshold[active == c] = med, q
    flatness = cat["flat"]
    score = (1 - flatness / median).clamp(0.0, 1.0)
    score = torch.where(active > 0, score, torch.zeros_like(score)) if structure else score
    energy = cat["energy"]
    return FilterSpectra(
        power=cat["power"], freq=torch.fft.fftshift(freq).float(), stride=(sy, sx), kernel=(kh, kw),
        peak=cat["peak"].float(), peak_frequency=cat["peak_f"].float(), mean_frequency=cat["mean_f"].float(),
        alias_fraction=cat["alias"].float(), flatness=flatness.float(), structure=score.float(),
        structured=flatness < threshold, flatness_threshold=threshold.float(),
        noise_flatness=median.float(), energy=energy.float(),
        norm=energy.sqrt().float(), rms=(energy / (C * kh * kw)).sqrt().float())


def noise_alias_fraction(stride: int | tuple[int, int]) -> float:
    """Expected aliasing fraction of a white-noise filter at ``stride``: the area outside
    the Nyquist square, ``1 - 1/(sy sx)``."""
    sy, sx = _pair(stride, "stride")
    return 1.0 - 1.0 / (sy * sx)


def band_of(frequency: torch.Tensor, bands: tuple[float, float] = BANDS) -> torch.Tensor:
    """0 (low), 1 (mid) or 2 (high) for each radial frequency, by the edges ``bands``."""
    lo, hi = _check_bands(bands)
    return (frequency >= lo).long() + (frequency >= hi).long()


def _check_bands(bands) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bands)
    except (TypeError, ValueError):
        raise BadArgumentError(f"bands must be two frequencies (low/mid, mid/high), got {bands!r}") from None
    if not 0 < lo < hi <= _MAX_RADIUS:
        raise BadArgumentError(f"band edges must satisfy 0 < low/mid < mid/high <= {_MAX_RADIUS:.3f} "
                               f"cycles/pixel, got {bands!r}")
    return lo, hi


def entropy_bins() -> list[float]:
    """Edges of the histogram behind ``frequency_entropy``: 1/16 cycles/px up to 0.5,
    then one bin for the corners (0.5 to sqrt(2)/2)."""
    edges = [i * ENTROPY_BIN for i in range(int(round(0.5 / ENTROPY_BIN)) + 1)]
    return edges + [_MAX_RADIUS + 1e-9]


def frequency_histogram(frequency: torch.Tensor) -> list[int]:
    """Counts of ``frequency`` in the bins of :func:`entropy_bins`."""
    edges = torch.tensor(entropy_bins(), dtype=torch.float64)
    idx = torch.bucketize(frequency.detach().double().cpu(), edges, right=True) - 1
    idx = idx.clamp(0, len(edges) - 2)
    return torch.bincount(idx, minlength=len(edges) - 1).tolist()


def normalised_entropy(counts: list[int]) -> float:
    """Shannon entropy of a histogram divided by log(number of bins): 0 to 1."""
    total = sum(counts)
    if total == 0 or len(counts) < 2:
        return 0.0
    h = -sum(c / total * math.log(c / total) for c in counts if c)
    return h / math.log(len(counts))


def _stats(t: torch.Tensor) -> dict[str, float]:
    t = t.detach().double().cpu()
    return {"mean": float(t.mean()), "median": float(t.median()), "min": float(t.min()), "max": float(t.max())}


def summarize(spectra: FilterSpectra, bands: tuple[float, float] = BANDS) -> dict:
    """The layer's numbers as plain Python (for summary.json)."""
    lo, hi = _check_bands(bands)
    s = spectra
    n = len(s)
    band = band_of(s.peak_frequency, (lo, hi)).cpu()
    counts = torch.bincount(band, minlength=3).tolist()
    f = s.freq.double().cpu()
    grid = band_of(torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).flatten(), (lo, hi))
    noise = (torch.bincount(grid, minlength=3).double() / grid.numel()).tolist()
    hist = frequency_histogram(s.peak_frequency)
    energy = s.energy.double()
    weighted = float((s.alias_fraction.double() * energy).sum() / energy.sum()) if energy.sum() > 0 else 0.0
    structured = int(s.structured.sum())
    calibrated = not bool(torch.isnan(s.structure).all())
    return {
        "filters": n,
        "kernel": list(s.kernel),
        "stride": list(s.stride),
        "fft_size": int(s.freq.numel()),
        "nyquist": [0.5 / s.stride[0], 0.5 / s.stride[1]],
        "alias_fraction": {**_stats(s.alias_fraction), "energy_weighted": weighted,
                           "noise_expected": noise_alias_fraction(s.stride)},
        "peak_frequency": _stats(s.peak_frequency),
        "mean_frequency": _stats(s.mean_frequency),
        "bands": {
            "edges": [lo, hi],
            "counts": {"low": counts[0], "mid": counts[1], "high": counts[2]},
            "fractions": {"low": counts[0] / n, "mid": counts[1] / n, "high": counts[2] / n},
            "noise_expected": {"low": noise[0], "mid": noise[1], "high": noise[2]},
        },
        "mid_fraction": counts[1] / n,
        "frequency_histogram": {"edges": entropy_bins(), "counts": hist},
        "frequency_entropy": normalised_entropy(hist),
        "structure": {**_stats(s.structure), "structured": structured, "unstructured": n - structured,
                      "unstructured_fraction": (n - structured) / n,
                      "noise_quantile": NOISE_QUANTILE} if calibrated else None,
        "norm": _stats(s.norm),
        "rms": _stats(s.rms),
    }


def per_filter(spectra: FilterSpectra, bands: tuple[float, float] = BANDS) -> list[dict]:
    """One plain dict per filter (for summary.json)."""
    s = spectra
    names = ("low", "mid", "high")
    band = band_of(s.peak_frequency, bands).tolist()
    cols = {k: getattr(s, k).detach().cpu().tolist() for k in
            ("peak_frequency", "mean_frequency", "alias_fraction", "flatness", "structure", "structured",
             "norm", "rms")}
    peaks = s.peak.detach().cpu().tolist()
    return [{"filter": i, "peak_frequency": cols["peak_frequency"][i], "peak_fy_fx": peaks[i],
             "band": names[band[i]], "mean_frequency": cols["mean_frequency"][i],
             "alias_fraction": cols["alias_fraction"][i], "flatness": cols["flatness"][i],
             "structure": None if math.isnan(cols["structure"][i]) else cols["structure"][i],
             "structured": bool(cols["structured"][i]),
             "norm": cols["norm"][i], "rms": cols["rms"][i]} for i in range(len(s))]


def identical_channels(weight: torch.Tensor) -> bool:
    """Whether every filter of ``weight`` (N, C, kh, kw), C > 1, has the same weights in
    all C input channels: the layer then sees its input only through the channel sum
    (the shipped Fashion-MNIST weights are channel-averaged this way)."""
    x = _as_batch(weight)
    return x.shape[1] > 1 and bool((x == x[:, :1]).all())


def effective_filters(weight: torch.Tensor, grey: bool) -> torch.Tensor:
    """The part of each filter the data trains: with ``grey`` (grey images fed as C equal
    channels) the channel sum ``(N, 1, kh, kw)``, since the response to a grey image x is
    ``(sum_c w_c) * x`` and the colour differences never receive a gradient; otherwise
    the weight itself. A detached copy; the input is never modified."""
    if not isinstance(grey, bool):
        raise BadArgumentError(f"grey must be True or False, got {grey!r}")
    x = _as_batch(weight)
    return x.sum(dim=1, keepdim=True) if grey else x.clone()


def grey_weights(model_name: str, weights) -> bool:
    """Whether shipped learned weights ``weights`` of ``model_name`` were trained on grey
    images (their card says so); False for random, ImageNet and user checkpoints."""
    from ..models.shipped import shipped_weights

    card = shipped_weights(model_name).get(str(weights))
    if card is None:
        return False
    return "grey" in str(card.get("conv1", "")) or "grey" in str(card.get("data", ""))


@dataclass(frozen=True)
class DeadFilters:
    """Which filters of a layer are "dead" in the paper's sense (near-zero or structureless
    pictures), measured on the effective filters (see the module docstring).

    norm: (N,) L2 norm of each effective filter; norm_ratio: (N,) norm / the layer's
    median norm (0 for every filter of an all-zero layer); structure, structured: (N,)
    the noise-calibrated structure score and test; low_norm: (N,) norm_ratio <
    ``threshold``; dead: (N,) low_norm or not structured. ``grey``: whether the channel
    sum was measured. ``noise_rate``: the fraction of a seeded white-noise layer of the
    same effective shape the same rule flags; ``noise_structured_rate``: the fraction of
    it called structured (the structure test's false-positive rate).
    """

    norm: torch.Tensor
    norm_ratio: torch.Tensor
    structure: torch.Tensor
    structured: torch.Tensor
    low_norm: torch.Tensor
    dead: torch.Tensor
    grey: bool
    threshold: float
    count: int
    low_norm_count: int
    unstructured_count: int
    noise_rate: float
    noise_structured_rate: float

    def __len__(self) -> int:
        return int(self.dead.shape[0])

    @property
    def indices(self) -> list[int]:
        return self.dead.nonzero().flatten().tolist()

    def to_json(self) -> dict:
        """The numbers as plain Python (for summary.json)."""
        n = len(self)
        return {"definition": "dead filters (near-zero or structureless weights): effective filter's norm < "
                              f"{self.threshold:g} x the layer median, or no spatial structure",
                "effective": "channel sum (grey input)" if self.grey else "the weights",
                "filters": n, "dead": self.count, "dead_fraction": self.count / n,
                "dead_filters": self.indices, "low_norm": self.low_norm_count,
                "unstructured": self.unstructured_count, "norm_ratio_threshold": self.threshold,
                "noise_rate": self.noise_rate, "noise_structured_rate": self.noise_structured_rate,
                "norm_ratio": self.norm_ratio.double().cpu().tolist()}


def _dead_rule(eff: torch.Tensor, threshold: float, size: int | None, spectra: FilterSpectra | None = None):
    s = filter_spectra(eff, 1, size=size, keep_power=False) if spectra is None else spectra
    norm = s.norm.double()
    median = norm.median()
    ratio = norm / median if median > 0 else torch.zeros_like(norm)
    low = ratio < threshold
    return s, norm, ratio, low, low | ~s.structured


@lru_cache(maxsize=64)
def _noise_dead_rates(channels: int, kh: int, kw: int, size: int | None, threshold: float) -> tuple[float, float]:
    """(flagged, structured) fractions of 256 seeded white-Gaussian filters (channels, kh, kw)
    under the dead-filter rule; seeded apart from the structure calibration's noise."""
    gen = torch.Generator().manual_seed(4321 + 7919 * channels + 131 * kh + kw)
    noise = torch.randn(_NOISE_SAMPLES, channels, kh, kw, generator=gen, dtype=torch.float64)
    s, _norm, _ratio, _low, dead = _dead_rule(noise, threshold, size)
    return float(dead.double().mean()), float(s.structured.double().mean())


def dead_filters(weight: torch.Tensor, *, grey: bool = False, threshold: float = DEAD_NORM_RATIO,
                 size: int | None = None, spectra: FilterSpectra | None = None) -> DeadFilters:
    """The "dead" filters of ``weight`` (N, C, kh, kw) in the paper's sense: the effective
    filter (:func:`effective_filters`; the channel sum with ``grey``) has a norm under
    ``threshold`` x the layer's median norm, or no spatial structure (the structure test
    of :func:`filter_spectra`). With the base rate of a seeded white-noise layer of the
    same shape (see :class:`DeadFilters`). ``size``: FFT size (:func:`fft_size`);
    ``spectra``: the effective filters' :func:`filter_spectra` (any stride, structure
    calibrated) when the caller has it already, so the layer is not transformed twice."""
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold < 1:
        raise BadArgumentError(f"the norm-ratio threshold must be in (0, 1), got {threshold!r}")
    eff = effective_filters(weight, grey)
    if spectra is not None and (len(spectra) != eff.shape[0] or spectra.kernel != tuple(eff.shape[-2:])
                                or bool(torch.isnan(spectra.structure).any())):
        raise BadArgumentError("spectra must be the structure-calibrated filter_spectra of these effective filters")
    s, norm, ratio, low, dead = _dead_rule(eff, float(threshold), size, spectra)
    _n, c, kh, kw = eff.shape
    noise_rate, noise_structured = _noise_dead_rates(c, kh, kw, size, float(threshold))
    return DeadFilters(norm=norm.float(), norm_ratio=ratio.float(), structure=s.structure, structured=s.structured,
                       low_norm=low, dead=dead, grey=grey, threshold=float(threshold), count=int(dead.sum()),
                       low_norm_count=int(low.sum()), unstructured_count=int((~s.structured).sum()),
                       noise_rate=noise_rate, noise_structured_rate=noise_structured)


@dataclass(frozen=True)
class ConvFilters:
    """The filters of one convolution, as the spectra see them.

    name: the layer name asked for (or the default's readable name); path: the
    convolution module's path; weight: (Cout, Cin/groups, kh, kw), a detached copy on
    the CPU-or-model device, with dilation expanded to the effective kernel (zeros
    between taps) so that frequencies are in input pixels; stride: (sy, sx).
    """

    name: str
    path: str
    weight: torch.Tensor
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def _conv_weight(module: nn.Module) -> torch.Tensor | None:
    """The (C_out, C_in, kh, kw) filters of a 2-D convolution (:func:`is_conv`; LeNet-5's
    connection-table C3 gives its dense ``full_weight``), else None."""
    if not is_conv(module) or getattr(module, "transposed", False):
        return None
    weight = getattr(module, "full_weight", module.weight)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 4 else None


def _convs_in(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{p}" if p else prefix for p, m in module.named_modules() if _conv_weight(m) is not None]


def _readable(model: nn.Module, path: str) -> str:
    """A conv path as people name it: its friendly name, else the outermost wrapper that
    holds only this convolution (GoogLeNet's ``conv1`` for ``conv1.conv``)."""

    for name, target in friendly_names(model).items():
        if name.startswith("conv") and _find_conv(model, target, name)[0] == path:
            return name
    modules = dict(model.named_modules())
    name = path
    while "." in name:
        parent = name.rsplit(".", 1)[0]
        if isinstance(modules[parent], nn.Sequential) or len(_convs_in(modules[parent], parent)) != 1:
            break
        name = parent
    return name


def _find_conv(model: nn.Module, path: str, asked: str) -> tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    module = modules[path]
    if _conv_weight(module) is not None:
        return path, module
    inside = _convs_in(module, path)
    if len(inside) == 1:
        return inside[0], modules[inside[0]]
    if len(inside) > 1:
        shown = ", ".join(inside[:6]) + (", ..." if len(inside) > 6 else "")
        raise BadArgumentError(f"layer {asked!r} ({path}) holds {len(inside)} convolutions ({shown}); name one of them")
    # a name for the ReLU/BatchNorm right after a convolution (what friendly names point at)

    feeding = feeding_layer(model, path)
    if feeding is not None and _conv_weight(modules[feeding]) is not None:
        return feeding, modules[feeding]
    raise BadArgumentError(f"layer {asked!r} ({path}, {type(module).__name__}) is not a convolution; "
                           f"convolutions: {', '.join(conv_layers(model)[:12])}")


def conv_filters(model: nn.Module, layer: str | None = None) -> ConvFilters:
    """The filters of ``layer`` (a friendly name such as ``conv1``, a module path, or a
    wrapper holding one convolution such as GoogLeNet's ``conv1``; default: the model's
    first convolution). A name for a ReLU/BatchNorm right after a convolution in a
    Sequential (what friendly names point at) means that convolution. The model is only
    read: the weight is a detached copy."""
    if not isinstance(model, nn.Module):
        raise BadInputError(f"expected an nn.Module, got {type(model).__name__}")
    if layer is None:
        paths = [p for p, m in model.named_modules() if p and _conv_weight(m) is not None]
        if not paths:
            raise BadArgumentError(f"{type(model).__name__} has no 2-D convolution")
        path, module = paths[0], dict(model.named_modules())[paths[0]]
        name = _readable(model, path)
    else:

        target, _call = resolve_layer(model, layer)  # unknown name -> UnknownNameError with close matches
        path, module = _find_conv(model, target, layer)
        name = layer
    with torch.no_grad():
        weight = _conv_weight(module).detach().clone()
    dilation = _pair(tuple(getattr(module, "dilation", (1, 1))), "dilation")
    if dilation != (1, 1):
        out_c, in_c, kh, kw = weight.shape
        spread = weight.new_zeros(out_c, in_c, dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
        spread[:, :, ::dilation[0], ::dilation[1]] = weight
        weight = spread
    stride = _pair(tuple(getattr(module, "stride", (1, 1))), "stride")
    return ConvFilters(name, path, weight, stride, dilation, int(getattr(module, "groups", 1)))


def channel_sum_measured(model: nn.Module, conv: ConvFilters, grey: bool = False) -> bool:
    """Whether ``conv``'s effective filter is its channel sum: ``grey`` input (grey images
    fed as equal channels) and ``conv`` is the model's first convolution, the one that sees
    the image, or ``conv``'s channels are identical (:func:`identical_channels`). Never for a
    single-channel layer, whose sum is itself."""
    if conv.weight.shape[1] == 1:
        return False
    if grey and conv.path == conv_filters(model).path:
        return True
    return identical_channels(conv.weight)


def layer_dead_filters(model: nn.Module, layer: str | None = None, *, grey: bool = False,
                       size: int | None = None) -> tuple[ConvFilters, DeadFilters]:
    """The convolution ``layer`` (:func:`conv_filters`) and its dead filters
    (:func:`dead_filters`), measured on the channel sum where
    :func:`channel_sum_measured` says so. The model is only read."""
    conv = conv_filters(model, layer)
    return conv, dead_filters(conv.weight, grey=channel_sum_measured(model, conv, grey), size=size)


__all__ = ["BANDS", "DEAD_NORM_RATIO", "DEFAULT_SIZE", "ENTROPY_BIN", "NOISE_QUANTILE", "ConvFilters", "DeadFilters",
           "FilterSpectra", "band_of", "channel_sum_measured", "conv_filters", "dead_filters", "effective_filters", "grey_weights",
           "identical_channels", "layer_dead_filters", "entropy_bins", "fft_size", "filter_spectra", "frequency_histogram", "noise_alias_fraction", "normalised_entropy",
           "per_filter", "summarize"]
