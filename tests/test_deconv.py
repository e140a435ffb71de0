"""The deconvnet engine: right on every architecture, against independent references."""
from __future__ import annotations

import copy
import functools
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_untouched, image, snapshot
from torch import nn

import vizcnn
from vizcnn.core.errors import BadArgumentError, BadInputError, UnknownNameError
from vizcnn.core.state import preserved_model
from vizcnn.methods.deconv import forward_to, top_units
from vizcnn.methods.reference import deconvnet_sequential
from vizcnn.models import build_model

METHODS = ("deconvnet", "guided", "gradient")




def strongest_position(model, x, layer, channel):
    with vizcnn.Extractor(model, [layer]) as ex:
        ex.run(x)
    a = ex[layer][0, channel]
    i = int(a.argmax())
    return divmod(i, a.shape[-1])


@pytest.mark.parametrize("name,layer,size", [
    ("lenet5", "c3", 32), ("alexnet-2012", "conv5", 131), ("alexnet-2012", "conv2", 99),
    ("zfnet", "conv5", 131), ("zfnet", "conv2", 99), ("vgg11", "conv4_2", 64),
])
def test_rule_engine_equals_explicit_reference(name, layer, size):
    """Unpool with switches / rectify / transposed filters, written out, agrees with the
    reverse-rule engine for every method."""
    model = cached(name)
    x = image(model_channels(model), size)
    acts, _ = forward_to(model, x, layer)
    for channel in top_units(acts[layer].detach(), 2).channel.tolist():
        pos = strongest_position(model, x, layer, channel)
        for method in METHODS:
            engine = vizcnn.project(model, x, layer, channel, pos, method=method)
            ref = deconvnet_sequential(model, x, layer, channel, pos, method=method)
            scale = ref.abs().max()
            assert scale > 0
            torch.testing.assert_close(engine, ref, atol=1e-5 * scale, rtol=1e-4)


@functools.lru_cache(maxsize=None)
def cached(name: str) -> nn.Module:
    """Seeded 10-class models, built once per test session; tests only read them."""
    return build_model(name, num_classes=10).eval()


def model_channels(model):
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


def test_methods_differ_where_they_should():
    model = cached("alexnet-2012")
    x = image(3, 99)
    maps = {m: vizcnn.project(model, x, "conv3", 7, method=m) for m in METHODS}
    for a, b in [("deconvnet", "gradient"), ("guided", "gradient"), ("deconvnet", "guided")]:
        assert not torch.allclose(maps[a], maps[b])


def test_gradient_method_equals_autograd():
    model = cached("vgg11")
    x = image(3, 48).requires_grad_(True)
    act = model.features[:15](x)  # conv4_2 is the ReLU features.14
    c, (y, xx) = 11, divmod(int(act[0, 11].argmax()), act.shape[-1])
    (expected,) = torch.autograd.grad(act[0, c, y, xx] * act[0, c, y, xx].detach(), x)
    got = vizcnn.project(model, x.detach(), "conv4_2", c, method="gradient")
    torch.testing.assert_close(got, expected[0])


# --- GoogLeNet and ResNet: functional, in-place and reused ReLUs -------------------------

class _HookedReLU(nn.Module):
    """An independent deconvnet rule: a plain out-of-place ReLU whose module backward hook
    replaces the gradient by the rectified incoming signal."""

    def __init__(self):
        super().__init__()
        self.register_full_backward_hook(lambda m, gin, gout: (gout[0].clamp_min(0),))

    def forward(self, x):
        return torch.relu(x)


