"""The ZFNet first-layer study: the ci preset end to end, the recipe's parts, resuming."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from vizcnn.core.errors import BadArgumentError
from vizcnn.study.fractals import FractalSource
from vizcnn.study.data import FractalStream
from vizcnn.study.train import PRESETS, build, parse_designs, renormalize_, train


def test_ci_preset_end_to_end(tmp_path):
    out = tmp_path / "study"
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [d["name"] for d in summary["designs"]] == ["alexnet-2012", "zfnet"]
    for d in summary["designs"]:
        (run,) = d["per_seed"]
        assert 0 <= run["top1"] <= run["top5"] <= 1
        assert 0 <= run["conv1_spectra"]["alias_fraction"]["energy_weighted"] <= 1
        assert 0 <= run["layer2_alias_own"] <= 1 and 0 <= run["layer2_alias_shared"] <= 1
        assert set(run["dead_by_layer"]) == {"conv1", "conv2", "conv3", "conv4", "conv5"}
        assert len(run["curves"]["loss"]) > 0
        assert d["metrics"]["top1"]["mean"] == run["top1"] and d["metrics"]["top1"]["lo"] is None  # one seed
    assert [c["claim"] for c in summary["claims"]] == ["dead conv1 filters", "mid-frequency coverage",
                                                        "layer-2 aliasing", "held-out accuracy"]
    assert all(c["verdict"] == "inconclusive at this budget" for c in summary["claims"])  # no interval at 1 seed
    for name in ["report.md", "claims.png", "training_curves.png", "conv1_frequencies.png", "fig4_evolution.png",
                 "fig6_conv1_alexnet-2012.png", "fig6_conv1_zfnet.png", "fig6_layer2_top9_zfnet.png"]:
        assert name in summary["files"] and (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| dead conv1 filters (fraction) |" in report and "| **held-out accuracy**" in report


def _class_folder(root, classes=3, per_class=10, size=40):
    """A tiny ImageFolder tree: class k is a stripe pattern of its own orientation."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for k in range(classes):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(per_class):
            phase = rng.uniform(0, 6.28)
            a = k * np.pi / classes
            img = 127 + 100 * np.sin((np.cos(a) * xx + np.sin(a) * yy) / 2 + phase)
            cv2.imwrite(str(root / f"class{k}" / f"{i}.png"), np.repeat(img[..., None], 3, 2).astype(np.uint8))
    return root


def test_two_seeds_on_a_class_folder_give_per_seed_values_intervals_and_paired_verdicts(tmp_path):
    data = _class_folder(tmp_path / "data")
    out = tmp_path / "study"
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--seeds", "2", "--data", str(data),
                                      "--steps", "4", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["seeds"] == [0, 1] and "3 classes" in summary["data"]
    for d in summary["designs"]:
        assert [r["seed"] for r in d["per_seed"]] == [0, 1]
        for metric, ci in d["metrics"].items():
            values = [r[metric] for r in d["per_seed"]]
            assert ci["values"] == pytest.approx(values)
            assert ci["mean"] == pytest.approx(sum(values) / 2)
            # the t-interval with 1 degree of freedom: mean ± 12.706 · |a − b| / 2, clipped to [0, 1]
            half = 12.706 * abs(values[0] - values[1]) / 2
            assert ci["lo"] == pytest.approx(max(0, ci["mean"] - half)) and ci["hi"] == pytest.approx(
                min(1, ci["mean"] + half))
        assert d["per_seed"][0]["counts"]["heldout"] == 3  # 10% of each class of 10, held out
    alex, zf = summary["designs"]
    for c in summary["claims"]:
        sign = 1 if c["difference_of"].startswith("zfnet") else -1
        diffs = [sign * (z[c["metric"]] - a[c["metric"]]) for a, z in zip(alex["per_seed"], zf["per_seed"])]
        assert c["difference"]["values"] == pytest.approx(diffs)
        assert c["verdict"] in ("reproduced", "not reproduced", "inconclusive at this budget")


