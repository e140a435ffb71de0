"""Saliency maps against independent references (autograd, captum, hand computations)."""
from __future__ import annotations

import copy
import functools
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import assert_untouched, image, snapshot
from torch import nn

from vizcnn.core.errors import BadArgumentError, BadInputError, UnknownNameError
from vizcnn.methods.saliency import METHODS, default_gradcam_layer, saliency
from vizcnn.models import build_model


class TinyNet(nn.Module):
    """conv-ReLU-pool-conv-F.relu-mean-fc: one module ReLU and one functional ReLU."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


pytestmark = pytest.mark.usefixtures("one_thread")




@functools.lru_cache(maxsize=None)
def cached(name: str) -> nn.Module:
    """Seeded 10-class zoo models, built once; tests only read them."""
    model = build_model(name, num_classes=10).eval()
    if name == "googlenet":  # torchvision's init (std 0.01) gives logits ~1e-14 apart: use He init instead
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
    return model


def autograd_gradient(model, x, target):
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(leaf)[0, target], leaf)
    return g[0]


@pytest.mark.parametrize("name,size", [("alexnet", 99), ("resnet18", 64), ("tiny", 32)])
def test_gradient_is_autograd_of_the_logit(name, size):
    model = tiny() if name == "tiny" else cached(name)
    x = image(3, size)
    before = snapshot(model)
    r = saliency(model, x, "gradient")
    assert_untouched(model, before)
    with torch.no_grad():
        logits = model(x)
    assert r.target == int(logits.argmax())
    assert r.probability == pytest.approx(float(torch.softmax(logits[0], 0)[r.target]), rel=1e-5)
    ref = autograd_gradient(model, x, r.target)
    torch.testing.assert_close(r.attribution, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    torch.testing.assert_close(r.map, ref.abs().amax(0), rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    other = saliency(model, x, "gradient", target=(r.target + 1) % 10 if name != "tiny" else 4)
    assert not torch.allclose(other.attribution, r.attribution)


def test_gradient_through_lrn_is_the_true_gradient():
    """With an LRN layer (AlexNet-2012, ZFNet) the gradient method must not use the
    deconvnet's identity rule for it."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.LocalResponseNorm(5, alpha=0.5, beta=0.75, k=2),
                          nn.Flatten(), nn.LazyLinear(3))
    torch.manual_seed(0)
    x = image(3, 12) * 5
    model(x)
    model.eval()
    r = saliency(model, x, "gradient")
    ref = autograd_gradient(model, x, r.target)
    torch.testing.assert_close(r.attribution, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    # the reverse rules' gradient is the gradient too (LRN differentiated); their LRN-as-
    # identity convention applies to the deconvnet only, where it changes the result
    from vizcnn.core.rules import ReverseRules

    grads = {}
    for method, lrn in (("gradient", "identity"), ("deconvnet", "identity"), ("deconvnet", "gradient")):
        leaf = x.clone().requires_grad_(True)
        with ReverseRules(method, lrn=lrn):
            (grads[method, lrn],) = torch.autograd.grad(model(leaf)[0, r.target], leaf)
    torch.testing.assert_close(grads["gradient", "identity"][0], ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    assert not torch.allclose(grads["deconvnet", "identity"], grads["deconvnet", "gradient"], rtol=1e-3)


def test_guided_and_deconvnet_equal_captum_where_captum_is_right():
    """On AlexNet every ReLU is an nn.ReLU module, so captum's hooks see them all."""
    from captum.attr import Deconvolution, GuidedBackprop

    model, x = cached("alexnet"), image(3, 99)
    for method, reference in (("guided", GuidedBackprop), ("deconvnet", Deconvolution)):
        r = saliency(model, x, method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = reference(model).attribute(x.clone(), target=r.target)[0]
        torch.testing.assert_close(r.attribution, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_guided_and_deconvnet_are_right_on_googlenet_where_captum_is_not():
    """GoogLeNet calls F.relu: captum's Deconvolution/GuidedBackprop return the plain
    gradient there; vizcnn's reverse rules catch every ReLU."""
    from captum.attr import Deconvolution, GuidedBackprop, Saliency

    model, x = cached("googlenet"), image(3, 40)
    before = snapshot(model)
    grad = saliency(model, x, "gradient")
    t = grad.target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = Saliency(model).attribute(x.clone(), target=t, abs=False)[0]
        captum = {m: c(model).attribute(x.clone(), target=t)[0]
                  for m, c in (("guided", GuidedBackprop), ("deconvnet", Deconvolution))}
    model.zero_grad(set_to_none=True)  # captum leaves parameter gradients behind
    torch.testing.assert_close(grad.attribution, plain, rtol=1e-4, atol=1e-6 * float(plain.abs().max()))
    for method in ("guided", "deconvnet"):
        # captum's result is the gradient (to float rounding): its ReLU hooks never fire
        torch.testing.assert_close(captum[method], plain, rtol=1e-6, atol=1e-6 * float(plain.abs().max()))
        ours = saliency(model, x, method, target=t).attribution
        assert (ours - plain).norm() > 0.3 * plain.norm(), method
    guided = saliency(model, x, "guided", target=t).attribution
    assert (guided - saliency(model, x, "deconvnet", target=t).attribution).norm() > 0.1 * guided.norm()
    assert_untouched(model, before)


def test_gradcam_equals_hand_computation():
    model, x = tiny(), image(3, 32)
    assert default_gradcam_layer(model, (3, 32, 32)) == "conv2"
    before = snapshot(model)
    r = saliency(model, x, "gradcam")
    assert_untouched(model, before)
    # hand: A = conv2's output, weights = spatial mean of dlogit/dA, CAM = ReLU(sum_k w_k A_k)
    a = model.conv2(model.pool(model.relu1(model.conv1(x)))).detach().requires_grad_(True)
    logits = model.fc(F.relu(a).mean((2, 3)))
    assert r.target == int(logits.argmax())
    (g,) = torch.autograd.grad(logits[0, r.target], a)
    cam = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp_min(0)
    ref = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(r.map, ref.detach(), rtol=1e-5, atol=1e-7)
    assert r.info["layer"] == "conv2" and r.info["layer_shape"] == [16, 16, 16]
    # the same as captum's LayerGradCam
    from captum.attr import LayerAttribution, LayerGradCam

    layer_cam = LayerGradCam(model, model.conv2).attribute(x, target=r.target, relu_attributions=True)
    up = LayerAttribution.interpolate(layer_cam, (32, 32), interpolate_mode="bilinear")[0, 0]
    torch.testing.assert_close(r.map, up.detach(), rtol=1e-5, atol=1e-7)


def test_gradcam_default_layers_and_named_layers():
    assert default_gradcam_layer(cached("alexnet")) == "conv5"
    assert default_gradcam_layer(cached("resnet18"), (3, 64, 64)) == "layer4"
    assert default_gradcam_layer(cached("googlenet"), (3, 64, 64)) == "inception5b"
    assert default_gradcam_layer(build_model("lenet5"), (1, 32, 32)) == "act3"  # c5 is 1×1
    model, x = cached("resnet18"), image(3, 64)
    before = snapshot(model)
    r3 = saliency(model, x, "gradcam", layer="layer3")
    r4 = saliency(model, x, "gradcam")
    assert r3.info["layer_shape"] == [256, 4, 4] and r4.info["layer_shape"] == [512, 2, 2]
    assert r3.map.shape == (64, 64) and (r3.map >= 0).all()
    relu1 = saliency(model, x, "gradcam", layer="layer1.0.relu:1")  # the block's second ReLU call
    assert relu1.info["layer_shape"] == [64, 16, 16]
    assert_untouched(model, before)


def test_integrated_gradients_completeness_and_captum():
    from captum.attr import IntegratedGradients

    model, x = cached("resnet18"), image(3, 32)
    r = saliency(model, x, "integrated-gradients", steps=50)
    with torch.no_grad():
        gap = float(model(x)[0, r.target] - model(torch.zeros_like(x))[0, r.target])
    assert abs(gap) > 0.1
    assert float(r.attribution.sum()) == pytest.approx(gap, rel=0.03)
    assert r.info["score_difference"] == pytest.approx(gap, rel=1e-4)
    small, x = tiny(), image(3, 16)
    r = saliency(small, x, "integrated-gradients", steps=20)
    ref = IntegratedGradients(small).attribute(x, target=r.target, n_steps=20)[0]
    torch.testing.assert_close(r.attribution, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    chunked = saliency(small, x, "integrated-gradients", steps=20, batch_size=7)  # chunking changes nothing
    torch.testing.assert_close(chunked.attribution, r.attribution, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    black = -torch.ones_like(x)
    rb = saliency(small, x, "integrated-gradients", steps=20, baseline=black)
    refb = IntegratedGradients(small).attribute(x, baselines=black, target=r.target, n_steps=20)[0]
    torch.testing.assert_close(rb.attribution, refb, rtol=1e-4, atol=1e-5 * float(refb.abs().max()))


def test_smoothgrad():
    model, x = tiny(), image(3, 32)
    grad = saliency(model, x, "gradient")
    flat = saliency(model, x, "smoothgrad", noise=0.0, samples=3)
    torch.testing.assert_close(flat.attribution, grad.attribution, rtol=1e-5, atol=1e-7)
    a = saliency(model, x, "smoothgrad", samples=6, seed=1)
    b = saliency(model, x, "smoothgrad", samples=6, seed=1)
    c = saliency(model, x, "smoothgrad", samples=6, seed=2)
    assert torch.equal(a.map, b.map) and not torch.equal(a.map, c.map)
    assert a.target == grad.target and a.info["sigma"] == pytest.approx(0.15 * float(x.max() - x.min()))


def test_occlusion_equals_captum_and_finds_the_seen_region():
    from captum.attr import Occlusion

    model, x = tiny(), image(3, 32)
    r = saliency(model, x, "occlusion", window=8, stride=4)
    ref = Occlusion(lambda z: torch.softmax(model(z), 1)).attribute(
        x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=0, target=r.target)[0]
    torch.testing.assert_close(r.attribution[0], ref[0], rtol=1e-4, atol=1e-7)

    # strides that do not divide (H − window): captum clips the last square at the edge,
    # so no band at the bottom/right is left uncovered (it used to stay 0 here)
    for window, stride in ((8, 5), (7, 3), (10, 9), (6, 5)):
        r = saliency(model, x, "occlusion", window=window, stride=stride)
        ref = Occlusion(lambda z: torch.softmax(model(z), 1)).attribute(
            x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0,
            target=r.target)[0]
        torch.testing.assert_close(r.attribution[0], ref[0], rtol=1e-4, atol=1e-7)
        assert r.info["positions"] == (-(-(32 - window) // stride) + 1) ** 2

    class Corner(nn.Module):  # sees only the top-left 8×8 pixels
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3 * 8 * 8, 4)

        def forward(self, z):
            return self.fc(self.conv(z)[:, :, :8, :8].flatten(1))

    torch.manual_seed(0)
    corner = Corner().eval()
    m = saliency(corner, x, "occlusion", window=4, stride=4).attribution[0]
    assert m[:8, :8].abs().min() > 0
    assert m[8:].abs().max() == 0 and m[:, 8:].abs().max() == 0


def test_model_untouched_also_after_errors():
    model, x = tiny(), image(3, 32)
    model.train()  # a model in train mode is explained in eval mode and handed back in train mode
    before = snapshot(model)
    for method in METHODS:
        r = saliency(model, x, method, steps=4, samples=2)
        assert r.map.shape == (32, 32) and r.method == method and 0 <= r.target < 5
    assert_untouched(model, before)
    bad = [
        (dict(method="gradient", target=5), BadArgumentError, "5 classes"),
        (dict(method="integrated-gradients", target=-1), BadArgumentError, "out of range"),
        (dict(method="gradcam", layer="conv9"), UnknownNameError, "conv9"),
        (dict(method="gradcam", layer="fc"), BadArgumentError, "spatial"),
        (dict(method="gradient", layer="conv1"), BadArgumentError, "gradcam"),
        (dict(method="saliency"), BadArgumentError, "choose one of"),
        (dict(method="integrated-gradients", steps=0), BadArgumentError, "steps"),
        (dict(method="occlusion", window=40), BadArgumentError, "larger than"),
    ]
    for kwargs, error, text in bad:
        with pytest.raises(error, match=text):
            saliency(model, x, **kwargs)
        assert_untouched(model, before)
    with pytest.raises(BadInputError, match="cannot run"):
        saliency(model, image(1, 32), "gradient")
    assert_untouched(model, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_the_model_device():
    model, x = tiny(), image(3, 32)
    gpu = copy.deepcopy(model).cuda()
    for method in ("gradient", "guided", "gradcam", "integrated-gradients"):
        a, b = saliency(model, x, method, steps=8), saliency(gpu, x, method, steps=8)
        assert b.map.device.type == "cuda"
        torch.testing.assert_close(b.map.cpu(), a.map, rtol=1e-3, atol=1e-4 * float(a.map.max()))


# --------------------------------------------------------------------------- CLI


def run_cli(*args):
    from cli.main import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_saliency_one_method(tmp_path, samples_dir):
    out = tmp_path / "g"
    res = run_cli("saliency", "resnet18", str(samples_dir / "cat.jpg"), "--weights", "random", "--device", "cpu",
                  "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert sorted(summary["files"]) == ["gradient_map.png", "gradient_overlay.png"]
    assert json.loads((out / "summary.json").read_text())["target"] == summary["target"]
    from vizcnn.models import class_names

    assert summary["class_name"] == class_names("resnet18")[summary["target"]]
    assert 0 < summary["probability"] <= 1 and summary["top5"][0]["index"] == summary["target"]
    stats = summary["methods"]["gradient"]["map"]
    assert stats["max"] >= stats["mean"] > 0
    for f in summary["files"]:
        assert (out / f).stat().st_size > 0
    assert (out / "gradient_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_saliency_all(tmp_path, samples_dir):
    out = tmp_path / "all"
    res = run_cli("saliency", "lenet5", str(samples_dir / "coffee.jpg"), "--weights", "random", "--method", "all",
                  "--steps", "4", "--target", "3", "--out", str(out))
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == 3 and summary["class_name"] == "Dress"
    assert set(summary["methods"]) == set(METHODS)
    expected = {f"{m}_{kind}.png" for m in METHODS for kind in ("map", "overlay")} | {"panel.png"}
    assert set(summary["files"]) == expected
    assert {p.name for p in out.iterdir()} == expected | {"summary.json", ".vizcnn-manifest.json"}
    assert summary["methods"]["gradcam"]["layer"] == "act3"


@pytest.mark.parametrize("args,text", [
    (["--target", "1000"], "1000 classes"),
    (["--method", "gradcam", "--layer", "layer9"], "unknown layer 'layer9'"),
    (["--layer", "layer4"], "--layer applies to --method gradcam"),
    (["--method", "gradcam", "--layer", "fc"], "spatial layer"),
])
def test_cli_bad_arguments(tmp_path, samples_dir, args, text):
    res = run_cli("saliency", "resnet18", str(samples_dir / "cat.jpg"), "--weights", "random",
                  "--out", str(tmp_path / "x"), *args)
    assert res.exit_code == 2
    assert text in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_cli_bad_image(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    res = run_cli("saliency", "lenet5", str(bad), "--weights", "random", "--out", str(tmp_path / "x"))
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