def _independent_deconvnet(model: nn.Module) -> nn.Module:
    """A rewrite of a torchvision GoogLeNet/ResNet in which every ReLU call is its own
    out-of-place hooked module."""
    ref = copy.deepcopy(model)
    from torchvision.models.googlenet import BasicConv2d
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for m in ref.modules():
        if isinstance(m, BasicConv2d):
            m.rule = _HookedReLU()
            m.forward = types.MethodType(lambda self, x: self.rule(self.bn(self.conv(x))), m)
        elif isinstance(m, (BasicBlock, Bottleneck)):
            m.relus = nn.ModuleList([_HookedReLU() for _ in range(3)])

            def forward(self, x):
                identity = x if self.downsample is None else self.downsample(x)
                out = self.relus[0](self.bn1(self.conv1(x)))
                out = self.bn2(self.conv2(out))
                if isinstance(self, Bottleneck):
                    out = self.bn3(self.conv3(self.relus[1](out)))
                return self.relus[2](out + identity)

            m.forward = types.MethodType(forward, m)
    if hasattr(ref, "relu"):
        ref.relu = _HookedReLU()
    return ref


@pytest.mark.parametrize("name,layer", [("googlenet", "inception4e"), ("resnet18", "layer3.1"),
                                        ("resnet50", "layer2.0")])
def test_deconvnet_on_functional_and_reused_relus(name, layer):
    model = cached(name)
    x = image(3, 64)
    acts, _ = forward_to(model, x, layer)
    units = top_units(acts[layer].detach(), 3)
    channels = [int(c) for c in units.channel]
    deconv = vizcnn.project(model, x, layer, channels, method="deconvnet")
    grad = vizcnn.project(model, x, layer, channels, method="gradient")
    assert not torch.allclose(deconv, grad, atol=1e-3 * grad.abs().max())

    ref_model = _independent_deconvnet(model).eval()
    xr = x.clone().requires_grad_(True)
    with vizcnn.Extractor(ref_model, [layer], detach=False) as ex:
        ref_model(xr)
    out = ex[layer][0]
    for i, c in enumerate(channels):
        y, xx = int(units.y[i]), int(units.x[i])
        (expected,) = torch.autograd.grad(out[c, y, xx], xr, out[c, y, xx].detach(), retain_graph=True)
        torch.testing.assert_close(deconv[i], expected[0], atol=1e-6 * expected.abs().max(), rtol=1e-4)


def test_captum_deconvolution_misses_googlenet_relus():
    """The peer bug vizcnn exists to fix: captum's Deconvolution on torchvision GoogLeNet is the
    plain gradient, to the last bit; vizcnn's deconvnet is not."""
    from captum.attr import Deconvolution, Saliency

    model = cached("googlenet")
    x = image(3, 64)
    with pytest.warns(UserWarning):  # captum warns about hooks and requires_grad on every call
        captum_deconv = Deconvolution(model).attribute(x.clone().requires_grad_(), target=3)
    captum_grad = Saliency(model).attribute(x.clone().requires_grad_(), target=3, abs=False)
    assert torch.equal(captum_deconv, captum_grad)

    rules = vizcnn.ReverseRules("deconvnet")
    xr = x.clone().requires_grad_(True)
    with rules:
        logits = model(xr)
    (ours,) = torch.autograd.grad(logits[0, 3], xr)
    assert rules.relu_calls == 57  # 3 stem convs + 9 inception blocks × 6 BasicConv2d
    assert not torch.allclose(ours, captum_grad, atol=1e-3 * captum_grad.abs().max())


