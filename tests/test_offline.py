"""What a new user meets first, from any folder and offline: ``samples/NAME`` finds the
shipped sample (and says so), ``vizcnn samples`` lists them, a missing --weights picks
weights that exist here (and says which), and nothing but the summary reaches stdout
under --json, even when torch tries a download."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from vizcnn.io.samples import SAMPLES_DIR, resolve_sample, sample_names

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_samples_lists_every_shipped_image_and_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    on_disk = sorted(p.name for p in SAMPLES_DIR.iterdir() if p.suffix in (".jpg", ".png"))
    assert {"cat.jpg", "fashion-bag.png"} <= set(on_disk)
    listed = json.loads(run("samples", "--json").stdout)
    assert listed == {"folder": str(SAMPLES_DIR), "samples": on_disk} and sample_names() == on_disk
    text = run("samples").stdout
    assert str(SAMPLES_DIR) in text and all(f"samples/{n}" in text for n in on_disk)


def test_samples_name_reads_the_shipped_copy_from_another_folder_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no samples/ here
    result = run("deconv", "lenet5", "samples/fashion-bag.png", "--weights", "fashion-mnist", "--layer", "c1",
                 "--top", "1", "--out", "out", "--json")
    assert result.exit_code == 0, result.output
    shipped = SAMPLES_DIR / "fashion-bag.png"
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [f"note: samples/fashion-bag.png is not in this folder; reading the sample shipped with vizcnn: "
                     f"{shipped}"]
    summary = json.loads(result.stdout)
    assert summary["image"] == str(shipped) and (tmp_path / "out" / "summary.json").is_file()
    # DATA given as one sample, and the Python API, resolve the same way
    topk = run("topk", "lenet5", "samples/fashion-bag.png", "--weights", "fashion-mnist", "--layer", "c1",
               "--units", "0", "--top", "1", "--out", "topk", "--json")
    assert topk.exit_code == 0 and "reading the sample shipped with vizcnn" in topk.stderr, topk.output
    assert json.loads(topk.stdout)["images"] == 1


def test_load_image_reads_the_shipped_sample_and_says_so(tmp_path, monkeypatch, capsys):
    import numpy as np

    import vizcnn

    monkeypatch.chdir(tmp_path)
    shown, x = vizcnn.load_image("samples/cat.jpg", size=32)
    assert "reading the sample shipped with vizcnn" in capsys.readouterr().err
    shown_direct, x_direct = vizcnn.load_image(SAMPLES_DIR / "cat.jpg", size=32)
    assert capsys.readouterr().err == ""  # an existing path: read as given, nothing said
    assert np.array_equal(shown, shown_direct) and x.equal(x_direct)


def test_a_local_samples_folder_wins_and_unknown_names_stay_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples").mkdir()
    own = tmp_path / "samples" / "cat.jpg"
    own.write_bytes((SAMPLES_DIR / "camera.png").read_bytes())  # the user's own file under a shipped name
    said = []
    assert resolve_sample("samples/cat.jpg", echo=said.append) == "samples/cat.jpg" and said == []
    (tmp_path / "samples" / "cat.jpg").unlink()
    assert resolve_sample("samples/cat.jpg", echo=said.append) == SAMPLES_DIR / "cat.jpg" and len(said) == 1
    for other in ("samples/dog.jpg", "cat.jpg", "other/cat.jpg", "samples/../samples/cat.jpg"):
        assert resolve_sample(other, echo=said.append) == other
    result = run("deconv", "lenet5", "samples/dog.jpg", "--weights", "fashion-mnist", "--out", "o")
    assert result.exit_code == 2 and "samples/dog.jpg: no such file" in result.output
    assert "shipped" not in result.output and not (tmp_path / "o").exists()


def test_no_weights_offline_uses_the_shipped_weights_and_says_so(tmp_path, monkeypatch):
    """No --weights, no ImageNet weights in torch's cache: alexnet runs on the learned
    weights shipped with vizcnn, one note on stderr names them and how to get ImageNet's;
    stdout holds the JSON summary only. Nothing touches the network."""
    from vizcnn.models import default_weights, imagenet_cache_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = run("occlusion", "alexnet", SAMPLES_DIR / "fashion-bag.png", "--stride", "48", "--out",
                 tmp_path / "o", "--json")  # occlusion asks for the default twice: said once
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["weights"] == "fashion-mnist"
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no cached ImageNet weights for alexnet" in notes[0]
    assert "--weights fashion-mnist" in notes[0] and "--weights imagenet downloads" in notes[0]
    assert str(imagenet_cache_file("alexnet")) in notes[0]
    # with ImageNet's file in the cache, the default is ImageNet's, silently; models without
    # shipped weights keep ImageNet's (a download) and models without published ones random
    cached = imagenet_cache_file("alexnet")
    cached.parent.mkdir(parents=True)
    cached.touch()
    assert default_weights("alexnet") == ("imagenet", None)
    assert default_weights("vgg11") == ("imagenet", None)
    assert default_weights("lenet5") == ("random", None) and default_weights("zfnet") == ("random", None)


def test_weights_help_names_every_model_with_shipped_weights():
    from vizcnn.models.shipped import shipped_weights

    text = " ".join(run("deconv", "--help").output.split())
    for model in shipped_weights():
        assert model in text.split("learned weights shipped with vizcnn for ", 1)[1].split(")")[0], model


def test_imagenet_download_failure_keeps_stdout_clean_and_names_the_shipped_weights(tmp_path):
    """A real failed download (a proxy that refuses connections, no network needed):
    torch's "Downloading: ..." line goes to stderr, stdout stays empty under --json, and
    the error names the shipped weights."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(TORCH_HOME=str(tmp_path / "torch"), HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-m", "cli", "filters", "alexnet", "--weights", "imagenet", "--json",
                           "--out", str(tmp_path / "o")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Downloading" in done.stderr  # torch's line, on stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: cannot get ImageNet weights for alexnet") and "--weights fashion-mnist" in error
    assert not (tmp_path / "o").exists()


