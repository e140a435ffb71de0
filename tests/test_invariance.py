"""Invariance curves (Fig. 5): exact identity, distances that grow with the transformation."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import assert_untouched, snapshot
from torch import nn

from cli.main import cli
from vizcnn.core.errors import BadArgumentError, UnknownNameError
from vizcnn.core.extract import Extractor
from vizcnn.io.imageio import read_image
from vizcnn.io.inputs import fit, normalize
from vizcnn.methods.invariance import default_amounts, invariance_curves, last_hidden_layer, transform_images
from vizcnn.models import get_spec
from vizcnn.models.zfnet import zfnet


class SmallConvNet(nn.Module):
    """A random conv model with a hidden layer: conv → relu → pool → conv → relu → fc → relu → fc."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 5, padding=2)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.hidden = nn.Linear(16 * 16 * 16, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.out(F.relu(self.hidden(x.flatten(1))))


@pytest.fixture(scope="module")
def cat64(samples_dir):
    """A natural image (smooth, so that small shifts move features less than large ones)."""
    return normalize(fit(read_image(samples_dir / "cat.jpg"), (64, 64)), get_spec("alexnet"))


@pytest.mark.parametrize("transform,identity", [("translate", 0), ("scale", 1), ("rotate", 0), ("rotate", 360)])
def test_identity_gives_distance_zero_and_the_unmodified_probability(cat64, transform, identity):
    model = SmallConvNet().eval()
    before = snapshot(model)
    result = invariance_curves(model, cat64, transform, [identity, identity], target=3)
    assert_untouched(model, before)
    assert result.distance_first.tolist() == [0.0, 0.0] and result.distance_last.tolist() == [0.0, 0.0]
    with torch.no_grad():
        p = model(cat64).softmax(1)[0]
    assert result.probability_clean == pytest.approx(float(p[3]), rel=1e-5)
    assert result.probability.tolist() == pytest.approx([float(p[3])] * 2, rel=1e-5)


def test_distances_grow_with_translation(cat64):
    model = SmallConvNet().eval()
    amounts = [-24, -16, -8, -2, 0, 2, 8, 16, 24]
    result = invariance_curves(model, cat64, "translate", amounts)
    assert (result.first_layer, result.last_layer) == ("conv1", "input of out")
    for d in (result.distance_first, result.distance_last):
        by_shift = {}
        for a, v in zip(amounts, d.tolist()):
            by_shift.setdefault(abs(a), []).append(v)
        mean = [sum(v) / len(v) for _, v in sorted(by_shift.items())]  # shifts 0, 2, 8, 16, 24
        # Layer 1 saturates after a few px (its features decorrelate fast); on average it still grows.
        assert mean[0] == 0 < mean[1] < mean[-1], mean
        assert sum(mean[3:]) / 2 > sum(mean[1:3]) / 2, mean
    assert result.target == int(model(cat64).argmax())


def test_distances_against_features_computed_by_hand(cat64):
    """The layer-1 vector is conv1's output, the last hidden one is the input of the output
    layer; the distance is ‖f(Tx) - f(x)‖ / ‖f(x)‖."""
    model = SmallConvNet().eval()
    result = invariance_curves(model, cat64, "rotate", [0, 30, 200])
    images = transform_images(cat64, "rotate", [0, 30, 200])
    with torch.no_grad():
        f0, f = model.conv1(cat64).flatten(1), model.conv1(images).flatten(1)
        def hidden(z):
            z = F.relu(model.conv2(F.max_pool2d(F.relu(model.conv1(z)), 2)))
            return F.relu(model.hidden(z.flatten(1)))

        h0, h = hidden(cat64), hidden(images)
    torch.testing.assert_close(result.distance_first, ((f - f0).norm(dim=1) / f0.norm()).float(), rtol=1e-4,
                               atol=1e-6)
    torch.testing.assert_close(result.distance_last, ((h - h0).norm(dim=1) / h0.norm()).float(), rtol=1e-4,
                               atol=1e-6)
    assert result.raw_first[1] == pytest.approx(float((f[1] - f0[0]).norm()), rel=1e-4)