class _Functional(nn.Module):
    """Every way a forward can call a ReLU: in-place functional, torch.relu_, Tensor.relu,
    a module used twice, and an in-place call whose return value is ignored."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3, self.c4 = (nn.Conv2d(3 if i == 0 else 6, 6, 3) for i in range(4))
        self.shared = nn.ReLU(inplace=True)

    def forward(self, x):
        x = F.relu(self.c1(x), inplace=True)
        x = self.shared(self.c2(x))
        x = self.shared(F.max_pool2d(x, 2) + 0.1)
        x = self.c3(x)
        torch.relu_(x)  # return value ignored: must still act in place
        return self.c4(x).relu()


class _Plain(nn.Module):
    """The same network with one out-of-place nn.ReLU module per call."""

    def __init__(self, src: _Functional):
        super().__init__()
        self.c1, self.c2, self.c3, self.c4 = src.c1, src.c2, src.c3, src.c4
        self.r = nn.ModuleList(nn.ReLU() for _ in range(5))

    def forward(self, x):
        x = self.r[0](self.c1(x))
        x = self.r[1](self.c2(x))
        x = self.r[2](F.max_pool2d(x, 2) + 0.1)
        return self.r[4](self.c4(self.r[3](self.c3(x))))


@pytest.mark.parametrize("method", METHODS)
def test_inplace_and_reused_relus_equal_plain_rewrite(method):
    torch.manual_seed(0)
    functional = _Functional().eval()
    plain = _Plain(functional).eval()
    x = image(3, 24)
    for layer in ("c4", "c3"):
        a = vizcnn.project(functional, x, layer, [0, 2, 5], method=method)
        b = vizcnn.project(plain, x, layer, [0, 2, 5], method=method)
        torch.testing.assert_close(a, b)
    rules = vizcnn.ReverseRules(method)
    with rules, torch.no_grad():
        functional(x)
    assert rules.relu_calls == 5


class _TwiceInPlace(nn.Module):
    """One in-place ReLU module called twice, the second time straight on its own output:
    autograd's relu_ keeps its output for the backward, which the second call overwrites."""

    def __init__(self, inplace: bool = True):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)

    def forward(self, x):
        x = self.act(self.act(self.c1(x)))
        return self.act(self.c2(x) - 0.05)


@pytest.mark.parametrize("layer", ["act:1", "act:2"])
def test_gradient_at_a_reused_in_place_relu_equals_autograd(layer):
    """method="gradient" at (or after) the second call of one in-place ReLU module (a
    hypothesis find: "modified by an inplace operation") equals torch.autograd.grad on an
    out-of-place copy of the model; the other methods run too."""
    torch.manual_seed(0)
    model = _TwiceInPlace().eval()
    plain = _TwiceInPlace(inplace=False).eval()
    plain.load_state_dict(model.state_dict())
    x = image(3, 12)
    ref_layer = {"act:1": lambda t: plain.act(plain.act(plain.c1(t))),
                 "act:2": lambda t: plain.act(plain.c2(plain.act(plain.act(plain.c1(t)))) - 0.05)}[layer]
    for channel in range(3):
        leaf = x.clone().requires_grad_(True)
        act = ref_layer(leaf)[0, channel]
        y, x_ = divmod(int(act.argmax()), act.shape[-1])
        (grad,) = torch.autograd.grad(act[y, x_], leaf)
        got = vizcnn.project(model, x, layer, channel, (y, x_), method="gradient")
        assert grad.abs().sum() > 0
        torch.testing.assert_close(got, act[y, x_].detach() * grad[0], rtol=1e-5, atol=1e-6)
    for method in ("deconvnet", "guided"):
        assert torch.isfinite(vizcnn.project(model, x, layer, [0, 1], method=method)).all()


def test_batched_projection_equals_one_by_one_and_picks_the_maximum():
    model = cached("alexnet-2012")
    x = image(3, 99)
    channels = list(range(0, 96, 7))
    batched = vizcnn.project(model, x, "conv2", channels)
    for i, c in enumerate(channels):
        torch.testing.assert_close(batched[i], vizcnn.project(model, x, "conv2", c))
    # position=None is each channel's argmax (brute force over the recorded map)
    c = channels[3]
    torch.testing.assert_close(batched[3], vizcnn.project(model, x, "conv2", c, strongest_position(model, x, "conv2", c)))


def test_top_units_equal_brute_force_sort():
    act = torch.rand(20, 5, 6, generator=torch.Generator().manual_seed(1))
    act[7, 2, 3] = act[4].max() + 1  # force a known winner
    got = top_units(act, 6)
    brute = sorted(((float(act[c].max()), c) for c in range(20)), key=lambda t: (-t[0], t[1]))[:6]
    assert [int(c) for c in got.channel] == [c for _, c in brute]
    for i, c in enumerate(got.channel):
        assert act[c, got.y[i], got.x[i]] == act[c].max()


