"""The learned weights shipped in the package show learned features: projections of
different units differ, and their energy sits below the stride's Nyquist frequency far
more than with random weights (white noise would put 15/16 of it above)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import vizcnn
from cli.main import cli
from vizcnn.core.errors import VizcnnError
from vizcnn.io.inputs import load_input
from vizcnn.methods.spectra import filter_spectra
from vizcnn.models import get_spec, load_model
from vizcnn.models.shipped import shipped_weights


def _projections(weights: str, samples_dir):
    spec = get_spec("alexnet", weights)
    model = load_model("alexnet", weights)
    _, x = load_input(samples_dir / "cat.jpg", spec)
    units, projections = vizcnn.project_top(model, x, "conv2", k=8)
    return units, projections


def test_every_shipped_weight_has_a_card_and_loads(samples_dir):
    cards = shipped_weights()
    assert {"lenet5", "alexnet", "zfnet"} <= set(cards)
    for name, named in cards.items():
        for weights, card in named.items():
            model = load_model(name, weights)
            spec = get_spec(name, weights)
            assert spec.input_size == tuple(card["input_size"])
            with torch.no_grad():
                assert model(torch.zeros(1, *spec.input_size)).shape == (1, card["num_classes"])


def test_shipped_weights_reach_their_cards_accuracy_through_vizcnns_own_pipeline():
    """Measured, not read off the card: the first 300 Fashion-MNIST test images, read and
    prepared as every command prepares them (measured 0.90 / 0.88 / 0.90 for alexnet /
    lenet5 / zfnet, against cards of 0.870 / 0.854 / 0.876 over larger sets)."""
    from vizcnn.io.sources import fashion_mnist_source, load

    try:
        source = fashion_mnist_source("test", limit=300)
    except VizcnnError as e:
        pytest.skip(f"Fashion-MNIST is not installed: {e}")
    labels = torch.tensor([source.label(i) for i in range(len(source))])
    for name, named in shipped_weights().items():
        for weights, card in named.items():
            spec = get_spec(name, weights)
            x = torch.stack([load(source, i, spec)[1] for i in range(len(source))])
            with torch.no_grad():
                top1 = float((load_model(name, weights)(x).argmax(1) == labels).float().mean())
            assert top1 > 0.5, (name, top1)  # 5× chance on 10 classes
            assert abs(top1 - card["accuracy"]["top1"]) < 0.06, (name, top1, card["accuracy"])


def test_alexnet_learned_projections_are_structured_not_noise(samples_dir):
    _, learned = _projections("fashion-mnist", samples_dir)
    _, random = _projections("random", samples_dir)

    def alias(p):  # share of each projection's energy above stride 4's Nyquist frequency (1/8 cycle/px)
        return filter_spectra(p.double(), 4, keep_power=False, structure=False).alias_fraction

    assert alias(learned).mean() < 0.5 * alias(random).mean()
    assert alias(learned).mean() < 0.5 * (15 / 16)
    flat = learned.flatten(1)
    corr = torch.corrcoef(flat)
    off = corr[~torch.eye(len(flat), dtype=torch.bool)]
    # different units project to different patterns (two units may share one feature:
    # measured 0.30 mean and 0.93 max |corr| with the shipped weights)
    assert off.abs().mean() < 0.5 and off.abs().max() < 0.99


def test_quick_start_runs_on_shipped_weights(tmp_path, samples_dir):
    out = tmp_path / "q"
    result = CliRunner().invoke(cli, ["deconv", "alexnet", str(samples_dir / "cat.jpg"), "--weights", "fashion-mnist",
                                      "--layer", "conv2", "--top", "3", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["weights"] == "fashion-mnist" and (out / "deconv_conv2.png").stat().st_size > 0


@pytest.mark.parametrize("model", ["lenet5", "alexnet", "zfnet"])
def test_models_lists_the_shipped_weights(model):
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    shipped = json.loads(result.output)["shipped_weights"]
    assert any(w["model"] == model and w["weights"] == "fashion-mnist" for w in shipped)
