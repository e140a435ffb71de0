"""Occlusion sensitivity (Fig. 7): maps against brute force, incremental against full recomputation."""
from __future__ import annotations

import functools
import json

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_untouched, snapshot
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from cli.main import cli
from vizcnn.core.errors import BadArgumentError, BadInputError, UnknownNameError
from vizcnn.core.extract import Extractor
from vizcnn.methods.occlusion import occlude, occlusion_map, positions
from vizcnn.methods.occlusion_engine import IncrementalOcclusion
from vizcnn.models import build_model
from vizcnn.models.zfnet import zfnet


@functools.lru_cache(maxsize=None)
def cached(name: str, size: int = 224) -> nn.Module:
    """Seeded models, built once per session; tests only read them. ZFNet gets a narrow
    classifier sized for the input, VGG-11 only its feature stack: building the full fc
    layers would cost more than the tests."""
    if name == "zfnet":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return zfnet(num_classes=10, hidden=32, input_size=size).eval()
    if name == "vgg11":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return VGGFeatures().eval()
    return build_model(name, num_classes=10).eval()


class VGGFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = make_layers(cfgs["A"])


def image(size: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))


def occluded(x: torch.Tensor, boxes, fill) -> torch.Tensor:
    """The occluded images written out one by one: the independent reference."""
    out = x.repeat(len(boxes), 1, 1, 1)
    fill = torch.as_tensor(fill, dtype=x.dtype).view(-1, 1, 1)
    for k, (top, left, h, w) in enumerate(boxes):
        out[k, :, top:top + h, left:left + w] = fill
    return out


class RegionModel(nn.Module):
    """Logits that depend only on the 8×8 input region rows 8..15, columns 16..23: a 1×1 conv
    (no spatial reach) and a classifier whose weights are zero outside the region."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.classifier = nn.Linear(4 * 32 * 32, 3)
        with torch.no_grad():
            self.features[0].weight.fill_(0.5)
            self.features[0].bias.zero_()
            weight = torch.zeros(3, 4, 32, 32)
            weight[0, :, 8:16, 16:24] = 0.004  # p(class 0) about 0.8 unoccluded
            weight[1, :, 8:16, 16:24] = -0.004
            self.classifier.weight.copy_(weight.flatten(1))
            self.classifier.bias.zero_()

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class TinyNet(nn.Module):
    """A small AlexNet-shaped model (friendly names conv1, conv2, fc3, fc4), cheap to snapshot."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(inplace=True),
                                      nn.LocalResponseNorm(3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class CroppingRegionModel(RegionModel):
    """The same logits, but the forward is not features → flatten → classifier."""

    def forward(self, x):
        f = self.features(x)
        return self.classifier(torch.flatten(nn.functional.pad(f[..., 8:16, 16:24], (16, 8, 8, 16)), 1))


@pytest.mark.parametrize("model_cls,method", [(RegionModel, "incremental"), (CroppingRegionModel, "full")])
def test_model_that_sees_one_region_drops_exactly_there(model_cls, method):
    model = model_cls().eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) + 0.5  # positive: fill 0 lowers class 0
    before = snapshot(model)
    result = occlude(model, x, window=4, stride=4, target=0, projection=False)
    assert result.method == method and result.shape == (8, 8)
    drop = occlusion_map(model, x, 0, window=4, stride=4)
    assert torch.equal(drop, result.drop)
    seen = torch.zeros(8, 8, dtype=torch.bool)
    seen[2:4, 4:6] = True  # occluders at rows 8, 12 and columns 16, 20: inside the region
    assert (drop[seen] > 0.02).all()
    assert (drop[~seen].abs() < 1e-6).all()
    assert (result.top_class[~seen] == 0).all()
    assert_untouched(model, before)


