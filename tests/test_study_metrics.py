"""The study's metrics (vizcnn.study.metrics, vizcnn.methods.spectra's dead filters) on
hand-built filters and images whose answer is known."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_untouched, snapshot
from torch import nn

from vizcnn.core.errors import BadArgumentError, BadInputError
from vizcnn.methods.spectra import BANDS, dead_filters, effective_filters, filter_spectra, identical_channels
from vizcnn.study.metrics import (data_alias_fraction, dense_alias_fraction, frequency_coverage,
                                  projection_hf_ratio, shift_variation)


def cosine_image(f: float, n: int = 64, channels: int = 1, amplitude: float = 1.0) -> torch.Tensor:
    """(1, C, n, n): cos(2 pi f x), varying along x only."""
    x = torch.arange(n, dtype=torch.float64)
    return (amplitude * torch.cos(2 * math.pi * f * x)).expand(n, n).repeat(1, channels, 1, 1)


def blurred(noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Circular Gaussian blur, by the Gaussian's transfer function exp(-2 pi^2 sigma^2 f^2)."""
    h, w = noise.shape[-2:]
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    transfer = torch.exp(-2 * math.pi ** 2 * sigma ** 2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(noise.double()) * transfer).real


def delta(k: int = 5, channels: int = 1) -> torch.Tensor:
    w = torch.zeros(1, channels, k, k, dtype=torch.float64)
    w[:, :, k // 2, k // 2] = 1.0
    return w


def gabor(k: int, freq: float, theta: float = 0.3, sigma: float | None = None) -> torch.Tensor:
    r = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    sigma = k / 4 if sigma is None else sigma
    u = x * math.cos(theta) + y * math.sin(theta)
    return torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2)) * torch.cos(2 * math.pi * freq * u)


# --- aliasing (a): the dense response's energy outside the stride's Nyquist square ------------

def test_delta_filter_on_a_cosine_above_and_below_nyquist():
    w = delta(5)
    above = dense_alias_fraction(w, cosine_image(0.25), stride=4, padding=2)  # 1/4 > 1/8
    below = dense_alias_fraction(w, cosine_image(1 / 16), stride=4, padding=2)  # 1/16 < 1/8
    assert above["fraction"] == pytest.approx(1.0, abs=1e-9)
    assert below["fraction"] == pytest.approx(0.0, abs=1e-9)
    # equal energy above and below: half of it folds
    mix = cosine_image(0.25) + cosine_image(1 / 16)
    assert dense_alias_fraction(w, mix, 4, 2)["fraction"] == pytest.approx(0.5, abs=1e-9)
    # the same cosine is below stride 2's Nyquist frequency (1/4, on the edge: half folds)
    assert dense_alias_fraction(w, cosine_image(3 / 16), 2, 2)["fraction"] == pytest.approx(0.0, abs=1e-9)
    assert dense_alias_fraction(w, cosine_image(3 / 16), 4, 2)["fraction"] == pytest.approx(1.0, abs=1e-9)
    assert above["stride"] == 4 and above["nyquist"] == 0.125


def test_constant_background_is_not_counted():
    w = delta(5)
    lit = cosine_image(1 / 16) + 100.0  # a bright background is DC: never folded, removed per map
    assert dense_alias_fraction(w, lit, 4, 2)["fraction"] == pytest.approx(0.0, abs=1e-9)


def test_white_noise_gives_the_area_outside_the_square():
    noise = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for s in (2, 4):
        assert data_alias_fraction(noise, s) == pytest.approx(1 - 1 / s ** 2, abs=0.01)
        r = dense_alias_fraction(delta(3, 3), noise, s, padding=1)
        assert r["fraction"] == pytest.approx(1 - 1 / s ** 2, abs=0.01)
        assert len(r["values"]) == len(r["weights"]) == 8
        # the overall fraction is the energy-weighted mean of the per-image values
        wv = sum(v * q for v, q in zip(r["values"], r["weights"])) / sum(r["weights"])
        assert r["fraction"] == pytest.approx(wv, rel=1e-9)


def test_blurred_images_hold_nothing_to_alias():
    noise = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    smooth = blurred(noise, 4.0)
    assert data_alias_fraction(smooth, 4) < 1e-3
    # an object on a plain background (as on a canvas): the map fades out before its edges
    r = torch.arange(64, dtype=torch.float64)
    fade = torch.exp(-((r - 31.5) / 12) ** 2)
    obj = smooth * fade[:, None] * fade[None, :]
    assert dense_alias_fraction(gabor(7, 0.1)[None, None], obj, 4)["fraction"] < 1e-3


def test_aliasing_inputs_are_checked():
    with pytest.raises(BadInputError, match="channels"):
        dense_alias_fraction(delta(3, 3), torch.zeros(1, 1, 16, 16), 4)
    with pytest.raises(BadArgumentError, match="stride"):
        data_alias_fraction(torch.zeros(1, 1, 16, 16), 0)
    with pytest.raises(BadInputError):
        data_alias_fraction(torch.zeros(16, 16), 2)


