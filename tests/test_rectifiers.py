"""Every rectifier is a rectifier (issue 13): ReLU6, hardtanh(x, 0, u), clamp/clip/clamp_min
with min 0 and threshold(x, 0, 0) in every form (module, functional, in place, Tensor
method) get the deconvnet and guided rules; the gradient stays the gradient; what has no
rule is said, and strict makes it an error.

The references here are written without vizcnn.core.rules: a per-call rule applied by hand
on a sequential chain (vizcnn.methods.reference), and forward hooks on the rectifier modules of
torchvision's MobileNetV2 that swap in a hand-written backward.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import vizcnn
from vizcnn.core.errors import ActivationError, ActivationWarning
from vizcnn.core.rules import ReverseRules, activation_policy
from vizcnn.methods.reference import deconvnet_sequential, rectifier_bound

METHODS = ("deconvnet", "guided", "gradient")


# --------------------------------------------------------------------------- rectifiers in every form
# Each subclasses the module whose function it computes, so the reference (which knows
# nn.ReLU, nn.Hardtanh(0, u) and nn.Threshold(0, 0) by type) knows its bound, while the
# engine only sees the functional call it makes.

class FunctionalReLU(nn.ReLU):
    def forward(self, x):
        return F.relu(x)


class FunctionalReLUInplace(nn.ReLU):
    def forward(self, x):
        return F.relu(x, inplace=True)


class TensorReLU_(nn.ReLU):
    def forward(self, x):
        return x.relu_()


class ClampMin(nn.ReLU):
    def forward(self, x):
        return x.clamp(min=0)


class ClampMin_(nn.ReLU):
    def forward(self, x):
        return x.clamp_min_(0)


class TorchClamp(nn.ReLU):
    def forward(self, x):
        return torch.clamp(x, 0)


class Clip6(nn.ReLU6):
    def forward(self, x):
        return torch.clip(x, 0, 6)


class Clamp6_(nn.ReLU6):
    def forward(self, x):
        return x.clamp_(0.0, 6.0)


class FunctionalReLU6(nn.ReLU6):
    def forward(self, x):
        return F.relu6(x)


class FunctionalReLU6Inplace(nn.ReLU6):
    def forward(self, x):
        return F.relu6(x, inplace=True)


class Hardtanh2_(nn.Hardtanh):
    def __init__(self):
        super().__init__(0.0, 2.0)

    def forward(self, x):
        return F.hardtanh_(x, 0.0, 2.0)


class TorchThreshold(nn.Threshold):
    def __init__(self):
        super().__init__(0.0, 0.0)

    def forward(self, x):
        return torch.threshold(x, 0.0, 0.0)


class TorchThreshold_(nn.Threshold):
    def __init__(self):
        super().__init__(0.0, 0.0)

    def forward(self, x):
        return torch.threshold_(x, 0.0, 0.0)


RECTIFIERS = {
    "nn.ReLU": nn.ReLU, "nn.ReLU(inplace)": lambda: nn.ReLU(inplace=True), "F.relu": FunctionalReLU,
    "F.relu(inplace)": FunctionalReLUInplace, "Tensor.relu_": TensorReLU_, "clamp(min=0)": ClampMin,
    "clamp_min_": ClampMin_, "torch.clamp": TorchClamp, "clip(0, 6)": Clip6, "clamp_(0, 6)": Clamp6_,
    "nn.ReLU6": nn.ReLU6, "nn.ReLU6(inplace)": lambda: nn.ReLU6(inplace=True), "F.relu6": FunctionalReLU6,
    "F.relu6(inplace)": FunctionalReLU6Inplace, "nn.Hardtanh(0, 3)": lambda: nn.Hardtanh(0.0, 3.0),
    "F.hardtanh_(0, 2)": Hardtanh2_, "nn.Threshold(0, 0)": lambda: nn.Threshold(0.0, 0.0),
    "nn.Threshold(0, 0, inplace)": lambda: nn.Threshold(0.0, 0.0, inplace=True),
    "torch.threshold": TorchThreshold, "torch.threshold_": TorchThreshold_,
}


def hand_rule(method: str, r: torch.Tensor, f: torch.Tensor, upper: float) -> torch.Tensor:
    """The rules written out: deconvnet R·1(R>0); guided R·1(0<f<u)·1(R>0); gradient R·1(0<f<u)."""
    passed = (f > 0) & (f < upper)
    if method == "deconvnet":
        return r * (r > 0)
    if method == "guided":
        return r * passed * (r > 0)
    return r * passed


@pytest.mark.parametrize("form", list(RECTIFIERS))
@pytest.mark.parametrize("method", METHODS)
def test_each_form_gets_the_rule(form, method):
    """One conv, one rectifier: the projection of every unit equals the rule by hand."""
    torch.manual_seed(0)
    rect = RECTIFIERS[form]()
    upper = rectifier_bound(rect)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    model = nn.Sequential(conv, rect).eval()
    x = torch.randn(1, 2, 6, 6) * 6  # large enough that ReLU6 and Hardtanh(0, 2) saturate
    with torch.no_grad():
        f = conv(x)[0]
    assert ((f > upper).any() if upper != math.inf else True) and (f < 0).any()
    seed_r = torch.randn(3, 6, 6)  # a signal coming down, of both signs
    leaf = x.clone().requires_grad_(True)
    rules = ReverseRules(method)
    with rules:
        out = model(leaf)
    (engine,) = torch.autograd.grad(out[0], leaf, seed_r)
    assert rules.relu_calls == 1 and not rules.unruled
    r = hand_rule(method, seed_r, f, upper)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(conv(xr)[0], xr, r)
    torch.testing.assert_close(engine, ref, rtol=1e-5, atol=1e-5)


def test_clamp_with_other_bounds_is_not_a_rectifier():
    """clamp(min=-1), hardtanh(-1, 1) and threshold(x, 0.5, 0) are not rectifiers: untouched."""
    x = torch.randn(10, requires_grad=True)
    for fn in (lambda t: t.clamp(min=-1), lambda t: torch.clamp(t, max=1), lambda t: t.clamp(-1, 1),
               lambda t: torch.threshold(t, 0.5, 0.0), lambda t: torch.threshold(t, 0.0, -1.0)):
        with ReverseRules("deconvnet") as rules:
            y = fn(x * 2)
        assert rules.relu_calls == 0
        g_rule = torch.autograd.grad(y.sum(), x)[0]
        g_true = torch.autograd.grad(fn(x * 2).sum(), x)[0]
        assert torch.equal(g_rule, g_true)
    with ReverseRules("deconvnet") as rules:
        F.hardtanh(x * 2)
    assert rules.relu_calls == 0 and rules.unruled == {"Hardtanh": 1}


def test_gradient_is_autograd_for_every_form():
    """method="gradient" never swaps a backward: bit-identical to plain autograd."""
    torch.manual_seed(1)
    for form, make in RECTIFIERS.items():
        model = nn.Sequential(nn.Conv2d(2, 3, 3), make()).eval()
        x = torch.randn(1, 2, 7, 7) * 5
        seed = torch.randn(1, 3, 5, 5)
        leaf = x.clone().requires_grad_(True)
        with ReverseRules("gradient"):
            y = model(leaf)
        (a,) = torch.autograd.grad(y, leaf, seed)
        leaf2 = x.clone().requires_grad_(True)
        (b,) = torch.autograd.grad(model(leaf2), leaf2, seed)
        assert torch.equal(a, b), form


def test_in_place_rectifier_on_a_view():
    """An in-place rectifier on a slice (a view) still gets the rule and still writes in place."""
    x = torch.randn(2, 6, requires_grad=True)
    seed = torch.randn(2, 6)
    with ReverseRules("deconvnet") as rules:
        z = x * 1
        z[:, :3].clamp_min_(0)
    assert rules.relu_calls == 1
    assert torch.equal(z[:, :3], (x[:, :3]).clamp_min(0))
    (g,) = torch.autograd.grad(z, x, seed)
    expected = seed.clone()
    expected[:, :3] = seed[:, :3].clamp_min(0)
    torch.testing.assert_close(g, expected)


# --------------------------------------------------------------------------- property test

def _block_strategy():
    return st.tuples(st.sampled_from(sorted(RECTIFIERS)), st.integers(2, 5), st.sampled_from([1, 3]),
                     st.sampled_from([1, 2]), st.booleans())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(_block_strategy(), min_size=1, max_size=3), size=st.integers(10, 20),
       scale=st.sampled_from([1.0, 8.0]), seed=st.integers(0, 10_000))
def test_property_random_cnn_every_method_equals_per_call_reference(blocks, size, scale, seed):
    """A random small CNN of mixed rectifiers (module, functional, in place, clamp,
    threshold, ReLU6): ``project`` with every method equals the per-call reference, and
    method="gradient" equals the activation times autograd's gradient."""
    torch.manual_seed(seed)
    layers, c = [], 3
    for name, out, k, stride, pool in blocks:
        layers += [nn.Conv2d(c, out, k, stride=stride, padding=k // 2), RECTIFIERS[name]()]
        if pool:
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=False))
        c = out
    model = nn.Sequential(*layers).eval()
    x = torch.randn(1, 3, size, size) * scale
    with torch.no_grad():
        try:
            out = model(x.clone())
        except RuntimeError:  # pooled to nothing
            return
    if out.shape[-1] < 1 or out.shape[-2] < 1:
        return
    layer = str(max(i for i, m in enumerate(layers) if rectifier_bound(m) is not None))
    with torch.no_grad():
        act = nn.Sequential(*layers[:int(layer) + 1])(x.clone())[0]
    channel = int(act.flatten(1).max(1).values.argmax())
    flat = int(act[channel].argmax())
    pos = (flat // act.shape[-1], flat % act.shape[-1])
    value = act[channel, pos[0], pos[1]]
    for method in METHODS:
        engine = vizcnn.project(model, x, layer, channel, pos, method=method)
        ref = deconvnet_sequential(model, x, layer, channel, pos, method=method)
        scale_ref = float(ref.abs().max())
        torch.testing.assert_close(engine, ref, rtol=1e-4, atol=1e-5 * max(scale_ref, 1e-6))
    leaf = x.clone().requires_grad_(True)
    a = nn.Sequential(*layers[:int(layer) + 1])(leaf)[0, channel, pos[0], pos[1]]
    (g,) = torch.autograd.grad(a, leaf)
    engine = vizcnn.project(model, x, layer, channel, pos, method="gradient")
    torch.testing.assert_close(engine, (value * g)[0], rtol=1e-4, atol=1e-6 * max(float(g.abs().max()), 1e-6))


# --------------------------------------------------------------------------- MobileNetV2

class _HandRule(torch.autograd.Function):
    """ReLU6 forward, the rule by hand backward (f: the module's input)."""

    @staticmethod
    def forward(ctx, f, method):
        ctx.method = method
        ctx.save_for_backward(f)
        return f.clamp(0, 6)

    @staticmethod
    def backward(ctx, r):
        (f,) = ctx.saved_tensors
        return hand_rule(ctx.method, r, f, 6.0), None


def hooked_reference(model: nn.Module, x: torch.Tensor, path: str, channel: int, method: str) -> torch.Tensor:
    """Projection of ``channel``'s strongest unit at module ``path`` with every nn.ReLU6
    module's output replaced through forward hooks by a function of its input whose
    backward is the rule by hand (no TorchFunctionMode)."""
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for m in model.modules():
        if isinstance(m, nn.ReLU6):
            def keep(mod, inp):
                inputs[id(mod)] = inp[0]
                return (inp[0].clone(),)  # an in-place ReLU6 works on a copy

            def swap(mod, _inp, _out):
                return _HandRule.apply(inputs.pop(id(mod)), method)
            handles += [m.register_forward_pre_hook(keep), m.register_forward_hook(swap)]
    kept = {}
    handles.append(model.get_submodule(path).register_forward_hook(lambda _m, _i, out: kept.setdefault("a", out)))
    try:
        leaf = x.clone().requires_grad_(True)
        with torch.enable_grad():
            model(leaf)
            a = kept["a"][0]
            flat = int(a[channel].argmax())
            seed = torch.zeros_like(a)
            y, x_ = flat // a.shape[-1], flat % a.shape[-1]
            seed[channel, y, x_] = a[channel, y, x_].detach()
            (g,) = torch.autograd.grad(a, leaf, seed)
    finally:
        for h in handles:
            h.remove()
    return g[0]


@pytest.fixture(scope="module")
def mobilenet():
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    model = mobilenet_v2(weights=None).eval()
    with torch.no_grad():  # BN statistics that are not the identity, so layers differ
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 2.0)
    return model