@pytest.mark.parametrize("name,size,window,stride", [
    ("zfnet", 131, 31, 25),  # ceil-mode pools; the last occluder is flush with the border (31 + 4·25 = 131)
    ("zfnet", 115, 13, 7),
    ("alexnet-2012", 131, 32, 16),
    ("alexnet-2012", 99, 19, 20),  # gaps between occluders
    ("vgg11", 67, 32, 16),
    ("vgg11", 83, 13, 7),
])
def test_incremental_features_equal_full_recomputation(name, size, window, stride):
    """Occluders at the corners, the borders and inside, with a per-channel fill, against
    model.features run on the occluded images."""
    model = cached(name)
    x = image(size, seed=size)
    fill = torch.tensor([0.3, -0.2, 0.1])
    tops, lefts = positions((size, size), window, stride)
    keys = list(model.features._modules)
    index = keys.index("relu3" if "relu3" in keys else "8")  # panel (b) mid-stack
    engine = IncrementalOcclusion(model, x, window=(window, window), tops=tops, lefts=lefts,
                                  fill=fill.view(1, -1, 1, 1), layer_index=index)
    pick = lambda n: sorted({0, 1, n // 2, n - 1})  # noqa: E731
    pairs = [(r, c) for r in pick(len(tops)) for c in pick(len(lefts))]
    rows, cols = torch.tensor([r for r, _ in pairs]), torch.tensor([c for _, c in pairs])
    with torch.no_grad():
        last, totals = engine.run(rows, cols, channel=5)
        reference = occluded(x, [(int(tops[r]), int(lefts[c]), window, window) for r, c in pairs], fill)
        mid = model.features[:index + 1](reference)
        full = model.features[index + 1:](mid.clone())
    assert full.shape == last.shape
    assert not torch.allclose(full, model.features(x).expand_as(full))  # the occluders do change the maps
    torch.testing.assert_close(last, full, rtol=1e-4, atol=1e-5 * float(full.abs().max()))
    torch.testing.assert_close(totals, mid[:, 5].sum(dim=(1, 2)), rtol=1e-4, atol=1e-6)


def test_lrn_reaches_no_neighbouring_pixel():
    """LocalResponseNorm normalises across channels only, so its spatial reach is 0."""
    lrn = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    a = torch.rand(1, 16, 9, 9)
    b = a.clone()
    b[0, :, 4, 6] += 3.0
    changed = (lrn(a) != lrn(b)).any(dim=1)[0]
    assert changed[4, 6] and changed.sum() == 1


@pytest.mark.parametrize("size,window,stride", [(131, 31, 50)])
def test_occlude_incremental_equals_full(size, window, stride):
    """ZFNet (ceil-mode pools) end to end, classifier included; the last occluders are flush
    with the border (100 + 31 = 131)."""
    model = cached("zfnet", size)
    x = image(size, seed=3)
    inc = occlude(model, x, window=window, stride=stride, projection=False)
    full = occlude(model, x, window=window, stride=stride, projection=False, incremental=False)
    assert (inc.method, full.method) == ("incremental", "full")
    for a, b in [(inc.probability, full.probability), (inc.activation, full.activation),
                 (inc.top_probability, full.top_probability)]:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    assert torch.equal(inc.top_class, full.top_class)
    assert (inc.layer, inc.channel, inc.target) == (full.layer, full.channel, full.target)


def test_panels_match_a_brute_force_loop():
    """(b) and (d) at a few positions against occluded images run one by one through the model."""
    model = cached("zfnet", 99)
    x = image(99, seed=4)
    result = occlude(model, x, window=30, stride=32, layer="conv4", target=7)
    # 99 − 30 = 69 is not a multiple of 32: a 4th row/column at 96, clipped to 96..99 (captum's)
    assert result.layer == "conv4" and result.target == 7 and result.shape == (4, 4)
    assert result.tops.tolist() == [0, 32, 64, 96] and result.box(3, 3) == (96, 99, 96, 99)
    with Extractor(model, ["conv4"]) as ex:
        ex.run(x)
        clean = ex["conv4"][0]
        assert result.channel == int(clean.amax(dim=(1, 2)).argmax())
        assert result.activation_clean == pytest.approx(float(clean[result.channel].sum()), rel=1e-5)
        for i, j in [(0, 0), (1, 2), (2, 2), (2, 1), (3, 3), (3, 0), (1, 3)]:
            top, bottom, left, right = result.box(i, j)
            xo = occluded(x, [(top, left, bottom - top, right - left)], [0.0, 0.0, 0.0])
            with torch.no_grad():
                p = model(xo).softmax(1)[0]
            ex.run(xo)
            total = float(ex["conv4"][0, result.channel].sum())
            assert float(result.activation[i, j]) == pytest.approx(total, rel=1e-4)
            assert float(result.probability[i, j]) == pytest.approx(float(p[7]), rel=1e-4)
            assert int(result.top_class[i, j]) == int(p.argmax())
    # (c): the strongest unit's projection, inside its receptive field
    top, bottom, left, right = result.projection_box
    assert result.projection.shape == x.shape[1:]
    inside = result.projection[:, top:bottom, left:right].abs().sum()
    assert inside > 0 and inside == pytest.approx(float(result.projection.abs().sum()))


@pytest.mark.parametrize("size,window,stride", [(32, 8, 5), (30, 7, 4), (25, 10, 9), (17, 6, 5), (16, 4, 4)])
def test_positions_equal_captums_with_clipped_edge_windows(size, window, stride):
    """captum.attr.Occlusion against occlude's squares: the per-pixel average of the
    logit drops of occlude's squares (clipped at the edge when the stride does not
    divide) equals captum's map, and occlude's probabilities are those squares'."""
    from captum.attr import Occlusion

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * size * size, 5)).eval()
    x = image(size, seed=1)
    r = occlude(model, x, window=window, stride=stride, projection=False, incremental=False, layer="1")
    occ = Occlusion(model)
    expected = -(-(size - window) // stride) + 1
    assert r.shape == (expected, expected)
    # every pixel occluded by some position; a pixel's count of covering squares as captum's
    covered = torch.zeros(size, size)
    for i in range(r.shape[0]):
        for j in range(r.shape[1]):
            t, b, left, right = r.box(i, j)
            assert b <= size and right <= size
            covered[t:b, left:right] += 1
    assert covered.min() > 0
    with torch.no_grad():
        ref = occ.attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0,
                            target=r.target)[0, 0]
        p0 = torch.softmax(model(x), 1)[0, r.target]
        mine = torch.zeros(size, size)
        logit_drop = torch.zeros(r.shape)
        for i in range(r.shape[0]):
            for j in range(r.shape[1]):
                t, b, left, right = r.box(i, j)
                xo = occluded(x, [(t, left, b - t, right - left)], [0.0, 0.0, 0.0])
                logit_drop[i, j] = model(x)[0, r.target] - model(xo)[0, r.target]
                mine[t:b, left:right] += logit_drop[i, j]
        torch.testing.assert_close(mine / covered, ref, rtol=1e-4, atol=1e-6)
        # and occlude's own probabilities are those of the same squares
        for i in range(r.shape[0]):
            for j in range(r.shape[1]):
                t, b, left, right = r.box(i, j)
                xo = occluded(x, [(t, left, b - t, right - left)], [0.0, 0.0, 0.0])
                p = torch.softmax(model(xo), 1)[0, r.target]
                assert float(r.drop[i, j]) == pytest.approx(float(p0 - p), abs=1e-6)


