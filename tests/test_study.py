"""The ZFNet first-layer study: the ci preset end to end, the recipe's parts, resuming."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from vizcnn.core.errors import BadArgumentError
from vizcnn.study.fractals import FractalSource
from vizcnn.study.data import FractalStream
from vizcnn.study.measure import FRACTIONS
from vizcnn.study.train import PRESETS, build, parse_designs, renormalize_, train


CLAIM_KEYS = ["dead conv1 filters", "mid-frequency coverage", "conv1 aliasing on the data", "layer-2 shift variation",
              "layer-2 projection high frequencies", "held-out accuracy"]


def test_ci_preset_end_to_end(tmp_path):
    out = tmp_path / "study"
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [d["name"] for d in summary["designs"]] == ["alexnet-2012", "zfnet"]
    for d in summary["designs"]:
        (run,) = d["per_seed"]
        assert 0 <= run["top1"] <= run["top5"] <= 1
        assert run["counts"]["heldout"] == PRESETS["ci"].eval_images
        assert 0 <= run["conv1_alias_dense"] <= 1 and run["layer2_shift_variation"] >= 0
        assert set(run["dead_by_layer"]) == {"conv1", "conv2", "conv3", "conv4", "conv5"}
        assert run["dead_filters"]["filters"] == 16 and len(run["curves"]["loss"]) > 0
        assert len(run["curves"]["rescaled"]) == len(run["curves"]["step"])
        assert d["metrics"]["top1"]["mean"] == run["top1"] and d["metrics"]["top1"]["lo"] is None  # one seed
    assert [c["claim"] for c in summary["claims"]] == CLAIM_KEYS
    # one seed gives no interval; a network at chance makes a claim not testable
    assert all(c["verdict"] in ("inconclusive", "not testable") for c in summary["claims"])
    assert set(summary["data_outside_nyquist"]) == {"stride 2", "stride 4"}
    assert summary["renormalisation_off"]["name"] == "zfnet"
    for name in ["report.md", "claims.png", "training_curves.png", "conv1_frequencies.png", "fig4_evolution.png",
                 "fig6_conv1_alexnet-2012.png", "fig6_conv1_zfnet.png", "fig6_layer2_top9_zfnet.png",
                 "fig6a_renormalisation.png", "fig6_conv1_zfnet-no-renorm.png"]:
        assert name in summary["files"] and (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| **held-out accuracy**" in report and "energy outside each stride's Nyquist square" in report


def test_study_figures_meet_the_figure_standard(tmp_path):
    """Every figure the study writes, drawn from a real ci run's results, is held to the
    project's figure standard (no clipped title, no text off the canvas)."""
    from figure_standard import check_standard

    from vizcnn.study import figures
    from vizcnn.study.data import open_stream
    from vizcnn.study.measure import measure, study_spec, summarise

    preset = replace(PRESETS["ci"], steps=2, evolution=(2,))
    results = {}
    for conv1 in [(11, 4), (7, 2)]:
        stream = open_stream(preset, None, seed=0, device=torch.device("cpu"))
        model, curves, _ = train(preset, conv1, stream, tmp_path, seed=0, log=lambda m: None)
        spec = study_spec(preset, stream.mean)
        probe = stream.probe()
        from vizcnn.study.run import _reader
        r, _ = measure(model, f"design {conv1}", spec, probe, _reader("p", probe, spec),
                       heldout=(*stream.heldout(), stream.prepare), chance=0.1, seed=0)
        r.curves = {k: v for k, v in curves.__dict__.items()}
        results[r.name] = [r]
    summary = summarise(results, over_seeds=True)
    check_standard(figures.claims_figure(summary, "2 steps, fractals"))
    check_standard(figures.curves_figure(results))
    check_standard(figures.frequency_figure(results))
    check_standard(figures.dominance_figure({"name": "zfnet", "seed": 0, "on": {"max_over_median": 1.5},
                                             "off": {"max_over_median": 6.0}, "curves": results[r.name][0].curves}))


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
            # the t-interval with 1 degree of freedom: mean ± 12.706 · |a − b| / 2, fractions clipped to [0, 1]
            half = 12.706 * abs(values[0] - values[1]) / 2
            lo, hi = ci["mean"] - half, ci["mean"] + half
            if metric in FRACTIONS:
                lo, hi = max(0, lo), min(1, hi)
            assert ci["lo"] == pytest.approx(lo) and ci["hi"] == pytest.approx(hi)
        assert d["per_seed"][0]["counts"]["heldout"] == 3  # 10% of each class of 10, held out
    alex, zf = summary["designs"]
    for c in summary["claims"]:
        sign = 1 if c["difference_of"].startswith("zfnet") else -1
        diffs = [sign * (z[c["metric"]] - a[c["metric"]]) for a, z in zip(alex["per_seed"], zf["per_seed"])]
        assert c["difference"]["values"] == pytest.approx(diffs)
        assert c["verdict"] in ("reproduced", "contradicted", "equivalent within the margin", "not testable",
                                "inconclusive")


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
    assert alex["metrics"]["top1"] is None  # random weights: no known training data, so no accuracy
    # the study's checkpoint is scored on the data it was trained on (the ci preset's fractals)
    assert zf["metrics"]["top1"]["method"] == "wilson" and zf["metrics"]["top1"]["lo"] <= zf["metrics"]["top1"]["mean"]
    assert "scored on fractals" in summary["data"]["zfnet (zfnet-seed0.pt)"]
    assert "no held-out accuracy" in summary["data"]["alexnet-2012:random"]
    dead = alex["metrics"]["dead_filters_fraction"]
    assert dead["n"] == 96 and dead["method"] == "wilson"
    assert all(c["verdict"].startswith("descriptive") for c in summary["claims"])  # one model per design
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
    per_layer = {}
    assert renormalize_(model, per_layer=per_layer) >= 1
    assert per_layer["features.conv2"] >= 1 and sum(per_layer.values()) >= per_layer["features.conv2"]
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
    for bad in ("1000/1", "65/2", "63/63"):  # bounded by the preset's 64 px input
        with pytest.raises(BadArgumentError):
            parse_designs(bad, 64)
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--conv1", "11-4"])
    assert result.exit_code == 2 and "KERNEL/STRIDE" in result.output
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--conv1", "1000/1", "--out", "x"])
    assert result.exit_code == 2 and "larger than the 64px input" in result.output