def test_project_top_matches_top_activations():
    model = cached("zfnet")
    x = image(3, 99)
    units, proj = vizcnn.project_top(model, x, "conv3", k=4)
    again = vizcnn.top_activations(model, x, "conv3", k=4)
    assert torch.equal(units.channel, again.channel) and proj.shape == (4, 3, 99, 99)


def test_lrn_rule_option():
    model = cached("alexnet-2012")
    x = image(3, 99)
    ident = vizcnn.project(model, x, "conv3", 1, lrn="identity")
    grad = vizcnn.project(model, x, "conv3", 1, lrn="gradient")
    assert not torch.allclose(ident, grad)
    with pytest.raises(BadArgumentError, match="lrn"):
        vizcnn.project(model, x, "conv3", 1, lrn="nope")


# --- the user's model is left exactly as it was ------------------------------------------

def _mixed_state(model):
    model.train()
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 3 != 0)
    return snapshot(model)


@pytest.mark.parametrize("call", [
    lambda m, x: vizcnn.project(m, x, "layer2", [1, 2]),
    lambda m, x: vizcnn.project_top(m, x, "layer1.0.relu:1", 3, method="guided"),
    lambda m, x: vizcnn.top_activations(m, x, "layer3", 2),
])
def test_model_untouched_after_success(call):
    model = build_model("resnet18", num_classes=10)
    before = _mixed_state(model)
    call(model, image(3, 64))
    assert_untouched(model, before)


@pytest.mark.parametrize("kwargs,error", [
    ({"layer": "layer9", "channel": 0}, UnknownNameError),
    ({"layer": "layer2", "channel": 999}, BadArgumentError),
    ({"layer": "layer2", "channel": 0, "position": (50, 0)}, BadArgumentError),
    ({"layer": "layer2", "channel": 0, "method": "lrp"}, BadArgumentError),
    ({"layer": "layer1.0.relu:5", "channel": 0}, BadArgumentError),
])
def test_model_untouched_after_error(kwargs, error):
    model = build_model("resnet18", num_classes=10)
    before = _mixed_state(model)
    with pytest.raises(error):
        vizcnn.project(model, image(3, 64), **kwargs)
    assert_untouched(model, before)


def test_model_untouched_after_keyboard_interrupt():
    model = build_model("resnet18", num_classes=10)
    before = _mixed_state(model)

    def interrupt(*_):
        raise KeyboardInterrupt

    handle = model.layer2.register_forward_hook(interrupt)
    before["hooks"] += 1
    with pytest.raises(KeyboardInterrupt):
        vizcnn.project(model, image(3, 64), "layer3", 0)
    assert_untouched(model, before)
    handle.remove()


def test_bad_inputs_are_clear_errors():
    model = cached("alexnet-2012")
    with pytest.raises(BadInputError, match="NaN"):
        vizcnn.project(model, torch.full((1, 3, 99, 99), float("nan")), "conv1", 0)
    with pytest.raises(BadArgumentError, match="one image"):
        vizcnn.project(model, torch.zeros(2, 3, 99, 99), "conv1", 0)
    with pytest.raises(BadInputError, match="cannot run on an input of shape"):
        vizcnn.project(model, torch.zeros(1, 3, 8, 8), "conv5", 0)


# --- the extractor -------------------------------------------------------------------------

def test_extractor_records_before_inplace_ops_and_every_call():
    torch.manual_seed(0)
    model = _Functional().eval()
    x = image(3, 24)
    before = snapshot(model)
    with vizcnn.Extractor(model, ["c2", "shared", "shared:1", "c3"], switches=True) as ex:
        ex.run(x)
    assert_untouched(model, before)
    c2 = model.c2(F.relu(model.c1(x)))
    torch.testing.assert_close(ex["c2"], c2)  # not rectified by the in-place ReLU that follows
    assert (ex["c2"] < 0).any()
    torch.testing.assert_close(ex["shared"], c2.relu())
    torch.testing.assert_close(ex["shared:1"], (F.max_pool2d(c2.relu(), 2) + 0.1).relu())
    assert (ex["c3"] < 0).any()  # torch.relu_ ran on it later, in place