def test_defaults_scale_with_the_image():
    tops, lefts = positions((224, 224), None, None)
    assert (len(tops), len(lefts)) == (25, 25) and int(tops[-1]) == 224 - 32
    tops, lefts = positions((32, 40), (8, 4), (4, 9))
    assert tops.tolist() == [0, 4, 8, 12, 16, 20, 24] and lefts.tolist() == [0, 9, 18, 27, 36]


@pytest.mark.parametrize("kwargs,match", [
    ({"window": 0}, "positive"), ({"window": -3}, "positive"), ({"window": 65}, "larger than the 64×64"),
    ({"window": (8, 70)}, "larger"), ({"stride": 0}, "positive"), ({"window": True}, "integer"),
    ({"window": 2.5}, "integer"), ({"target": 10}, "out of range"), ({"target": -1}, "non-negative"),
    ({"layer": "fc3"}, "spatial"), ({"fill": [0, 0]}, "one per channel"), ({"fill": float("nan")}, "finite"),
    ({"batch_size": 0}, "batch_size"), ({"incremental": "yes"}, "incremental"),
])
def test_bad_arguments_fail_clearly_and_leave_the_model_alone(kwargs, match):
    model = TinyNet().train()  # a training-mode model must come back in training mode
    before = snapshot(model)
    with pytest.raises(BadArgumentError, match=match):
        occlude(model, image(64), **{"window": 16, "stride": 8, **kwargs})
    assert_untouched(model, before)