def test_one_seed_gives_identically_shaped_layers_of_every_design_identical_initial_weights():
    preset = PRESETS["cpu"]
    nets = {d: build(preset, d, seed=3) for d in preset.designs}
    ref = nets[(11, 4)].state_dict()
    shared = 0
    for d, net in nets.items():
        for key, value in net.state_dict().items():
            if key in ref and ref[key].shape == value.shape and not key.startswith("features.conv1"):
                assert torch.equal(ref[key], value), (d, key)
                shared += 1
    assert shared >= 3 * 14  # conv2-5 and fc6-8, weights and biases, in the three other designs
    assert not torch.equal(build(preset, (7, 2), seed=4).features.conv2.weight, nets[(7, 2)].features.conv2.weight)
    w = nets[(7, 2)].features.conv1.weight.detach()
    assert abs(float(w.std()) - preset.conv1_init_std) < 0.1 * preset.conv1_init_std  # the paper's N(0, 1e-2)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in nets[(7, 2)].modules() if hasattr(m, "bias") and
               isinstance(m.bias, torch.Tensor))


def test_the_gpu_recipe_trains_without_diverging_scaled_down(tmp_path):
    """The gpu preset's recipe (SGD, warm-up, clipping, renormalisation, 100 fractal classes at
    128 px) at a small width and budget on the CPU: the loss stays finite and falls below its
    starting scale (the old gpu recipe went from 71 to NaN in 5 steps): finite, no blow-up."""
    preset = replace(PRESETS["gpu"], channels=(16, 24), widths=(32, 32, 24), hidden=64, steps=30, batch=16,
                     train_images=480, eval_images=100, amp=False, evolution=(), checkpoint_every=1000)
    stream = FractalStream(preset, seed=0, device=torch.device("cpu"))
    model, curves, _ = train(preset, (7, 2), stream, tmp_path, seed=0, log=lambda m: None)
    assert all(math.isfinite(v) for v in curves.loss)
    assert max(curves.loss) < 1.5 * math.log(100)  # starts near the uniform guess and stays there or below
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_diverging_recipe_stops_with_a_one_line_error(tmp_path):
    from vizcnn.study.train import TrainingDiverged

    preset = replace(PRESETS["ci"], steps=6, lr=1e6, clip=None, warmup=0, renorm=False, evolution=())
    stream = FractalStream(preset, seed=0, device=torch.device("cpu"))
    with pytest.raises(TrainingDiverged, match="diverged|NaN"):
        train(preset, (7, 2), stream, tmp_path, seed=0, log=lambda m: None)