def test_mobilenet_v2_catches_every_relu6(mobilenet):
    x = torch.randn(1, 3, 64, 64)
    with ReverseRules("deconvnet") as rules, torch.enable_grad():
        mobilenet(x.requires_grad_(True))
    assert rules.rectifiers == {"ReLU6": 35} and not rules.unruled


@pytest.mark.parametrize("method", METHODS)
def test_mobilenet_v2_equals_hooked_reference(mobilenet, method):
    torch.manual_seed(3)
    x = torch.randn(1, 3, 64, 64)
    layer = "features.6"
    with vizcnn.Extractor(mobilenet, [layer]) as ex:
        act = ex.run(x)[layer][0]
    channel = int(act.flatten(1).max(1).values.argmax())
    engine = vizcnn.project(mobilenet, x, layer, channel, method=method)
    ref = hooked_reference(mobilenet, x, layer, channel, method)
    torch.testing.assert_close(engine, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_mobilenet_v2_methods_differ(mobilenet):
    """Today's bug: deconvnet, guided and gradient were bit-identical on MobileNetV2."""
    x = torch.randn(1, 3, 64, 64)
    maps = {m: vizcnn.project(mobilenet, x, "features.10", 0, method=m) for m in METHODS}
    rel = float((maps["deconvnet"] - maps["gradient"]).norm() / maps["gradient"].norm())
    assert rel > 0.1
    assert not torch.equal(maps["guided"], maps["gradient"])


# --------------------------------------------------------------------------- no silent fallback

class _SiLUNet(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.act1 = act
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.act1(self.conv1(x))))