def test_help_lists_every_command_with_its_whole_first_sentence():
    """`vizcnn --help` shows each command's first paragraph whole, never cut mid-sentence
    (click cuts at 45 characters, or at the ". " of "Fig. 7")."""
    listing = " ".join(run("--help").output.split("Commands:")[1].split())
    for name, command in cli.commands.items():
        first = command.short_help or " ".join(command.help.strip().split("\n\n")[0].split())
        assert f"{name} {first}" in listing, name
        assert first.endswith((".", "?")), name


def test_report_says_which_classes_shipped_weights_know_and_not_imagenets_figures():
    """With the shipped Fashion-MNIST weights the report's headline says the model knows
    only those 10 classes, and its model card shows those weights' own data and accuracy,
    not ImageNet's published parameter count and top-1 (which it keeps for --weights imagenet)."""
    from vizcnn.models.cards import card_json
    from vizcnn.models.registry import get_spec, load_model
    from vizcnn.models.shipped import shipped_weights
    from vizcnn.render.report import _card_section, _prediction

    shipped = shipped_weights("alexnet")["fashion-mnist"]
    net = load_model("alexnet", "fashion-mnist")
    card = card_json(net, "alexnet", (3, 96, 96), get_spec("alexnet", "fashion-mnist"))
    assert card["published_params"] == 61_100_840 != card["params"] and card["top1"] is not None
    weights_card = {"data": shipped["data"], "dataset": "Fashion-MNIST", "num_classes": 10,
                    "accuracy": shipped["accuracy"]}
    page = _card_section(card, "png", "fashion-mnist", weights_card)
    assert "published" not in page and "ImageNet top-1" not in page
    assert "held-out top-1 0.87" in page and "Fashion-MNIST train split" in page
    imagenet = _card_section(card, "png", "imagenet", None)
    assert "published" in imagenet and "ImageNet top-1" in imagenet
    sal = {"class_name": "Bag", "target": 8, "probability": 0.209}
    assert _prediction(sal, weights_card).endswith("p = 0.209 (the model knows only Fashion-MNIST's 10 classes)")
    assert "knows only" not in _prediction(sal, None)

