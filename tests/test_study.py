"""The ZFNet first-layer study: the ci preset end to end, the recipe's parts, resuming."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from vizcnn.errors import BadArgumentError
from vizcnn.fractals import FractalSource
from vizcnn.study import PRESETS, FractalStream, build, parse_designs, renormalize_, train


def test_ci_preset_end_to_end(tmp_path):
    out = tmp_path / "study"
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [d["name"] for d in summary["designs"]] == ["alexnet-2012", "zfnet"]
    for d in summary["designs"]:
        assert 0 <= d["top1"] <= d["top5"] <= 1
        assert 0 <= d["conv1_spectra"]["alias_fraction"]["energy_weighted"] <= 1
        assert 0 <= d["layer2_alias_own"] <= 1 and 0 <= d["layer2_alias_shared"] <= 1
        assert set(d["dead_by_layer"]) == {"conv1", "conv2", "conv3", "conv4", "conv5"}
        assert len(d["curves"]["loss"]) > 0
    for name in ["report.md", "training_curves.png", "conv1_frequencies.png", "fig4_evolution.png",
                 "fig6_conv1_alexnet-2012.png", "fig6_conv1_zfnet.png", "fig6_layer2_top9_zfnet.png"]:
        assert name in summary["files"] and (out / name).stat().st_size > 0
    table = (out / "report.md").read_text()
    assert "| dead conv1 filters |" in table and "alexnet-2012 (11×11, stride 4)" in table


def test_renormalisation_caps_filter_rms_at_0_1():
    model = build(PRESETS["ci"], (7, 2), seed=0)
    w = model.features.conv2.weight
    with torch.no_grad():
        w[0] *= 0
        w[0] += 0.5  # RMS 0.5 -> 0.1
        w[1] = w[1] / w[1].pow(2).mean().sqrt() * 0.05  # RMS 0.05: untouched
    untouched = w[1].clone()
    assert renormalize_(model) >= 1
    assert torch.allclose(w[0].pow(2).mean().sqrt(), torch.tensor(0.1))
    assert torch.equal(w[1], untouched)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert (m.weight.pow(2).mean((1, 2, 3)).sqrt() <= 0.1 + 1e-6).all()


def test_designs_and_errors():
    assert parse_designs("11/4,7/2,7/4,11/2") == [(11, 4), (7, 2), (7, 4), (11, 2)]
    for bad in ("11x4", "7/0", "3/5", "7/2,7/2"):
        with pytest.raises(BadArgumentError):
            parse_designs(bad)
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--conv1", "11-4"])
    assert result.exit_code == 2 and "KERNEL/STRIDE" in result.output


def test_fractal_classes_are_distinct_and_deterministic():
    a = FractalSource(6, 32, seed=3)
    b = FractalSource(6, 32, seed=3)
    assert torch.equal(a.maps, b.maps)
    x1 = a.batch(torch.arange(6), torch.Generator().manual_seed(0))
    x2 = b.batch(torch.arange(6), torch.Generator().manual_seed(0))
    assert torch.equal(x1, x2) and x1.shape == (6, 3, 32, 32) and 0 <= x1.min() and x1.max() <= 1
    # a class's contraction maps are contractive: the attractor is bounded
    assert (torch.linalg.matrix_norm(a.maps[..., :2], ord=2) <= 0.85 + 1e-5).all()


def test_interrupted_training_resumes_to_the_same_model(tmp_path):
    preset = replace(PRESETS["ci"], steps=8, checkpoint_every=3, evolution=())
    stream = FractalStream(preset, seed=0, device=torch.device("cpu"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole, _, _ = train(preset, (7, 2), stream, tmp_path / "a", seed=0, log=lambda m: None)

    def interrupt(message):
        if "step 7/" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(preset, (7, 2), stream, tmp_path / "b", seed=0, log=interrupt)
    resumed, curves, _ = train(preset, (7, 2), stream, tmp_path / "b", seed=0, log=lambda m: None)
    for p, q in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q)
    assert curves.step[-1] == 8