def test_canvas_places_native_glyphs_in_colour_and_holds_out_the_same_images_for_every_seed():
    from vizcnn.study.data import CanvasStream

    glyphs = torch.zeros(4, 28, 28, dtype=torch.uint8)
    glyphs[:, 10:18, 4:24] = 255
    s = object.__new__(CanvasStream)
    s.preset = replace(PRESETS["cpu"], size=64)
    x = s.compose(glyphs, torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
    for img in x:
        flat = img.flatten(1)
        colours = torch.unique(flat.t(), dim=0)
        assert len(colours) == 2  # background and foreground: no interpolation, the glyph's own pixels
        assert not torch.equal(img[0], img[1])  # colour: the channels differ
        ink = (flat != flat[:, :1]).any(0).view(64, 64).nonzero()
        assert (ink.max(0).values - ink.min(0).values + 1).tolist() == [8, 20]  # native size, not upscaled
    y = s.compose(glyphs, torch.Generator().manual_seed(1))
    assert not torch.equal(x, y)  # positions and colours follow the generator


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
           "SMOKE_STEPS": "2", "SEEDS": "2", "JOBS": "2", "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(root / "benchmarks" / "device_study.sh")], env=env, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    timing = json.loads((tmp_path / "timing.json").read_text())
    rates = timing["throughput"]["images_per_second"]
    assert set(rates) == {"alexnet-2012", "zfnet"} and all(v > 0 for v in rates.values())
    # every network (2 designs x 2 seeds + the one without renormalisation) fits the budget at the measured rates
    per_step = PRESETS["ci"].batch * (2 * sum(1 / r for r in rates.values()) + 1 / rates["zfnet"])
    assert timing["steps"] == max(1, min(PRESETS["ci"].steps, int(1 / per_step)))
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert summary["preset"]["steps"] == timing["steps"] and len(summary["claims"]) == len(CLAIM_KEYS)
    assert summary["seeds"] == [0, 1]  # two seeds per design, trained two at a time
    assert "max relative difference" in done.stdout


def test_a_user_folder_with_a_checkpoints_folder_is_not_taken_for_a_study_run(tmp_path):
    """The study no longer implies --force when --out holds checkpoints/: a user's folder
    with checkpoints/, figures/ and their own report.md is refused and left as it was."""
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "figures").mkdir()
    (out / "figures" / "plot.png").write_bytes(b"user's")
    (out / "report.md").write_text("my notes")
    before = sorted((p.relative_to(out), p.read_bytes() if p.is_file() else None) for p in out.rglob("*"))
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert sorted((p.relative_to(out), p.read_bytes() if p.is_file() else None) for p in out.rglob("*")) == before


def test_a_study_run_resumes_from_its_own_folder_and_never_follows_a_linked_checkpoints_folder(tmp_path):
    out = tmp_path / "s"
    first = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--steps", "2", "--out", str(out), "--json"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--steps", "2", "--out", str(out)])
    assert again.exit_code == 0, again.output  # an earlier study run: resumed, no --force needed
    assert "resuming at step 2/2" in again.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--steps", "2", "--out", str(linked),
                                      "--force"])
    assert result.exit_code == 2 and "link" in result.output
    assert list(elsewhere.iterdir()) == []  # nothing written outside --out


def test_a_failed_study_leaves_no_checkpoints_behind(tmp_path):
    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["study", "zfnet", "--preset", "ci", "--data", str(tmp_path / "missing"),
                                      "--out", str(out)])
    assert result.exit_code == 2
    assert not out.exists() or list(out.iterdir()) == []


def test_verdicts_of_a_summary_follow_the_rules_on_hand_built_results():
    """Networks at chance make every claim not testable; a phenomenon absent everywhere is not
    testable; a consistent effect is reproduced; --trained-style summaries are descriptive."""
    from vizcnn.study.measure import METRICS, ModelResult, summarise

    def result(conv1, seed, **values):
        metrics = {m: 0.5 for m in METRICS}
        metrics.update(values)
        return ModelResult("alexnet-2012" if conv1 == (11, 4) else "zfnet", conv1, seed, metrics, {}, {}, {},
                           chance=0.1)

    def run(a_values, z_values, **common):
        return {"alexnet-2012": [result((11, 4), i, **a, **common) for i, a in enumerate(a_values)],
                "zfnet": [result((7, 2), i, **z, **common) for i, z in enumerate(z_values)]}

    good = summarise(run([{"dead_filters_fraction": 0.1 + 0.01 * i, "top1": 0.8} for i in range(5)],
                         [{"dead_filters_fraction": 0.02 * i, "top1": 0.8 + 0.001 * (i - 2)} for i in range(5)]),
                     over_seeds=True)
    by = {c["claim"]: c for c in good["claims"]}
    assert by["dead conv1 filters"]["verdict"] == "reproduced"
    assert by["held-out accuracy"]["verdict"] == "equivalent within the margin"
    absent = summarise(run([{"dead_filters_fraction": 0.0}] * 3, [{"dead_filters_fraction": 0.0}] * 3),
                       over_seeds=True)
    assert {c["claim"]: c["verdict"] for c in absent["claims"]}["dead conv1 filters"] == "not testable"
    chance = summarise(run([{"top1": 0.11 + 0.01 * i} for i in range(3)], [{"top1": 0.6}] * 3), over_seeds=True)
    assert all(c["verdict"] == "not testable" and "learned too little" in c["why"] for c in chance["claims"])
    trained = summarise(run([{}], [{}]), over_seeds=False)
    assert all(c["verdict"].startswith("descriptive") for c in trained["claims"])