# --- dead filters, in the paper's sense -------------------------------------------------------

def test_zero_and_noise_filters_are_dead_structured_ones_are_not():
    gen = torch.Generator().manual_seed(2)
    gabors = torch.stack([gabor(7, f, t)[None] for f, t in
                          ((0.1, 0.0), (0.2, 0.5), (0.3, 1.0), (0.15, 1.5), (0.25, 2.0), (0.12, 2.5))])
    gabors = gabors / gabors.flatten(1).norm(dim=1)[:, None, None, None]  # unit norm each
    noise = torch.randn(1, 1, 7, 7, generator=gen, dtype=torch.float64)
    noise = noise / noise.norm() / 10  # the Gabors are 10x the noise's norm
    zero = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    tiny = gabor(7, 0.2)[None, None]
    tiny = tiny / tiny.norm() * 0.01  # structured, but near zero
    d = dead_filters(torch.cat([gabors, noise, zero, tiny]))
    assert d.dead.tolist() == [False] * 6 + [True, True, True]
    assert d.indices == [6, 7, 8] and d.count == 3
    assert d.structured[8] and d.low_norm[8]  # dead by norm alone
    assert not d.structured[6] and not d.structured[7]
    assert d.norm_ratio[0] == pytest.approx(1.0, abs=1e-6)
    # base rates: a seeded white-noise layer of this shape is almost all flagged
    assert 0.95 <= d.noise_rate <= 1.0 and d.noise_structured_rate <= 0.05
    assert d.to_json()["dead_filters"] == [6, 7, 8]
    layer = torch.cat([gabors, noise, zero, tiny])
    reused = dead_filters(layer, spectra=filter_spectra(layer, 4))  # the caller's spectra, not a second pass
    assert torch.equal(reused.dead, d.dead) and torch.equal(reused.norm_ratio, d.norm_ratio)


def test_grey_effective_filter_removes_colour_difference_noise():
    gen = torch.Generator().manual_seed(3)
    edge = torch.zeros(7, 7, dtype=torch.float64)
    edge[:, 4:], edge[:, :3] = 1.0, -1.0
    filters = []
    for _ in range(8):
        n = torch.randn(7, 7, generator=gen, dtype=torch.float64) * 1.5
        filters.append(torch.stack([edge + n, edge - n, edge]))  # the noise cancels in the channel sum
    w = torch.stack(filters)
    eff = effective_filters(w, grey=True)
    assert eff.shape == (8, 1, 7, 7)
    torch.testing.assert_close(eff, (3 * edge).expand(8, 1, 7, 7))
    torch.testing.assert_close(effective_filters(w, grey=False), w)
    grey, colour = dead_filters(w, grey=True), dead_filters(w, grey=False)
    assert grey.count == 0 and bool(grey.structured.all())
    assert float(colour.structure.mean()) < float(grey.structure.mean())
    assert not identical_channels(w) and identical_channels(w[:, :1].expand(8, 3, 7, 7))
    with pytest.raises(BadArgumentError):
        effective_filters(w, grey="yes")


# --- aliasing (b): shift consistency ----------------------------------------------------------