@pytest.mark.parametrize("act,name", [(nn.LeakyReLU(), "LeakyReLU"), (nn.ELU(), "ELU"), (nn.SiLU(), "SiLU"),
                                      (nn.GELU(), "GELU"), (nn.Hardswish(), "Hardswish"), (nn.Mish(), "Mish"),
                                      (nn.Sigmoid(), "Sigmoid"), (nn.Tanh(), "Tanh"), (nn.SELU(), "SELU"),
                                      (nn.PReLU(), "PReLU"), (nn.Softplus(), "Softplus")])
def test_activation_without_rule_warns_with_name_and_count(act, name):
    torch.manual_seed(0)
    model = _SiLUNet(act).eval()
    x = torch.randn(1, 3, 12, 12)
    with pytest.warns(ActivationWarning, match=rf"{name} ×1") as record:
        vizcnn.project(model, x, "relu", 0)
    w = record[0].message
    assert w.activations == {name: 1} and w.rectifiers == {"ReLU": 1} and w.method == "deconvnet"
    with pytest.raises(ActivationError, match=name):
        vizcnn.project(model, x, "relu", 0, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the gradient is the gradient: nothing to say
        vizcnn.project(model, x, "relu", 0, method="gradient")


def test_no_rectifier_caught_warns():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)).eval()
    x = torch.randn(1, 3, 10, 10)
    with pytest.warns(ActivationWarning, match="no rectifier"):
        vizcnn.project(model, x, "1", 0, method="guided")
    with pytest.raises(ActivationError, match="no rectifier"):
        vizcnn.project_top(model, x, "1", 2, strict=True)


