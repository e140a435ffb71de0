"""The command line end to end: files written, one-line errors with exit code 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_usage_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0]


def test_help_explains_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("deconv", "models", "layers"):
        assert command in result.output
    deconv = run("deconv", "--help").output
    for option in ("--layer", "--top", "--channel", "--method", "--weights", "--device", "--out", "--json", "--force"):
        assert option in deconv


def test_deconv_writes_grids_and_summary(tmp_path, samples_dir):
    out = tmp_path / "run"
    result = run("deconv", "alexnet", samples_dir / "cat.jpg", "--weights", "random", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["out"] == str(out)
    assert [entry["layer"] for entry in summary["layers"]] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert sorted(os.listdir(out)) == sorted(summary["files"] + ["summary.json", ".vizcnn-manifest.json"])
    for entry in summary["layers"]:
        assert (out / entry["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(entry["units"]) == 9
        values = [u["value"] for u in entry["units"]]
        assert values == sorted(values, reverse=True) and values[0] > 0
        box = entry["units"][0]["box"]
        assert 0 <= box["top"] < box["bottom"] <= 224 and 0 <= box["left"] < box["right"] <= 224
    conv1 = summary["layers"][0]
    assert conv1["receptive_field"] == [11, 11] and conv1["stride"] == [4, 4]


def test_deconv_options_and_rerun_into_same_folder(tmp_path, samples_dir):
    out = tmp_path / "run"
    args = ["deconv", "lenet5", samples_dir / "camera.png", "--weights", "random", "--out", out, "--json"]
    first = json.loads(run(*args, "--layer", "c1", "--layer", "c3").stdout)  # stderr: LeNet-5 has no rectifier
    assert [e["layer"] for e in first["layers"]] == ["c1", "c3"] and len(first["layers"][0]["units"]) == 6
    second = run(*args, "--layer", "c3", "--channel", "4", "--method", "guided")
    assert second.exit_code == 0, second.output
    summary = json.loads(second.stdout)
    assert [u["channel"] for u in summary["layers"][0]["units"]] == [4] and summary["method"] == "guided"
    # the earlier run's files that this run did not write are gone: one run per folder
    assert sorted(os.listdir(out)) == [".vizcnn-manifest.json", "deconv_c3.png", "summary.json"]


@pytest.mark.parametrize("args,fragments", [
    (["--layer", "conv9"], ["unknown layer 'conv9'", "conv5"]),
    (["--channel", "64", "--layer", "conv1"], ["channel 64 out of range", "0..63"]),
    (["--device", "cuda"], ["no CUDA GPU"]),
    (["--weights", "nowhere.pt"], ["no such file"]),
])
def test_deconv_bad_arguments(tmp_path, samples_dir, args, fragments):
    if "cuda" in args:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    out = tmp_path / "out"
    weights = [] if "--weights" in args else ["--weights", "random"]
    result = run("deconv", "alexnet", samples_dir / "cat.jpg", *weights, "--out", out, *args)
    assert_usage_error(result, *fragments)
    assert not out.exists()  # a failed run leaves no folder behind


def test_deconv_bad_files_and_folders(tmp_path, samples_dir):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    cat = samples_dir / "cat.jpg"
    assert_usage_error(run("deconv", "alexnet", tmp_path / "missing.jpg", "--weights", "random"), "missing.jpg")
    assert_usage_error(run("deconv", "alexnet", text, "--weights", "random", "--out", tmp_path / "o"), "notes.jpg")
    assert_usage_error(run("deconv", "alexnet", tmp_path, "--weights", "random", "--out", tmp_path / "o"), "directory")
    assert_usage_error(run("deconv", "nonet", cat), "unknown model 'nonet'")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    assert_usage_error(run("deconv", "alexnet", cat, "--weights", "random", "--out", busy), "did not write", "--force")
    assert os.listdir(busy) == ["thesis.tex"]
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions
        pytest.skip("running as root: cannot make an unwritable folder")
    assert_usage_error(run("deconv", "alexnet", cat, "--weights", "random", "--out", locked / "x"), "locked")


def test_console_script_runs_in_a_subprocess(tmp_path, samples_dir):
    """The installed `vizcnn` entry point, as a user runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "vizcnn")
    done = subprocess.run([exe, "deconv", "lenet5", str(samples_dir / "camera.png"), "--weights", "random",
                           "--out", str(tmp_path / "o"), "--layer", "c1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    bad = subprocess.run([exe, "layers", "alexnet", "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2


HEAVY = ("torch", "torchvision", "matplotlib", "cv2", "captum")


def _heavy_loaded_after(code: str, env: dict | None = None) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_help_and_import_load_no_heavy_module():
    """`vizcnn --help` and `import vizcnn` stay fast: torch & co. load when a command needs them."""
    assert _heavy_loaded_after("import vizcnn, vizcnn.core.errors\nfrom cli.main import cli\n"
                               "cli.main(['--help'], standalone_mode=False)\n"
                               "cli.main(['deconv', '--help'], standalone_mode=False)") == []


def test_models_table_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("VIZCNN_CACHE", str(tmp_path))
    first = run("models", "--json")
    assert first.exit_code == 0, first.output
    assert len(list(tmp_path.glob("models-*.json"))) == 1
    code = "from cli.main import cli\ncli.main(['models', '--json'], standalone_mode=False)"
    assert _heavy_loaded_after(code, {**os.environ, "VIZCNN_CACHE": str(tmp_path)}) == []
    (next(tmp_path.glob("models-*.json"))).write_text("{broken")  # a bad cache is recomputed
    assert json.loads(run("models", "--json").output) == json.loads(first.output)


def test_top_level_api_is_lazy_and_complete():
    import vizcnn

    for name in vizcnn.__all__:
        assert getattr(vizcnn, name) is not None, name
    assert callable(vizcnn.render.deconv.deconv_grid)
    with pytest.raises(AttributeError):
        vizcnn.no_such_thing


def test_a_single_value_option_given_twice_is_an_error(tmp_path, samples_dir):
    result = run("deconv", "alexnet", samples_dir / "cat.jpg", "--method", "gradient", "--method", "guided",
                 "--out", tmp_path / "o")
    assert_usage_error(result, "--method given more than once")
    assert not (tmp_path / "o").exists()
    assert_usage_error(run("filters", "lenet5", "--layer", "c1", "--layer=c3"), "--layer given more than once")


def test_weights_help_shows_no_fake_default():
    out = run("deconv", "--help").output
    assert "[default: default]" not in out and "default: imagenet where published" in " ".join(out.split())


def test_saliency_methods_repeat_and_text_counts_summary(tmp_path, samples_dir):
    out = tmp_path / "s"
    result = run("saliency", "lenet5", samples_dir / "camera.png", "--weights", "random", "--method", "gradient",
                 "--method", "guided", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"gradient", "guided"} and "panel.png" in summary["files"]
    n = len([f for f in os.listdir(out) if not f.startswith(".")])  # the manifest is vizcnn's bookkeeping
    assert f"wrote {n} files to {out}" in result.output


def test_sanity_prints_every_verdict(tmp_path, samples_dir):
    result = run("sanity", "lenet5", samples_dir / "camera.png", "--weights", "random", "--methods",
                 "gradient,guided", "--steps", "2", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for method in ("gradient", "guided"):
        assert any(line.startswith(f"{method}: ") for line in lines), result.stdout
    assert "re-initialised" not in result.stdout  # progress goes to stderr, and only on a terminal


def test_load_image_and_boxes_match_the_zoo_path(samples_dir):
    """load_image with a zoo model's size and normalisation gives load_input's tensor; the
    boxes are the layer geometry's, clipped to the image; bad arguments are one error."""
    import torch

    import vizcnn

    spec = vizcnn.get_spec("lenet5")
    shown, x = vizcnn.load_image(samples_dir / "camera.png", spec.input_size[1:], mean=spec.mean, std=spec.std,
                                 gray=True)
    ref_shown, ref_x = vizcnn.load_input(samples_dir / "camera.png", spec)
    torch.testing.assert_close(x, ref_x)
    assert shown.shape == ref_shown.shape == (32, 32, 1)
    model = vizcnn.load_model("lenet5", "random")
    units = vizcnn.top_activations(model, x, "c3", k=3)
    boxes = vizcnn.receptive_field_boxes(model, x, "c3", units)
    info = vizcnn.layer_geometry(model, spec.input_size)["c3"]
    assert boxes == [info.box(int(y), int(x_), 32, 32) for y, x_ in zip(units.y, units.x)]
    assert all(0 <= t < b <= 32 and 0 <= left < r <= 32 for t, b, left, r in boxes)
    _, rgb = vizcnn.load_image(samples_dir / "cat.jpg", 64)
    assert rgb.shape == (1, 3, 64, 64)
    with pytest.raises(vizcnn.BadArgumentError, match="mean and std"):
        vizcnn.load_image(samples_dir / "cat.jpg", 64, mean=(0.5,), std=(0.5,))
    with pytest.raises(vizcnn.UnknownNameError):
        vizcnn.receptive_field_boxes(model, x, "c9", [(0, 0)])


def test_every_test_has_a_timeout(pytestconfig):
    """A hang fails its test with the threads' stacks (pytest-timeout) instead of stalling CI."""
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) > 0 and pytestconfig.getini("timeout_method") == "thread"