def subsampler(stride: int) -> nn.Module:
    """conv = a 1x1 delta at ``stride``: its globally pooled output is the mean of every
    stride-th pixel, which depends on the input's phase exactly by what the stride folds."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1, stride=stride, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    return model


def test_shift_variation_of_a_subsampler_on_a_cosine_at_a_quarter():
    model = subsampler(4).train()
    before = snapshot(model)
    # cos(2 pi x / 4) sampled every 4 px is all ones; shifted by dx it is cos(pi dx / 2)
    r = shift_variation(model, "0", cosine_image(0.25, 32).float())
    assert_untouched(model, before)  # train mode back, no hooks, no gradients
    expected = {0: 0.0, 1: 1.0, 2: 2.0, 3: 1.0}
    for key, value in r["per_shift"].items():
        assert value == pytest.approx(expected[int(key.split(",")[1])], abs=1e-6), key
    assert r["mean"] == pytest.approx(8 / 9, abs=1e-6)
    assert len(r["values"]) == 1


def test_shift_variation_is_zero_without_aliasing():
    gen = torch.Generator().manual_seed(4)
    smooth = 1.0 + 0.1 * blurred(torch.randn(3, 1, 32, 32, generator=gen, dtype=torch.float64), 4.0)
    r = shift_variation(subsampler(4), "0", smooth.float())
    assert r["mean"] < 1e-3 and len(r["values"]) == 3
    # a stride-1 layer commutes with the circular shift: nothing changes, whatever the image
    noise = torch.rand(2, 1, 32, 32, generator=gen)
    assert shift_variation(subsampler(1), "0", noise)["mean"] < 1e-6


# --- aliasing (c): projections against their patches ------------------------------------------

def test_projection_ratio_is_one_for_the_patches_and_grows_with_noise():
    gen = torch.Generator().manual_seed(5)
    patches = [blurred(torch.randn(3, h, h, generator=gen, dtype=torch.float64), 1.0) for h in (20, 20, 27)]
    same = projection_hf_ratio(patches, patches)
    assert same["ratio"] == pytest.approx(1.0, abs=1e-9)
    assert 0 < same["patch_share"] < 0.5
    noisy = [p + 0.5 * p.std() * torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in patches]
    more = projection_hf_ratio(noisy, patches)
    assert more["ratio"] > 1.5 and more["projection_share"] > more["patch_share"]
    assert len(more["projection_values"]) == len(more["patch_weights"]) == 3
    with pytest.raises(BadInputError):
        projection_hf_ratio(patches[:2], patches)
    with pytest.raises(BadInputError, match="size"):
        projection_hf_ratio([patches[2]], [patches[0]])


# --- frequency coverage -----------------------------------------------------------------------

def test_dominant_frequency_bands():
    assert BANDS == (1 / 6, 1 / 3)
    filters = torch.stack([gabor(11, f, 0.0, sigma=100.0).expand(3, 11, 11) for f in (0.2, 0.4, 0.05)])
    cov = frequency_coverage(filters, grey=True)
    peaks = cov["peak_frequency"]
    assert peaks[:2] == pytest.approx([0.2, 0.4], abs=1 / 64)  # the FFT grid's resolution
    assert peaks[2] < 0.1  # half a cycle over 11 taps: the peak sits at or near DC
    assert cov["bands"]["counts"] == {"low": 1, "mid": 1, "high": 1}
    assert cov["mid_fraction"] == pytest.approx(1 / 3)
    assert sum(cov["histogram"]["counts"]) == 3 and cov["grey"] is True
    assert cov["dead"] == [] and cov["live"]["counts"] == cov["bands"]["counts"]
    # a noise filter is dead: counted among all filters, not among the live ones
    noise = torch.randn(1, 3, 11, 11, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    mixed = frequency_coverage(torch.cat([filters, noise * filters.norm() / noise.norm()]), grey=False)
    assert mixed["dead"] == [3] and mixed["filters"] == 4 and mixed["live"]["filters"] == 3
    assert mixed["live"]["counts"] == {"low": 1, "mid": 1, "high": 1}
    # a filter whose colour channels differ: grey measures the channel sum only
    colour = filters.clone()
    colour[:, 0] += 5 * torch.stack([gabor(11, 0.45, 0.0, sigma=100.0)] * 3)
    colour[:, 1] -= 5 * torch.stack([gabor(11, 0.45, 0.0, sigma=100.0)] * 3)
    assert frequency_coverage(colour, grey=True)["bands"]["counts"] == {"low": 1, "mid": 1, "high": 1}
    assert frequency_coverage(colour, grey=False)["bands"]["counts"]["high"] == 3


# --- one definition in vizcnn filters and vizcnn dead-filters ---------------------------------

def test_filters_and_dead_filters_commands_flag_the_same_filters(tmp_path):
    import json

    from click.testing import CliRunner

    from cli.main import cli

    noise_filters = [4, 12, 40, 53, 56, 58, 62]
    result = CliRunner().invoke(cli, ["filters", "alexnet", "--weights", "fashion-mnist", "--out", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    assert "7 dead filters (near-zero or structureless weights: 4, 12, 40, 53, 56, 58, 62;" in result.output
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["effective"] == "channel sum (grey input)"
    assert summary["dead_filters"]["dead_filters"] == noise_filters
    assert [f["filter"] for f in summary["per_filter"] if f["dead"]] == noise_filters
    assert summary["dead_filters"]["noise_rate"] > 0.95
    # the README's caption: 57/1/6 by band, and the mid and high ones are the dead filters
    assert summary["bands"]["counts"] == {"low": 57, "mid": 1, "high": 6}
    assert all(f["band"] == "low" for f in summary["per_filter"] if not f["dead"])
    result = CliRunner().invoke(cli, ["dead-filters", "alexnet", "samples", "--weights", "fashion-mnist",
                                      "--limit", "2", "--workers", "0", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    conv1, *deeper = json.loads((tmp_path / "d" / "summary.json").read_text())["layers"]
    assert [e["dead_weights"] for e in deeper] == [None] * 4  # the weights' count is the first layer's
    assert conv1["dead_weights"]["dead_filters"] == noise_filters  # the weights' count: the same 7
    assert [u["unit"] for u in conv1["units"] if u["dead_weights"]] == noise_filters
    assert "of 64 dead (never fire); 7 dead filters (near-zero or structureless weights: 4, 12," in result.output