def test_relu_network_is_silent():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3), nn.ReLU()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in METHODS:
            vizcnn.project(model, torch.randn(1, 3, 10, 10), "3", 1, method=method, strict=True)


def test_policy_collects_messages_and_sets_strict():
    model = _SiLUNet(nn.SiLU()).eval()
    x = torch.randn(1, 3, 12, 12)
    echoed = []
    with activation_policy(echo=echoed.append) as notes, warnings.catch_warnings():
        warnings.simplefilter("error")  # collected, not warned
        vizcnn.project(model, x, "relu", 0)
        vizcnn.project(model, x, "relu", 1)
    assert len(notes) == 1 and "SiLU ×1" in notes[0] and echoed == notes
    with activation_policy(strict=True), pytest.raises(ActivationError):
        vizcnn.project(model, x, "relu", 0)
    with activation_policy(strict=True):  # an explicit argument wins
        with pytest.warns(ActivationWarning):
            vizcnn.project(model, x, "relu", 0, strict=False)


def test_efficientnet_says_it_has_no_rectifier():
    from torchvision.models import efficientnet_b0

    model = efficientnet_b0(weights=None).eval()
    with pytest.warns(ActivationWarning, match="no rectifier") as record:
        vizcnn.project(model, torch.randn(1, 3, 64, 64), "features.2", 0)
    assert record[0].message.activations.get("SiLU", 0) > 0