def test_extractor_switches_and_cleanup_on_error():
    model = cached("zfnet")
    x = image(3, 99)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with vizcnn.Extractor(model, ["conv1", "features.pool1"], switches=True) as ex:
            ex.run(x)
            raise RuntimeError("boom")
    assert_untouched(model, before)
    _, idx = F.max_pool2d(ex["conv1"], 3, 2, ceil_mode=True, return_indices=True)
    assert torch.equal(ex.switches["features.pool1"][0], idx)
    with preserved_model(model), pytest.raises(UnknownNameError):
        vizcnn.Extractor(model, ["conv6"])


# --- receptive fields -----------------------------------------------------------------------

@pytest.mark.parametrize("name,layer", [("alexnet-2012", "conv2"), ("zfnet", "conv3"), ("resnet18", "layer2.0")])
def test_receptive_field_box_contains_the_gradient_support(name, layer):
    model = cached(name)
    size = 131
    info = vizcnn.layer_geometry(model, (3, size, size))[layer]
    x = image(3, size)
    for (y, xx) in [(0, 0), (info.shape[1] // 2, info.shape[2] // 3)]:
        g = vizcnn.project(model, x, layer, 0, (y, xx), method="gradient")
        support = g.abs().sum(0).nonzero()
        if len(support) == 0:
            continue
        top, bottom, left, right = info.box(y, xx, size, size)
        assert support[:, 0].min() >= top and support[:, 0].max() < bottom
        assert support[:, 1].min() >= left and support[:, 1].max() < right


@pytest.mark.parametrize("name,layer", [("alexnet-2012", "conv2"), ("zfnet", "conv2"), ("resnet18", "layer1.1"),
                                        ("googlenet", "maxpool2"), ("vgg11", "conv3_1")])
def test_cropped_projection_equals_whole_image(name, layer):
    """Projecting through a crop around the receptive field (the fast path for low layers)
    gives the whole-image projection, at the borders (zero padding, ceil-mode pools) too."""
    from vizcnn.methods.deconv import Activations, backproject, backproject_cropped

    model = cached(name)
    x = image(3, 131)
    info = vizcnn.layer_geometry(model, (3, 131, 131))[layer]
    _, hh, ww = info.shape
    ys = torch.tensor([0, hh - 1, hh // 2, 0, hh - 1])
    xs = torch.tensor([0, ww - 1, ww // 3, ww - 1, 0])
    rules = vizcnn.ReverseRules("deconvnet")
    with torch.no_grad():
        acts, _ = forward_to(model, x, layer)
    act = acts[layer]
    units = Activations(torch.tensor([0, 1, 2, 3, 4]), ys, xs, act[[0, 1, 2, 3, 4], ys, xs] + 1.0)
    cropped = backproject_cropped(model, x, layer, units, info, rules)
    acts, leaf = forward_to(model, x, layer, rules)
    whole = backproject(acts[layer], leaf, units)
    torch.testing.assert_close(cropped, whole, atol=1e-6 * whole.abs().max(), rtol=1e-5)


def test_geometry_cache_follows_the_model():
    from vizcnn.core.layers import cached_geometry

    model = build_model("alexnet-2012", num_classes=10)
    first = cached_geometry(model, (3, 99, 99))
    assert cached_geometry(model, (3, 99, 99)) is first
    assert first["conv2"].rf == (51, 51)
    model.features.conv1.stride = (2, 2)  # a structural change is noticed
    assert cached_geometry(model, (3, 99, 99))["conv2"].rf == (31, 31)  # 11 + 2·2 (pool) + 4·4 (conv2)
    assert cached_geometry(model, (3, 131, 131))["conv1"].shape[-1] == 63


# --- method="gradient" is the gradient on every zoo model ----------------------------------

def _quick_random(name: str) -> nn.Module:
    """``name`` with random weights, built on the meta device and initialised on the CPU
    except the big fully connected layers, which these projections never reach (zeros):
    the whole zoo in seconds instead of a minute."""
    from vizcnn.models import get_spec

    if name == "lenet5":
        return build_model(name, 10).eval()
    with torch.device("meta"):
        model = get_spec(name).build(10)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            own = list(m.parameters(recurse=False))
            if not own:
                continue
            if isinstance(m, nn.Linear) and m.weight.numel() > 1_000_000:
                for p in own:
                    p.zero_()
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()
            else:
                for p in own:
                    p.normal_(0, 0.1)
    return model.eval()


ZOO_SIZES = {"lenet5": 32, "alexnet": 96, "alexnet-2012": 99, "alexnet-2012-2gpu": 99, "zfnet": 99,
             "zfnet-512": 99}


@pytest.mark.parametrize("name", list(__import__("vizcnn.models", fromlist=["MODELS"]).MODELS))
def test_gradient_method_is_activation_times_autograd_on_every_zoo_model(name):
    """Seed convention: a projection is seeded with the unit's own activation a, so
    method="gradient" is a · ∂a/∂x — autograd's own gradient, LRN included (it used to
    take the deconvnet's LRN-as-identity convention on alexnet-2012 and zfnet)."""
    from vizcnn.core.layers import default_layers, resolve_layer

    model = _quick_random(name)
    size = ZOO_SIZES.get(name, 64)
    c_in = model_channels(model) if name != "lenet5" else 1
    torch.manual_seed(1)
    x = torch.randn(1, c_in, size, size)
    layers = default_layers(model)
    for layer in dict.fromkeys([layers[len(layers) // 2], layers[-1]]):
        path, _ = resolve_layer(model, layer)
        kept = {}
        handle = model.get_submodule(path).register_forward_hook(lambda _m, _i, out: kept.setdefault("a", out))
        leaf = x.clone().requires_grad_(True)
        try:
            model(leaf)
        except RuntimeError:  # a classifier sized for 224 px: the layer has run
            pass
        finally:
            handle.remove()
        a = kept["a"][0]
        c = int(a.flatten(1).max(1).values.argmax())
        y, xx = divmod(int(a[c].argmax()), a.shape[-1])
        (g,) = torch.autograd.grad(a[c, y, xx], leaf)
        expected = (a[c, y, xx].detach() * g)[0]
        got = vizcnn.project(model, x, layer, c, (y, xx), method="gradient")
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


# --- path:k names work everywhere a layer is named ------------------------------------------

def _calls(model, path, x):
    """Every call's output of module ``path``, recorded by a plain hook (the reference)."""
    outs = []
    h = model.get_submodule(path).register_forward_hook(lambda _m, _i, o: outs.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return outs


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet18", num_classes=10).eval()


def test_path_k_in_extractor_forward_to_and_top_activations(resnet):
    x = image(3, 64)
    outs = _calls(resnet, "layer1.0.relu", x)
    assert len(outs) == 2
    with vizcnn.Extractor(resnet, ["layer1.0.relu:0", "layer1.0.relu:1", "layer1.0.relu"]) as ex:
        got = ex.run(x)
    assert torch.equal(got["layer1.0.relu:0"], outs[0]) and torch.equal(got["layer1.0.relu:1"], outs[1])
    assert torch.equal(got["layer1.0.relu"], outs[0])
    acts, _ = forward_to(resnet, x, ["layer1.0.relu:1", "layer1.0.relu:0"])
    torch.testing.assert_close(acts["layer1.0.relu:0"], outs[0][0])
    torch.testing.assert_close(acts["layer1.0.relu:1"], outs[1][0])
    for k in (0, 1):
        units = vizcnn.top_activations(resnet, x, f"layer1.0.relu:{k}", 3)
        assert units.value.tolist() == outs[k][0].amax(dim=(1, 2)).sort(descending=True).values[:3].tolist()


@pytest.mark.parametrize("k", [0, 1])
def test_path_k_in_project_and_project_top(resnet, k):
    """:0 used to raise KeyError in the cropped projection's geometry lookup."""
    x = image(3, 64)
    a = _calls(resnet, "layer1.0.relu", x)[k][0]
    c = int(a.flatten(1).max(1).values.argmax())
    y, xx = divmod(int(a[c].argmax()), a.shape[-1])
    leaf = x.clone().requires_grad_(True)
    outs = []
    h = resnet.layer1[0].relu.register_forward_hook(lambda _m, _i, o: outs.append(o.clone()))
    try:
        resnet(leaf)
    finally:
        h.remove()
    (g,) = torch.autograd.grad(outs[k][0, c, y, xx], leaf)
    expected = (outs[k][0, c, y, xx].detach() * g)[0]
    got = vizcnn.project(resnet, x, f"layer1.0.relu:{k}", c, method="gradient")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    units, proj = vizcnn.project_top(resnet, x, f"layer1.0.relu:{k}", 2, method="gradient")
    assert int(units.channel[0]) == c and proj.shape == (2, 3, 64, 64)
    torch.testing.assert_close(proj[0], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    with pytest.raises(BadArgumentError, match=r"ran 2 time\(s\)"):
        vizcnn.project(resnet, x, "layer1.0.relu:2", 0)


def test_path_k_in_occlude_saliency_and_invariance(resnet):
    from vizcnn.methods.invariance import invariance_curves
    from vizcnn.methods.occlusion import occlude
    from vizcnn.methods.saliency import saliency

    x = image(3, 64)
    outs = _calls(resnet, "layer1.0.relu", x)
    for k in (0, 1):
        r = occlude(resnet, x, window=32, stride=32, layer=f"layer1.0.relu:{k}")
        assert r.activation_clean == pytest.approx(float(outs[k][0, r.channel].sum()), rel=1e-5)
        assert r.projection is not None and r.projection_box is not None
    cam0 = saliency(resnet, x, "gradcam", layer="layer1.0.relu:0")
    cam = saliency(resnet, x, "gradcam", layer="layer1.0.relu")
    assert torch.equal(cam0.map, cam.map) and cam0.info["layer_shape"] == list(outs[0].shape[1:])
    inv = invariance_curves(resnet, x, "translate", [0.0, 8.0], layers=("layer1.0.relu:1", "layer1.0.relu:0"))
    assert inv.norm_first == pytest.approx(float(outs[1].double().norm()), rel=1e-6)
    assert inv.norm_last == pytest.approx(float(outs[0].double().norm()), rel=1e-6)


def test_path_k_on_the_command_line(tmp_path, samples_dir):
    """`vizcnn deconv resnet18 IMG --layer layer1.0.relu:0` used to print a KeyError traceback."""
    import json

    from click.testing import CliRunner

    from cli.main import cli

    out = tmp_path / "d"
    res = CliRunner().invoke(cli, ["deconv", "resnet18", str(samples_dir / "cat.jpg"), "--weights", "random",
                                   "--layer", "layer1.0.relu:0", "--layer", "layer1.0.relu:1", "--top", "2",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert [e["layer"] for e in summary["layers"]] == ["layer1.0.relu:0", "layer1.0.relu:1"]
    res = CliRunner().invoke(cli, ["deconv", "resnet18", str(samples_dir / "cat.jpg"), "--weights", "random",
                                   "--layer", "layer1.0.relu:7", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "Traceback" not in res.output and "ran 2 time(s)" in res.output


# --- the Extractor reads what every other entry point reads, and leaves the model be -------

def test_extractor_run_is_eval_mode_and_restores_the_users_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(6, 4, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.train()
    model[4].eval()  # a mixed state the user chose
    modes = [m.training for m in model.modules()]
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    x = image(3, 12)
    with vizcnn.Extractor(model, ["3", "4"]) as ex:
        first = ex.run(x)
        second = ex.run(x)
        assert [m.training for m in model.modules()] == modes  # restored after each run
    assert torch.equal(first["4"], second["4"])  # no dropout noise
    for k, v in model.state_dict().items():  # BatchNorm running statistics untouched
        assert torch.equal(v, stats[k]), k
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(first["4"], expected)
    # the same unit reads the same from the Extractor and from top_activations
    units = vizcnn.top_activations(model, x, "4", 1)
    assert float(units.value[0]) == pytest.approx(float(first["4"][0, units.channel[0]].max()))
    assert [m.training for m in model.modules()] == modes


# --- clear errors or support ---------------------------------------------------------------

@pytest.mark.parametrize("channel", [__import__("numpy").int64(3), 3.0, torch.tensor(3), __import__("numpy").array(3)])
def test_integer_like_channels_are_accepted(channel):
    from vizcnn.methods.deconv import deconv_layers
    from vizcnn.methods.saliency import saliency

    model = cached("zfnet")
    x = image(3, 99)
    ref = vizcnn.project(model, x, "conv2", 3)
    assert torch.equal(vizcnn.project(model, x, "conv2", channel), ref)
    assert torch.equal(vizcnn.project(model, x, "conv2", [channel, 4])[0], ref)
    units, proj = deconv_layers(model, x, ["conv2"], channel=channel)["conv2"]
    assert int(units.channel[0]) == 3 and torch.equal(proj[0], ref)
    classifier = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(6))
    classifier(image(3, 12))
    assert saliency(classifier.eval(), image(3, 12), "gradient", target=channel).target == 3


@pytest.mark.parametrize("channel", [3.5, True, "3", None])
def test_other_channels_are_one_line_errors(channel):
    with pytest.raises(BadArgumentError, match="channel"):
        vizcnn.project(cached("zfnet"), image(3, 99), "conv2", channel)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 0.05), (torch.bfloat16, 0.2)])
def test_half_and_bfloat16_models_run_in_their_dtype(dtype, tolerance):
    """The geometry probe, the crops and the seeds all follow the model's dtype; the
    projection equals the float32 one of the same (rounded) weights up to the dtype's
    precision."""
    from vizcnn.core.layers import layer_geometry
    from vizcnn.methods.saliency import saliency

    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=10).eval().to(dtype)
    wide = copy.deepcopy(model).float()
    x = image(3, 96).to(dtype).float()
    geometry = layer_geometry(model, (3, 96, 96))
    assert geometry["conv2"].rf == layer_geometry(wide, (3, 96, 96))["conv2"].rf
    for layer, method in (("conv1", "deconvnet"), ("conv2", "guided"), ("conv2", "gradient")):
        with vizcnn.Extractor(wide, [layer]) as ex:
            a = ex.run(x)[layer][0]
        c = int(a.flatten(1).max(1).values.argmax())
        y, xx = divmod(int(a[c].argmax()), a.shape[-1])
        got = vizcnn.project(model, x, layer, c, (y, xx), method=method)
        ref = vizcnn.project(wide, x, layer, c, (y, xx), method=method)
        assert got.dtype == dtype
        assert float((got.float() - ref).norm() / ref.norm()) < tolerance
    assert saliency(model, x, "guided").attribution.dtype == dtype


def test_meta_script_and_checkpointed_models_are_one_line_errors():
    from torchvision.models import densenet121

    from vizcnn.methods.saliency import saliency

    x = image(3, 32)
    with torch.device("meta"):
        meta = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(BadArgumentError, match="meta device"):
        vizcnn.project(meta, x, "1", 0)
    with pytest.warns(FutureWarning) if hasattr(torch.jit, "script") else pytest.raises(Exception):
        scripted = torch.jit.script(nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), scripted, nn.ReLU()).eval()
    with pytest.raises(BadArgumentError, match="TorchScript"):
        vizcnn.project(model, x, "2", 0)
    with pytest.raises(BadArgumentError, match="TorchScript"):
        vizcnn.project(model, x, "1", 0, method="gradient")  # a scripted layer takes no hooks
    vizcnn.project(model, x, "2", 0, method="gradient")  # the gradient needs no rule inside it
    dense = densenet121(weights=None, memory_efficient=True).eval()
    for call in (lambda: vizcnn.project(dense, x, "features.denseblock1", 0),
                 lambda: saliency(dense, x, "guided")):
        with pytest.raises(BadArgumentError, match="memory_efficient"):
            call()
    vizcnn.project(dense, x, "features.denseblock1", 0, method="gradient")