def test_tiny_model_incremental_equals_full_and_is_left_alone():
    model = TinyNet().train()
    x = image(64, seed=5)
    before = snapshot(model)
    inc = occlude(model, x, window=9, stride=5, layer="conv1")
    full = occlude(model, x, window=9, stride=5, layer="conv1", incremental=False)
    assert_untouched(model, before)
    assert (inc.method, full.method, inc.shape) == ("incremental", "full", (12, 12))
    torch.testing.assert_close(inc.probability, full.probability, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(inc.activation, full.activation, rtol=1e-4, atol=1e-4)
    assert torch.equal(inc.top_class, full.top_class)
    default = occlude(model, x, window=9, stride=5, projection=False)
    assert default.layer == "conv2" and default.projection is None


def test_input_the_model_cannot_take():
    model = RegionModel().eval()  # its classifier needs 32×32 maps
    with pytest.raises(BadInputError, match="cannot run on an input of shape"):
        occlude(model, torch.rand(1, 3, 40, 40), window=8, stride=8)


def test_unknown_layer_and_forced_incremental_on_a_model_without_it():
    with pytest.raises(UnknownNameError, match="conv9"):
        occlude(TinyNet(), image(64), window=16, stride=16, layer="conv9")
    model = CroppingRegionModel().eval()
    before = snapshot(model)
    with pytest.raises(BadArgumentError, match="incremental occlusion does not apply"):
        occlude(model, torch.rand(1, 3, 32, 32), window=8, stride=8, incremental=True)
    assert_untouched(model, before)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_occlusion_end_to_end(tmp_path, samples_dir):
    out = tmp_path / "occ"
    result = run("occlusion", "alexnet", samples_dir / "cat.jpg", "--weights", "random", "--window", "96",
                 "--stride", "64", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["files"] == ["occlusion.png"]
    assert (out / "occlusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["positions"] == [3, 3] and summary["window"] == [96, 96] and summary["stride"] == [64, 64]
    assert summary["layer"] == "conv5" and summary["method"] == "incremental"
    assert summary["target"] == summary["top_class_unoccluded"]
    assert summary["target_name"] and len(summary["maps"]["probability"]) == 3
    assert 0 <= summary["strongest_map"] < 256
    assert set(summary["timings_s"]) >= {"clean", "occlusion", "projection"}
    prob = summary["maps"]["probability"]
    low = summary["min_probability"]
    assert prob[low["row"]][low["col"]] == low["value"] == min(min(r) for r in prob)


def test_cli_occlusion_full_on_lenet(tmp_path, samples_dir):
    out = tmp_path / "occ"
    result = run("occlusion", "lenet5", samples_dir / "camera.png", "--weights", "random", "--window", "8",
                 "--stride", "4", "--full", "--target", "3", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["positions"] == [7, 7] and summary["method"] == "full" and summary["target"] == 3
    # LeNet-5 has no rectifier: panel (c)'s deconvnet is its gradient, and the run says so
    assert "no rectifier" in result.stderr and "no rectifier" in summary["activation_warnings"][0]


@pytest.mark.parametrize("args,fragment", [
    (("--window", "0"), "positive"), (("--window", "500"), "larger than the 32×32 image"),
    (("--stride", "-2"), "positive"), (("--layer", "c9"), "unknown layer"),
    (("--target", "10"), "out of range"), (("--layer", "f6"), "spatial feature map"),
])
def test_cli_occlusion_bad_arguments_one_line(tmp_path, samples_dir, args, fragment):
    sizes = [a for o in ("--window", "--stride") if o not in args for a in (o, "8")]  # each option once
    result = run("occlusion", "lenet5", samples_dir / "camera.png", "--weights", "random", "--out", tmp_path / "o",
                 *sizes, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.output