def test_saliency_deconvnet_warns_and_strict():
    from vizcnn.methods.saliency import saliency

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    x = torch.randn(1, 3, 10, 10)
    with pytest.warns(ActivationWarning, match="SiLU"):
        saliency(model, x, "deconvnet")
    with pytest.raises(ActivationError):
        saliency(model, x, "guided", strict=True)


# --------------------------------------------------------------------------- the CLI

def _cli(*args):
    from click.testing import CliRunner

    from cli.main import cli

    return CliRunner().invoke(cli, list(args))


def test_cli_says_so_on_stderr_and_in_summary_and_strict_exits_2(tmp_path, samples_dir):
    """LeNet-5 has no rectifier (scaled tanh): the deconvnet is its gradient, and says so."""
    import json

    img = str(samples_dir / "coffee.jpg")
    out = tmp_path / "d"
    res = _cli("deconv", "lenet5", img, "--weights", "random", "--top", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "warning: deconvnet: the forward ran no rectifier" in res.stderr
    assert "Tanh" in res.stderr and "Tanh" not in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["activation_warnings"]) == 1 and "no rectifier" in summary["activation_warnings"][0]
    assert summary["lrn"] == "identity" and summary["strict"] is False
    res = _cli("deconv", "lenet5", img, "--weights", "random", "--top", "1", "--out", str(tmp_path / "s"), "--strict")
    assert res.exit_code == 2
    assert "no rectifier" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
    # the gradient is the gradient: nothing to say
    res = _cli("deconv", "lenet5", img, "--weights", "random", "--top", "1", "--out", str(tmp_path / "g"),
               "--method", "gradient", "--strict")
    assert res.exit_code == 0 and "warning" not in res.stderr
    assert json.loads((tmp_path / "g" / "summary.json").read_text())["activation_warnings"] == []


def test_cli_saliency_strict(tmp_path, samples_dir):
    res = _cli("saliency", "lenet5", str(samples_dir / "coffee.jpg"), "--weights", "random", "--method", "guided",
               "--out", str(tmp_path / "s"), "--strict")
    assert res.exit_code == 2 and "guided" in res.stderr


def test_cli_lrn_option(tmp_path, samples_dir):
    """--lrn gradient changes the deconvnet through AlexNet-2012's LRN; it is recorded."""
    import json

    img = str(samples_dir / "cat.jpg")
    got = {}
    for lrn in ("identity", "gradient"):
        out = tmp_path / lrn
        res = _cli("deconv", "alexnet-2012", img, "--weights", "random", "--layer", "conv3", "--top", "1",
                   "--lrn", lrn, "--out", str(out), "--strict")
        assert res.exit_code == 0, res.output
        got[lrn] = json.loads((out / "summary.json").read_text())
        assert got[lrn]["lrn"] == lrn and got[lrn]["activation_warnings"] == []
    res = _cli("deconv", "alexnet-2012", img, "--lrn", "nope")
    assert res.exit_code == 2