def test_the_same_seed_gives_every_design_the_same_batches_and_holds_out_a_fixed_split(tmp_path):
    from vizcnn.study.data import SourceStream

    data = _class_folder(tmp_path / "data", per_class=12)
    preset = replace(PRESETS["ci"], steps=5, batch=4, workers=2)
    a = list(SourceStream(preset, str(data), seed=1, device=torch.device("cpu")).batches(0))
    b = list(SourceStream(preset, str(data), seed=1, device=torch.device("cpu")).batches(2))
    c = list(SourceStream(preset, str(data), seed=2, device=torch.device("cpu")).batches(0))
    assert [s for s, _, _ in a] == [1, 2, 3, 4, 5] and [s for s, _, _ in b] == [3, 4, 5]
    for (_, xa, ya), (_, xb, yb) in zip(a[2:], b):  # a resumed stream continues the same order
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (_, xa, _), (_, xc, _) in zip(a, c))
    stream = SourceStream(preset, str(data), seed=1, device=torch.device("cpu"))
    held = {stream.heldout_source.describe(i) for i in range(len(stream.heldout_source))}
    train = {stream.train_source.describe(i) for i in range(len(stream.train_source))}
    assert len(held) == 3 * 1 and not held & train  # round(12 · 0.1) per class, never trained on
    assert a[0][1].shape == (4, 3, preset.size, preset.size)  # resized, 3 equal channels
    x = a[0][1]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_unlabelled_data_is_a_clear_error(tmp_path):
    (tmp_path / "flat").mkdir()
    import cv2
    import numpy as np

    for i in range(3):
        cv2.imwrite(str(tmp_path / "flat" / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--data", str(tmp_path / "flat"),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "subfolder per class" in result.output


def test_trained_models_are_analysed_without_training(tmp_path):
    """--trained on two zoo models with random weights (a stride-4 and a stride-2 conv1),
    and on a checkpoint the study wrote."""
    out = tmp_path / "t"
    first = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--steps", "2", "--out", str(tmp_path / "s"),
                                     "--json"])
    assert first.exit_code == 0, first.output
    ckpt = tmp_path / "s" / "checkpoints" / "zfnet-seed0.pt"
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--trained", "alexnet-2012:random",
                                      "--trained", f"zfnet:{ckpt}", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    names = [d["name"] for d in summary["designs"]]
    assert names == ["alexnet-2012:random", "zfnet (zfnet-seed0.pt)"]
    alex, zf = summary["designs"]
    assert alex["conv1"] == [11, 4] and zf["conv1"] == [7, 2]
    assert alex["metrics"]["top1"] is None  # 1000 ImageNet outputs against 10 fractal classes: no accuracy
    assert zf["metrics"]["top1"]["method"] == "wilson" and zf["metrics"]["top1"]["lo"] <= zf["metrics"]["top1"]["mean"]
    dead = alex["metrics"]["dead_conv1_fraction"]
    assert dead["n"] == 96 and dead["method"] == "wilson"
    assert {c["claim"]: c["verdict"] for c in summary["claims"]}["held-out accuracy"] == "inconclusive at this budget"
    assert (out / "claims.png").stat().st_size > 0
    bad = CliRunner().invoke(cli, ["study", "zfnet", "--trained", "alexnet", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "MODEL:WEIGHTS" in bad.output


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


def test_device_script_runs_end_to_end_on_the_cpu_with_a_tiny_preset(tmp_path):
    """benchmarks/device_study.sh: smoke test, measured throughput sizing the steps, the
    study, timing.json — here on the CPU with the ci preset."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PRESET": "ci", "DEVICE": "cpu", "TRAIN_BUDGET": "1",
           "SMOKE_STEPS": "2", "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(root / "benchmarks" / "device_study.sh")], env=env, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    timing = json.loads((tmp_path / "timing.json").read_text())
    rates = timing["throughput"]["images_per_second"]
    assert set(rates) == {"alexnet-2012", "zfnet"} and all(v > 0 for v in rates.values())
    # the steps fit the budget at the slower design's measured rate (at least one step)
    assert timing["steps"] == max(1, min(PRESETS["ci"].steps, int(min(rates.values()) * 1 / PRESETS["ci"].batch)))
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert summary["preset"]["steps"] == timing["steps"] and len(summary["claims"]) == 4
    assert "max relative difference" in done.stdout
