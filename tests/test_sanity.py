"""Sanity checks (Adebayo et al. 2018): metrics against hand computations, the cascade,
and the model left untouched."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import assert_untouched, image, snapshot
from torch import nn

from vizcnn.core.errors import BadArgumentError
from vizcnn.methods.sanity import (cascade, interval, parametrised_units, reinitialise, sanity_check, spearman,
                                  ssim, t_quantile, verdict)
from vizcnn.models import build_model


class TinyNet(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


class MiniAlexNet(nn.Module):
    """torchvision AlexNet's module layout (features / classifier, same indices), tiny widths."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(32, 16), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(16, 16), nn.ReLU(inplace=True), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


pytestmark = pytest.mark.usefixtures("one_thread")




# --------------------------------------------------------------------------- metrics


def test_spearman_against_hand_values():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(a, a ** 3) == pytest.approx(1.0)  # any monotone transform
    assert spearman(a, -a) == pytest.approx(-1.0)
    b = torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])  # no ties: 1 - 6 Σd² / (n (n² - 1)) = 1 - 6·4/120
    assert spearman(a, b) == pytest.approx(0.8)
    # ties: ranks of [1, 2, 2, 3] are [0, 1.5, 1.5, 3]; Pearson with [0, 1, 2, 3] by hand
    r = np.array([0, 1.5, 1.5, 3]) - 1.5
    s = np.array([0, 1, 2, 3]) - 1.5
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.arange(4.0)) == pytest.approx(
        (r @ s) / np.sqrt((r @ r) * (s @ s)))
    assert math.isnan(spearman(torch.zeros(4), torch.arange(4.0)))  # a constant map ranks nothing
    with pytest.raises(BadArgumentError):
        spearman(torch.zeros(4), torch.zeros(5))


