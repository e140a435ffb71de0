"""First-layer spectra: power spectra against numpy, aliasing fractions against an
independent FFT-grid estimate and known signals, the structure score on seeded noise
and Gabor filters, layer resolution across the zoo's shapes, and `vizcnn filters`."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_untouched, snapshot
from torch import nn

from cli.main import cli
from vizcnn.core.errors import BadArgumentError, BadInputError, UnknownNameError
from vizcnn.methods.spectra import (conv_filters, filter_spectra, frequency_histogram, noise_alias_fraction,
                                    normalised_entropy, per_filter, summarize)


def checkerboard(k: int, channels: int = 3) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    return ((-1.0) ** (x + y))[None, None].repeat(1, channels, 1, 1).double()


def gaussian_blob(k: int, sigma: float, channels: int = 3) -> torch.Tensor:
    r = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return g[None, None].repeat(1, channels, 1, 1)


def gabor(k: int, freq: float, theta: float, phase: float, sigma: float) -> torch.Tensor:
    r = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    u = x * math.cos(theta) + y * math.sin(theta)
    return torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2)) * torch.cos(2 * math.pi * freq * u + phase)


# --- aliasing ---------------------------------------------------------------------------------

def test_checkerboard_aliases_at_stride_4_but_not_at_stride_1():
    board = checkerboard(11)
    assert filter_spectra(board, 4).alias_fraction.item() > 0.97
    assert filter_spectra(board, 2).alias_fraction.item() > 0.9
    # Stride 1 keeps everything up to the input's own Nyquist (0.5): nothing aliases.
    assert filter_spectra(board, 1).alias_fraction.item() == 0.0


def test_gaussian_blob_hardly_aliases():
    blob = gaussian_blob(21, 3.0)
    assert filter_spectra(blob, 4).alias_fraction.item() < 0.01
    assert filter_spectra(blob, 2).alias_fraction.item() < 1e-4


@pytest.mark.parametrize("stride", [2, 4, (2, 4)])
def test_alias_fraction_matches_a_fine_fft_grid(stride):
    # Independent estimate: numpy's FFT on a 512 grid, energy outside |fx| <= 1/(2 sx),
    # |fy| <= 1/(2 sy), the bins exactly on the boundary counted half.
    w = np.random.default_rng(0).standard_normal((6, 3, 7, 9))
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    n = 512
    power = (np.abs(np.fft.fft2(w, s=(n, n))) ** 2).sum(axis=1)
    f = np.abs(np.fft.fftfreq(n))

    def inside(s):
        return np.where(np.isclose(f, 0.5 / s), 0.5, (f < 0.5 / s).astype(float))

    expected = 1 - (power * inside(sy)[:, None] * inside(sx)[None, :]).sum(axis=(1, 2)) / power.sum(axis=(1, 2))
    got = filter_spectra(torch.from_numpy(w), stride, structure=False).alias_fraction.double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_alias_fraction_does_not_depend_on_fft_size():
    w = torch.randn(4, 3, 11, 11, generator=torch.Generator().manual_seed(1))
    a = filter_spectra(w, 4, size=21, structure=False).alias_fraction
    b = filter_spectra(w, 4, size=64, structure=False).alias_fraction
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("stride, k", [(4, 11), (2, 7)])
def test_white_noise_aliases_the_area_outside_the_nyquist_square(stride, k):
    w = torch.randn(400, 3, k, k, generator=torch.Generator().manual_seed(2))
    got = filter_spectra(w, stride, keep_power=False, structure=False).alias_fraction.mean().item()
    assert noise_alias_fraction(stride) == 1 - 1 / stride ** 2
    assert abs(got - noise_alias_fraction(stride)) < 0.01


# --- spectrum and dominant frequency ----------------------------------------------------------

def test_power_spectrum_matches_numpy_and_parseval():
    w = np.random.default_rng(3).standard_normal((2, 3, 5, 5))
    s = filter_spectra(torch.from_numpy(w), 1, size=16)
    expected = np.fft.fftshift((np.abs(np.fft.fft2(w, s=(16, 16))) ** 2).sum(axis=1), axes=(-2, -1))
    np.testing.assert_allclose(s.power.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.freq.numpy(), np.fft.fftshift(np.fft.fftfreq(16)), atol=1e-7)
    # Parseval: the mean of the power over the grid is the filter's energy
    np.testing.assert_allclose(s.power.double().mean(dim=(1, 2)).numpy(), (w ** 2).sum(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(s.norm.numpy(), np.sqrt((w ** 2).sum(axis=(1, 2, 3))), rtol=1e-5)
    np.testing.assert_allclose(s.rms.numpy(), np.sqrt((w ** 2).mean(axis=(1, 2, 3))), rtol=1e-5)


def test_tiny_cosine_filter_spectrum_by_hand():
    # cos(2 pi x / 4) on 4 taps = [1, 0, -1, 0]: |W(f)|^2 = |1 - e^{-4 pi i f}|^2 = 4 sin^2(2 pi f)
    w = torch.tensor([1.0, 0.0, -1.0, 0.0]).view(1, 1, 1, 4)
    s = filter_spectra(w, 1, size=8)
    row = s.power[0, 4].double().numpy()  # fy = 0 row of the centred spectrum
    f = np.fft.fftshift(np.fft.fftfreq(8))
    np.testing.assert_allclose(row, 4 * np.sin(2 * np.pi * f) ** 2, atol=1e-6)
    assert s.peak_frequency.item() == pytest.approx(0.25)
    assert abs(s.peak[0, 1].item()) == pytest.approx(0.25) and s.peak[0, 0].item() == 0


@pytest.mark.parametrize("f0", [0.125, 0.1875, 0.25, 0.375])
def test_dominant_frequency_of_a_cosine(f0):
    x = torch.arange(16, dtype=torch.float64)
    w = torch.cos(2 * math.pi * f0 * x).expand(16, 16).reshape(1, 1, 16, 16)
    s = filter_spectra(w, 1)
    assert s.peak_frequency.item() == pytest.approx(f0, abs=1 / 64)
    assert s.peak[0, 0].item() == 0  # no vertical frequency
    rotated = filter_spectra(w.transpose(-1, -2), 1)
    assert rotated.peak[0, 1].item() == 0 and abs(rotated.peak[0, 0].item()) == pytest.approx(f0, abs=1 / 64)


def test_mean_frequency_of_noise_and_of_a_blob():
    noise = torch.randn(200, 3, 11, 11, generator=torch.Generator().manual_seed(4))
    # the mean distance from the centre of the unit square: (sqrt 2 + asinh 1) / 6
    assert filter_spectra(noise, 4).mean_frequency.mean().item() == pytest.approx(0.3826, abs=0.01)
    blob = filter_spectra(gaussian_blob(11, 2.0), 4)
    assert blob.peak_frequency.item() == 0 and blob.mean_frequency.item() < 0.1


# --- structure --------------------------------------------------------------------------------

@pytest.mark.parametrize("k, channels", [(11, 3), (7, 3), (5, 1)])
def test_structure_separates_noise_from_gabor_filters(k, channels):
    gen = torch.Generator().manual_seed(5)
    gabors = []
    for _ in range(100):
        v = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        colour = torch.randn(channels, 1, 1, generator=gen, dtype=torch.float64)
        g = gabor(k, 0.05 + 0.4 * v[0], math.pi * v[1], 2 * math.pi * v[2], k / 6 + k / 6 * v[3])
        gabors.append(colour * g)
    noise = torch.randn(100, channels, k, k, generator=gen, dtype=torch.float64)
    s_gabor, s_noise = filter_spectra(torch.stack(gabors), 2), filter_spectra(noise, 2)
    correct = int(s_gabor.structured.sum()) + int((~s_noise.structured).sum())
    assert correct >= 180, correct
    assert s_noise.structure.median().item() < 0.05 < 0.5 < s_gabor.structure.median().item()
    # the score does not care about the filter's scale
    torch.testing.assert_close(filter_spectra(noise * 1e-3, 2).structure, s_noise.structure, atol=1e-5, rtol=0)


def test_edge_and_blob_are_structured_zero_filter_is_not():
    edge = torch.zeros(1, 3, 7, 7, dtype=torch.float64)
    edge[..., :, 3:] = 1.0
    edge[..., :, :3] = -1.0
    s = filter_spectra(torch.cat([edge, gaussian_blob(7, 1.5), torch.zeros(1, 3, 7, 7, dtype=torch.float64)]), 2)
    assert s.structured.tolist() == [True, True, False]
    zero = per_filter(s)[2]
    assert zero["alias_fraction"] == 0 and zero["flatness"] == 1 and zero["norm"] == 0
    assert all(math.isfinite(v) for v in zero.values() if isinstance(v, float))


# --- summary ----------------------------------------------------------------------------------

def test_summary_bands_coverage_and_entropy():
    x = torch.arange(16, dtype=torch.float64)
    rows = [torch.cos(2 * math.pi * f * x).expand(16, 16) for f in (0.0, 0.0625, 0.1875, 0.375)]
    s = filter_spectra(torch.stack(rows)[:, None], 2)
    numbers = summarize(s)
    assert numbers["bands"]["counts"] == {"low": 2, "mid": 1, "high": 1}
    assert numbers["mid_fraction"] == 0.25
    assert numbers["filters"] == 4 and numbers["stride"] == [2, 2] and numbers["nyquist"] == [0.25, 0.25]
    assert numbers["alias_fraction"]["noise_expected"] == 0.75
    noise_bands = numbers["bands"]["noise_expected"]  # the bands' shares of the frequency grid
    assert noise_bands["low"] == pytest.approx(math.pi / 36, abs=0.01)  # a disc of radius 1/6
    assert noise_bands["mid"] == pytest.approx(math.pi * 3 / 36, abs=0.01)  # the ring 1/6 to 1/3
    assert [f["band"] for f in per_filter(s)] == ["low", "low", "mid", "high"]
    assert sum(numbers["frequency_histogram"]["counts"]) == 4
    json.dumps(numbers)  # plain Python only
    assert normalised_entropy([5, 0, 0]) == 0.0 and normalised_entropy([2, 2, 2, 2]) == pytest.approx(1.0)
    assert frequency_histogram(torch.tensor([0.0, 0.7071])) == [1, 0, 0, 0, 0, 0, 0, 0, 1]
    with pytest.raises(BadArgumentError):
        summarize(s, bands=(0.3, 0.1))


def test_bad_inputs_are_refused_in_one_line():
    with pytest.raises(BadInputError, match="shape"):
        filter_spectra(torch.zeros(3, 5, 5), 1)
    with pytest.raises(BadInputError, match="NaN"):
        filter_spectra(torch.full((1, 1, 3, 3), float("nan")), 1)
    with pytest.raises(BadArgumentError, match="stride"):
        filter_spectra(torch.zeros(1, 1, 3, 3), 0)
    with pytest.raises(BadArgumentError, match="FFT size"):
        filter_spectra(torch.zeros(1, 1, 11, 11), 1, size=16)
    one_image = filter_spectra(torch.rand(40, 30), 4, structure=False)  # a single 2-D image is accepted
    assert one_image.power.shape == (1, 80, 80)
    assert summarize(one_image)["structure"] is None and per_filter(one_image)[0]["structure"] is None


def test_input_is_not_modified():
    w = torch.randn(3, 3, 5, 5)
    before = w.clone()
    filter_spectra(w, 2)
    assert torch.equal(w, before)


# --- layers -----------------------------------------------------------------------------------

class _Wrapped(nn.Module):  # GoogLeNet's BasicConv2d: a convolution and its batch-norm
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(8)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = _Wrapped()
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3))
        self.head = nn.Sequential(nn.Conv2d(8, 4, 3, stride=(1, 2), dilation=2), nn.ReLU(), nn.MaxPool2d(2))


def test_layer_resolution_finds_the_convolution():
    tiny = _Tiny()
    first = conv_filters(tiny)
    assert (first.name, first.path, first.stride) == ("conv1", "conv1.conv", (2, 2))
    assert conv_filters(tiny, "conv1").path == "conv1.conv"
    relu = conv_filters(tiny, "head.1")  # the ReLU after a conv means that conv
    assert relu.path == "head.0" and relu.stride == (1, 2) and relu.dilation == (2, 2)
    assert relu.weight.shape == (4, 8, 5, 5) and torch.equal(relu.weight[..., ::2, ::2], tiny.head[0].weight)
    assert relu.weight[..., 1::2, :].abs().sum() == 0
    with pytest.raises(BadArgumentError, match="holds 2 convolutions"):
        conv_filters(tiny, "block")
    with pytest.raises(BadArgumentError, match="not a convolution"):
        conv_filters(tiny, "head.2")
    with pytest.raises(UnknownNameError):
        conv_filters(tiny, "conv9")


def test_zoo_first_layers():
    from vizcnn.models import build_model

    lenet = build_model("lenet5")
    c1 = conv_filters(lenet)
    assert (c1.name, c1.weight.shape, c1.stride) == ("c1", (6, 1, 5, 5), (1, 1))
    c3 = conv_filters(lenet, "c3")  # the connection-table convolution: zeros where unconnected
    assert c3.weight.shape == (16, 6, 5, 5)
    s = filter_spectra(c3.weight, c3.stride)
    assert torch.isfinite(s.structure).all() and len(s) == 16
    resnet = build_model("resnet18", num_classes=10)
    r = conv_filters(resnet)
    assert (r.name, r.path, r.stride, r.weight.shape) == ("conv1", "conv1", (2, 2), (64, 3, 7, 7))
    with pytest.raises(BadArgumentError, match="name one of them"):
        conv_filters(resnet, "layer1.0")


def test_write_filters_leaves_the_model_untouched(tmp_path):
    from vizcnn.io.output import OutputDir
    from vizcnn.models import build_model
    from vizcnn.writers.filters import write_filters

    model = build_model("lenet5").train()
    before = snapshot(model)
    summary = write_filters(OutputDir(tmp_path / "o", "filters"), model, "lenet5", "c1")
    assert_untouched(model, before)
    assert summary["layer"] == "c1" and summary["weight_shape"] == [6, 1, 5, 5]


# --- command line -----------------------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_filters_cli_on_alexnet(tmp_path):
    out = tmp_path / "run"
    result = run("filters", "alexnet", "--weights", "random", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary == json.loads((out / "summary.json").read_text())
    assert sorted(os.listdir(out)) == sorted(summary["files"] + ["summary.json", ".vizcnn-manifest.json"])
    assert set(summary["files"]) == {"filters.png", "spectra.png", "spectra_summary.png"}
    for name in summary["files"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # conv1 is features.1 (the ReLU) here as in `vizcnn layers`; its filters are features.0's
    assert (summary["command"], summary["model"], summary["layer"], summary["module"], summary["conv"]) == \
        ("filters", "alexnet", "conv1", "features.1", "features.0")
    assert summary["weight_shape"] == [64, 3, 11, 11] and summary["stride"] == [4, 4]
    assert summary["nyquist"] == [0.125, 0.125]
    for key in ("alias_fraction", "peak_frequency", "mean_frequency", "bands", "mid_fraction",
                "frequency_entropy", "structure", "norm", "rms"):
        assert key in summary
    assert len(summary["per_filter"]) == 64
    assert set(summary["per_filter"][0]) >= {"filter", "peak_frequency", "mean_frequency", "band",
                                             "alias_fraction", "structure", "structured", "norm", "rms"}
    # random weights are noise: the area outside the Nyquist square, and no structure
    assert abs(summary["alias_fraction"]["mean"] - 0.9375) < 0.02
    assert summary["structure"]["unstructured"] >= 60


def test_filters_cli_bad_layer_or_size_is_one_line_exit_2(tmp_path):
    for layer, fragment in (("s2", "not a convolution"), ("c9", "unknown layer"), ("c1 --fft-size 5", "FFT size")):
        layer, *more = layer.split()
        result = run("filters", "lenet5", "--weights", "random", "--layer", layer, *more, "--out", tmp_path / layer)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.output
        assert not (tmp_path / layer).exists()