def test_warps_match_exact_references():
    x = torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    rotated = transform_images(x, "rotate", [90, 180])
    torch.testing.assert_close(rotated[0], torch.rot90(x[0], 1, (1, 2)), atol=1e-5, rtol=0)  # counter-clockwise
    torch.testing.assert_close(rotated[1], torch.rot90(x[0], 2, (1, 2)), atol=1e-5, rtol=0)
    down = transform_images(x, "translate", [5, -3])
    torch.testing.assert_close(down[0, :, 5:], x[0, :, :-5], atol=1e-5, rtol=0)
    assert down[0, :, :5].abs().max() < 1e-6  # "mean" border: 0 in normalised space
    torch.testing.assert_close(down[1, :, :-3], x[0, :, 3:], atol=1e-5, rtol=0)
    mirrored = transform_images(x, "translate", [4], border="reflect")[0]
    torch.testing.assert_close(mirrored[:, :4], x[0, :, :4].flip(1), atol=1e-5, rtol=0)
    zoom = transform_images(x, "scale", [2.0])[0]  # about the centre: the middle of a 2× bilinear upsampling
    upsampled = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(zoom, upsampled[:, 10:30, 10:30], atol=1e-5, rtol=0)


def test_alexnet_family_last_hidden_layer_is_fc7():
    model = zfnet(num_classes=10, hidden=16, input_size=99).eval()  # ZFNet's layers, a narrow classifier
    label, module = last_hidden_layer(model, torch.zeros(1, 3, 99, 99))
    assert label == "fc7" and module is model.classifier.fc8


@pytest.mark.parametrize("kwargs,error,match", [
    ({"transform": "shear"}, BadArgumentError, "unknown transform"),
    ({"amounts": []}, BadArgumentError, "non-empty"),
    ({"amounts": [float("inf")]}, BadArgumentError, "finite"),
    ({"transform": "scale", "amounts": [0.5, 0]}, BadArgumentError, "positive"),
    ({"target": 10}, BadArgumentError, "out of range"),
    ({"border": "wrap"}, BadArgumentError, "unknown border"),
    ({"layers": ("conv1", "conv9")}, UnknownNameError, "conv9"),
])
def test_bad_arguments(cat64, kwargs, error, match):
    model = SmallConvNet().train()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        invariance_curves(model, cat64, **{"transform": "translate", **kwargs})
    assert_untouched(model, before)


def test_chosen_layers_and_defaults():
    assert default_amounts("translate") == [float(10 * k) for k in range(-6, 7)]
    assert default_amounts("scale")[0] == 0.6 and default_amounts("scale")[-1] == 1.4
    assert default_amounts("rotate") == [float(10 * k) for k in range(36)]
    model = SmallConvNet().eval()
    x = torch.randn(1, 3, 64, 64)
    result = invariance_curves(model, x, "scale", [1.0, 1.2], layers=("conv2", "hidden"))
    with Extractor(model, ["conv2"]) as ex:
        ex.run(x)
    assert result.first_layer == "conv2" and result.norm_first == pytest.approx(float(ex["conv2"].norm()), rel=1e-5)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_invariance_end_to_end(tmp_path, samples_dir):
    out = tmp_path / "inv"
    result = run("invariance", "lenet5", samples_dir / "camera.png", "--weights", "random", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["files"] == ["invariance_rotate.png", "invariance_scale.png", "invariance_translate.png"]
    for entry in summary["transforms"]:
        assert (out / entry["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        n = len(entry["amounts"])
        assert len(entry["distance_first"]) == len(entry["distance_last"]) == len(entry["probability"]) == n
        identity = entry["amounts"].index(1.0 if entry["transform"] == "scale" else 0.0)
        assert entry["distance_first"][identity] == 0 and entry["distance_last"][identity] == 0
        assert entry["probability"][identity] == pytest.approx(entry["probability_original"], rel=1e-5)
    translate = summary["transforms"][0]  # 10 px at 224 is 1 px at lenet5's 32
    assert translate["transform"] == "translate" and translate["amounts"] == [float(k) for k in range(-6, 7)]
    assert translate["last_layer"] == "input of out" and translate["first_layer"] == "c1"


def test_cli_invariance_one_transform_and_errors(tmp_path, samples_dir):
    out = tmp_path / "inv"
    result = run("invariance", "lenet5", samples_dir / "camera.png", "--weights", "random", "--transform", "rotate",
                 "--amounts", "0,45,90", "--border", "reflect", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["files"] == ["invariance_rotate.png"]
    assert summary["transforms"][0]["amounts"] == [0.0, 45.0, 90.0] and summary["transforms"][0]["border"] == "reflect"
    for args, fragment in [(("--amounts", "1,2"), "needs one --transform"),
                           (("--transform", "scale", "--amounts", "1,x"), "comma-separated numbers"),
                           (("--transform", "scale", "--amounts", "-1"), "positive")]:
        bad = run("invariance", "lenet5", samples_dir / "camera.png", "--weights", "random", "--out",
                  tmp_path / "bad", *args)
        lines = [line for line in bad.output.splitlines() if line.strip()]
        assert bad.exit_code == 2 and len(lines) == 1 and fragment in lines[0], bad.output