def test_ssim_identical_anticorrelated_and_by_hand():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(32, 32, generator=g)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 3 * a + 2) == pytest.approx(1.0)  # maps are scaled to [0, 1] first
    assert ssim(a, 1 - a) < -0.9
    b = torch.rand(32, 32, generator=g)
    assert abs(ssim(a, b)) < 0.1
    # one 11×11 window: the Gaussian-weighted formula of Wang et al. written out
    x, y = torch.rand(11, 11, generator=g).double(), torch.rand(11, 11, generator=g).double()
    xs, ys = (x - x.min()) / (x.max() - x.min()), (y - y.min()) / (y.max() - y.min())
    k = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(k, k) / np.outer(k, k).sum()
    xs, ys = xs.numpy(), ys.numpy()
    mx, my = (w * xs).sum(), (w * ys).sum()
    vx, vy = (w * (xs - mx) ** 2).sum(), (w * (ys - my) ** 2).sum()
    cov = (w * (xs - mx) * (ys - my)).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    hand = (2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert ssim(x, y) == pytest.approx(hand, rel=1e-6)


# --------------------------------------------------------------------------- cascade


def test_cascade_units_top_down():
    alex = MiniAlexNet().eval()  # torchvision AlexNet's layout at a fraction of the size
    steps = cascade(alex, image(3, 32))
    assert [label for label, _ in steps] == ["fc8", "fc7", "fc6", "conv5", "conv4", "conv3", "conv2", "conv1"]
    assert steps[0][1] == ["classifier.6"] and steps[-1][1] == ["features.0"]
    resnet = build_model("resnet18", num_classes=10).eval()
    labels = [label for label, _ in cascade(resnet, image(3, 32))]
    assert labels[:3] == ["fc", "layer4.1", "layer4.0"] and labels[-2:] == ["layer1.0", "conv1"]
    assert ["conv1", "bn1"] in parametrised_units(resnet)  # batch norm joins its conv
    assert [label for label, _ in cascade(TinyNet(), image(3, 16))] == ["fc", "conv2", "conv1"]


def test_reinitialise_is_deterministic_and_changes_only_the_unit():
    a, b = TinyNet(), TinyNet()
    b.load_state_dict(a.state_dict())
    a.bn1.running_mean.fill_(0.5)
    b.bn1.running_mean.fill_(0.5)
    reinitialise(a, ["conv1", "bn1"], seed=3)
    reinitialise(b, ["conv1", "bn1"], seed=3)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    c = TinyNet()
    c.load_state_dict(b.state_dict())
    reinitialise(c, ["conv1"], seed=4)
    assert not torch.equal(c.conv1.weight, b.conv1.weight) and torch.equal(c.fc.weight, b.fc.weight)
    assert float(a.bn1.running_mean.abs().max()) == 0  # batch norm back to its initial state


def test_gradient_decorrelates_as_layers_are_randomised():
    torch.manual_seed(0)
    model = TinyNet().eval()
    xs = [image(3, 24, seed=s) for s in range(4)]
    before = snapshot(model)
    r = sanity_check(model, xs, ["gradient", "gradcam"], steps=4)
    assert_untouched(model, before)  # the cascade works on a copy
    assert r.steps == ["original", "fc", "conv2", "conv1"] and len(r.targets) == 4
    for rho, s in zip(r.metrics["spearman_signed"]["gradient"], r.metrics["ssim"]["gradient"]):
        assert rho[0] == pytest.approx(1.0) and s[0] == pytest.approx(1.0)
        assert -0.7 < rho[1] < -0.5  # a random fc flips the map's sign: the same structure, |ρ| ≈ 0.63
        assert max(abs(v) for v in rho[2:]) < 0.1
    curve = r.curves["spearman_signed"]["gradient"]  # of |ρ|, across the four images
    assert curve[0]["mean"] == 1.0 and curve[1]["lo"] > 0.5 and curve[2]["hi"] < 0.5 and curve[1]["n"] == 4
    assert r.verdicts["gradient"]["verdict"] == "passes" and r.verdicts["gradient"]["passes"] is True
    assert r.verdicts["gradient"]["decorrelated_at"] == "conv2"
    assert r.targets[0] == sanity_check(model, xs[0], ["gradient"], target=r.targets[0]).target
    assert all(m.shape == (24, 24) for maps in r.maps.values() for per in maps for m in per)
    one = sanity_check(model, xs[0], ["gradient"])  # one image: no interval, no verdict from one point
    assert one.verdicts["gradient"]["verdict"] == "inconclusive" and one.verdicts["gradient"]["passes"] is None


def test_guided_backprop_stays_similar_while_the_gradient_decorrelates():
    """Adebayo et al.'s finding, reproduced on a small seeded AlexNet-like stack over three
    images: randomising the classifier barely changes guided backprop while the gradient
    decorrelates at once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
                          nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    r = sanity_check(model, torch.cat([image(3, 32, seed=s) for s in range(3)]), ["gradient", "guided"])
    assert r.steps == ["original", "13", "11", "9", "5", "3", "0"] and r.verdict_step == 3
    guided, grad = r.curves["spearman_signed"]["guided"], r.curves["spearman_signed"]["gradient"]
    assert guided[3]["lo"] > 0.7 and grad[1]["hi"] < 0.3  # after all three fc layers / after the last one
    assert all(per[3] > 0.6 for per in r.metrics["ssim"]["guided"])
    assert all(per[1] < 0.3 for per in r.metrics["ssim"]["gradient"])
    assert guided[-1]["mean"] < guided[3]["mean"] - 0.3  # guided changes once the lowest layers are random
    assert r.verdicts["guided"]["verdict"] == "fails" and r.verdicts["gradient"]["verdict"] == "passes"


def test_t_quantiles_and_intervals_against_tables():
    # Student's t, two-sided 95% (any statistics table)
    for df, t in ((1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-3)
    values = [0.2, 0.4, 0.3, 0.5]
    mean, sd = 0.35, float(np.std(values, ddof=1))
    c = interval(values)
    assert c["mean"] == pytest.approx(mean) and c["n"] == 4
    assert c["hi"] - c["mean"] == pytest.approx(3.182 * sd / 2, abs=1e-3)
    assert interval([0.3])["lo"] is None and interval([])["n"] == 0


def test_verdicts_do_not_flip_on_one_point():
    """The report: integrated gradients FAILS at ρ = 0.55 while the gradient passes at 0.42,
    curves nearly the same; Grad-CAM "fails" and is "decorrelated (< 0.5) at fc6" at once.
    From intervals across images, curves that are nearly the same get the same verdict,
    and a method passes exactly when its interval drops below 0.5 in the top half."""
    spread = [-0.12, 0.1, -0.05, 0.08]
    gradient = [interval([0.42 + d for d in spread])]
    integrated = [interval([0.55 + d for d in spread])]
    assert verdict(gradient) == verdict(integrated) == ("inconclusive", None)
    clear = [interval([0.9, 0.85, 0.92, 0.88]), interval([0.2, 0.25, 0.22, 0.18])]
    assert verdict(clear) == ("passes", 1)  # decorrelated at the second step, and passes
    assert verdict([interval([0.9, 0.85, 0.92, 0.88])] * 2) == ("fails", None)
    assert verdict([interval([0.9, 0.85, 0.92, 0.88]), interval([0.1, 0.9, 0.4, 0.7])])[0] == "inconclusive"


def test_a_model_that_cannot_be_copied_is_checked_on_a_copy_without_its_hooks():
    import copy
    import threading

    class Recorder:
        def __init__(self):
            self.lock, self.calls = threading.Lock(), 0

        def hook(self, *_):
            with self.lock:
                self.calls += 1

    model = TinyNet().eval()
    user = Recorder()
    model.conv2.register_forward_hook(user.hook)
    with pytest.raises(TypeError):
        copy.deepcopy(model)
    before = snapshot(model)
    r = sanity_check(model, [image(3, 16, seed=s) for s in range(2)], ["gradient", "gradcam"], steps=2)
    assert_untouched(model, before)
    assert len(r.steps) == 4 and user.calls > 0 and len(model.conv2._forward_hooks) == 1


def test_sanity_errors_leave_the_model_untouched():
    model, x = TinyNet().eval(), image(3, 16)
    before = snapshot(model)
    for kwargs, text in ((dict(methods=["gradient"], target=9), "5 classes"),
                         (dict(methods=["nope"]), "unknown saliency method"),
                         (dict(methods=[]), "no saliency methods"),
                         (dict(methods=["gradient"], layer="conv1"), "gradcam")):
        with pytest.raises(BadArgumentError, match=text):
            sanity_check(model, x, **kwargs)
        assert_untouched(model, before)


# --------------------------------------------------------------------------- CLI


def test_cli_sanity(tmp_path, samples_dir):
    from cli.main import cli

    out = tmp_path / "s"
    res = CliRunner().invoke(cli, ["sanity", "lenet5", "--weights", "random", "--methods", "gradient,gradcam",
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["files"] == ["sanity_curves.png", "sanity_maps.png"]
    for f in (*summary["files"], "summary.json"):
        assert (out / f).stat().st_size > 0
    # no IMAGE: the shipped samples that fit random weights, the photographs
    assert [Path(i["image"]).name for i in summary["images"]] == \
        ["astronaut.jpg", "camera.png", "cat.jpg", "coffee.jpg", "rocket.jpg"]
    assert summary["steps"] == ["original", "f6", "c5", "s4", "c3", "s2", "c1"]
    assert set(summary["verdicts"]) == {"gradient", "gradcam"} and "interval" in summary["verdict_rule"]
    for v in summary["verdicts"].values():
        c = v["spearman_signed_at_verdict_step"]
        assert v["verdict"] in ("passes", "fails", "inconclusive") and c["n"] == 5 and c["lo"] <= c["mean"] <= c["hi"]
    assert len(summary["metrics"]["spearman_abs"]["gradient"]) == 5
    assert len(summary["metrics"]["spearman_abs"]["gradient"][0]) == 7
    assert summary["gradcam_layer"] == "act3"
    more = CliRunner().invoke(cli, ["sanity", "lenet5", str(samples_dir / "camera.png"), "--data", "samples",
                                    "--limit", "2", "--weights", "random", "--methods", "gradient", "--out",
                                    str(tmp_path / "m"), "--json"])
    assert more.exit_code == 0, more.output
    assert len(json.loads(more.stdout)["images"]) == 3  # IMAGE and the first two of DATA
    bad = CliRunner().invoke(cli, ["sanity", "lenet5", str(samples_dir / "camera.png"), "--weights", "random",
                                   "--methods", "gradient,magic", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "magic" in bad.output and len(bad.output.strip().splitlines()) == 1
