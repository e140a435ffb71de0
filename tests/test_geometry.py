"""Receptive-field geometry and the crop path (issue 21): the crop is taken only where every
op from the input is known local, geometry merges per axis, and it is traced without
copying the model. References: autograd on the same small nets, written without vizcnn."""
from __future__ import annotations

import copy
import dataclasses
import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_untouched, image, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import vizcnn
from vizcnn.core.layers import layer_geometry
from vizcnn.core.rules import ReverseRules
from vizcnn.methods.deconv import Activations, backproject_cropped

pytestmark = pytest.mark.usefixtures("one_thread")


def autograd_projection(model: nn.Module, x: torch.Tensor, channel: int, y: int, xx: int) -> torch.Tensor:
    """a · ∂a/∂x for unit (channel, y, xx) of the model's output map, by plain autograd."""
    leaf = x.clone().requires_grad_(True)
    a = model(leaf)[0, channel, y, xx]
    (g,) = torch.autograd.grad(a, leaf)
    return (a.detach() * g)[0]


def crop_projection(model: nn.Module, x: torch.Tensor, layer: str, channel: int, y: int, xx: int) -> torch.Tensor:
    """The crop path, taken whatever the receptive field's size."""
    info = layer_geometry(model, tuple(x.shape[1:]))[layer]
    with torch.no_grad():
        value = model(x)[0, channel, y, xx]
    units = Activations(torch.tensor([channel]), torch.tensor([y]), torch.tensor([xx]), value[None])
    return backproject_cropped(model, x, layer, units, info, ReverseRules("gradient"))[0]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(float(b.abs().max()), 1e-6))


# --------------------------------------------------------------------------- the four defects, as reported

class TwoBranches(nn.Module):
    """A (1×3) and a (3×1) branch concatenated, then a 3×3 conv: the true support is 5×5."""

    def __init__(self):
        super().__init__()
        self.wide = nn.Conv2d(3, 4, (1, 3), padding=(0, 1))
        self.tall = nn.Conv2d(3, 4, (3, 1), padding=(1, 0))
        self.head = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        return self.head(torch.cat([self.wide(x), self.tall(x)], 1))


def test_asymmetric_branches_merge_per_axis():
    torch.manual_seed(0)
    model, x = TwoBranches().eval(), image(3, 64)
    info = layer_geometry(model, (3, 64, 64))["head"]
    assert info.local and info.rf == (5, 5)  # the lexicographic max picked (5, 3)
    ref = autograd_projection(model, x, 1, 30, 20)
    support = ref.abs().sum(0).nonzero()
    assert (support.max(0).values - support.min(0).values + 1).tolist() == [5, 5]
    top, bottom, left, right = info.box(30, 20, 64, 64)
    assert (top, bottom, left, right) == (28, 33, 18, 23)
    got = vizcnn.project(model, x, "head", 1, (30, 20), method="gradient")  # 25 px < 1/4 of the image: the crop
    close(got, ref)


def test_inception_v3_mixed_7_receptive_fields_are_square():
    """Every branch pair of Mixed_6/7 (1×7 with 7×1, 1×3 with 3×1) grows both axes alike."""
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=False, init_weights=False)
    geometry = layer_geometry(model, (3, 299, 299))
    for layer in ("Mixed_6b", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
        rf = geometry[layer].rf
        assert rf[0] == rf[1] and geometry[layer].local, (layer, rf)
    assert geometry["Mixed_7c"].rf[0] > geometry["Mixed_7b"].rf[0] > geometry["Mixed_6e"].rf[0]


@pytest.mark.parametrize("norm,off", [(lambda: nn.GroupNorm(2, 8), "group"), (lambda: nn.InstanceNorm2d(8), "inst")])
def test_group_and_instance_norm_make_the_projection_whole_image(norm, off):
    """Conv → GroupNorm → ReLU → Conv: the gradient reaches all 4,096 pixels, not a 5×5 field."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm(), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    x = image(3, 64)
    info = layer_geometry(model, (3, 64, 64))["3"]
    assert not info.local and info.rf == (64, 64) and info.box(10, 10, 64, 64) == (0, 64, 0, 64)
    ref = autograd_projection(model, x, 0, 32, 32)
    assert int((ref.abs().sum(0) > 0).sum()) == 64 * 64
    close(vizcnn.project(model, x, "3", 0, (32, 32), method="gradient"), ref)
    # what the old geometry did (a 5×5 field, cropped) is far off here: what the whole image avoids
    old = dataclasses.replace(info, rf=(5, 5), jump=(1, 1), start=(0.0, 0.0), local=True)
    with torch.no_grad():
        value = model(x)[0, 0, 32, 32]
    units = Activations(torch.tensor([0]), torch.tensor([32]), torch.tensor([32]), value[None])
    cropped = backproject_cropped(model, x, "3", units, old, ReverseRules("gradient"))[0]
    assert float((cropped - ref).abs().max()) > 0.2 * float(ref.abs().max())


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))


class SpatialLayerNorm(nn.Module):
    def forward(self, x):
        return F.layer_norm(x, x.shape[1:])


class RoundTrip(nn.Module):
    def forward(self, x):
        return F.interpolate(F.interpolate(x, scale_factor=0.5, mode="bilinear"), size=x.shape[-2:], mode="bilinear")


class Attention(nn.Module):
    def forward(self, x):
        n, c, h, w = x.shape
        q = x.flatten(2)  # (n, c, hw)
        weights = torch.softmax(q.transpose(1, 2) @ q, dim=-1)  # (n, hw, hw)
        return (q @ weights.transpose(1, 2)).view(n, c, h, w)


class Flip(nn.Module):
    def forward(self, x):
        return x.flip(-1)


class Unknown(nn.Module):
    """A tensor the trace did not make, added to the map (a plain attribute, not a buffer)."""

    def __init__(self):
        super().__init__()
        self.bias_map = torch.linspace(0, 1, 4 * 24 * 24).view(1, 4, 24, 24)

    def forward(self, x):
        return x + self.bias_map.to(x.device)


NONLOCAL = {"se": lambda c: SqueezeExcite(c), "layernorm": lambda c: SpatialLayerNorm(),
            "interpolate": lambda c: RoundTrip(), "attention": lambda c: Attention(), "flip": lambda c: Flip(),
            "groupnorm": lambda c: nn.GroupNorm(1, c), "instancenorm": lambda c: nn.InstanceNorm2d(c, affine=True)}


@pytest.mark.parametrize("kind", sorted(NONLOCAL))
def test_ops_that_mix_positions_are_not_local(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), NONLOCAL[kind](4),
                          nn.Conv2d(4, 3, 3, padding=1)).eval()
    x = image(3, 24)
    geometry = layer_geometry(model, (3, 24, 24))
    assert geometry["1"].local and not geometry["2"].local and not geometry["3"].local
    close(vizcnn.project(model, x, "3", 1, (5, 7), method="gradient"), autograd_projection(model, x, 1, 5, 7))


def test_unknown_tensor_is_not_local():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Unknown(), nn.Conv2d(4, 3, 3, padding=1)).eval()
    assert not layer_geometry(model, (3, 24, 24))["2"].local


class Locked:
    """A user's recorder: its forward hook is a bound method, and it holds a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = 0

    def hook(self, _module, _inputs, _output):
        with self.lock:
            self.calls += 1


def test_a_model_that_cannot_be_copied_still_works():
    from vizcnn.models import build_model

    model = build_model("resnet18", num_classes=10).eval()
    user = Locked()
    handle = model.layer1.register_forward_hook(user.hook)
    with pytest.raises(TypeError, match="pickle"):
        copy.deepcopy(model)  # the precondition: this model cannot be copied
    x = image(3, 64)
    before = snapshot(model)
    hooks = dict(model.layer1._forward_hooks)
    proj = vizcnn.project(model, x, "layer1.0", 3, method="gradient")
    cam = vizcnn.saliency_map(model, x, "gradcam")
    occ = vizcnn.occlude(model, x, window=32, stride=32)
    assert proj.shape == (3, 64, 64) and cam.info["layer"] == "layer4" and occ.layer == "layer4"
    assert_untouched(model, before)
    assert dict(model.layer1._forward_hooks) == hooks and user.calls > 0  # the user's hook stays and still runs
    calls = user.calls
    layer_geometry(model, (3, 64, 64))
    assert user.calls == calls  # silenced while vizcnn traces the geometry
    handle.remove()


def test_geometry_leaves_the_model_exactly_as_it_was():
    """A forward that reassigns a buffer (self.count += 1) and a hook that writes: the
    trace silences the hook and puts the user's buffer back."""

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("count", torch.zeros(()))

        def forward(self, x):
            self.count += 1
            return self.conv(x)

    model = Counting().train()
    seen = []
    model.conv.register_forward_hook(lambda _m, _i, o: seen.append(o))
    before = snapshot(model)
    buffer = model.count
    geometry = layer_geometry(model, (3, 16, 16))
    assert geometry["conv"].rf == (3, 3) and geometry["conv"].shape == (4, 14, 14)
    assert model.count is buffer and float(buffer) == 0 and seen == []
    assert_untouched(model, before)


# --------------------------------------------------------------------------- property test

_LOCAL_OPS = ("conv", "pool", "avgpool", "relu", "bn", "branch_cat", "branch_add", "shuffle")


def _op_strategy():
    kernel = st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3]))
    return st.one_of(
        st.tuples(st.just("conv"), kernel, st.tuples(st.sampled_from([1, 2]), st.sampled_from([1, 2])),
                  st.booleans(), st.sampled_from([1, 2])),
        st.tuples(st.sampled_from(["pool", "avgpool"]), st.sampled_from([2, 3]), st.sampled_from([1, 2]),
                  st.booleans()),
        st.tuples(st.sampled_from(["relu", "bn", "shuffle"])),
        st.tuples(st.sampled_from(["branch_cat", "branch_add"]), kernel, kernel),
        st.tuples(st.sampled_from(sorted(NONLOCAL))),
    )


class Branch(nn.Module):
    def __init__(self, c: int, k1, k2, merge: str):
        super().__init__()
        # odd kernels with 'same' padding keep the size; even ones pad by k // 2 and are cropped back
        self.a = nn.Conv2d(c, c, k1, padding="same")
        self.b = nn.Conv2d(c, c, k2, padding="same")
        self.merge = merge

    def forward(self, x):
        a, b = F.relu(self.a(x)), self.b(x).relu()
        return torch.cat([a, b], 1)[:, ::2] if self.merge == "branch_cat" else a + b


class Shuffle(nn.Module):
    def forward(self, x):
        n, c, h, w = x.shape
        if c % 2:
            return x
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def build(ops, c: int = 4) -> nn.Sequential:
    layers = [nn.Conv2d(3, c, 3, padding=1)]
    for op in ops:
        kind = op[0]
        if kind == "conv":
            _, k, stride, pad, dilation = op
            layers.append(nn.Conv2d(c, c, k, stride=stride, dilation=dilation,
                                    padding=(k[0] // 2 * dilation, k[1] // 2 * dilation) if pad else 0))
        elif kind in ("pool", "avgpool"):
            _, k, stride, ceil = op
            pool = nn.MaxPool2d if kind == "pool" else nn.AvgPool2d
            layers.append(pool(k, stride, padding=k // 2 if k == 3 else 0, ceil_mode=ceil))
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "bn":
            bn = nn.BatchNorm2d(c)
            with torch.no_grad():
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
            layers.append(bn)
        elif kind == "shuffle":
            layers.append(Shuffle())
        elif kind.startswith("branch"):
            layers.append(Branch(c, op[1], op[2], kind))
        else:
            layers.append(NONLOCAL[kind](c))
    return nn.Sequential(*layers).eval()


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op_strategy(), min_size=1, max_size=5), height=st.integers(12, 30), width=st.integers(12, 30),
       seed=st.integers(0, 1000), where=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_property_crop_path_equals_whole_image_and_autograd(ops, height, width, seed, where):
    """Random small nets mixing convolutions (asymmetric, strided, dilated, padded or not),
    pools (ceil mode too), rectifiers, batch norm, branches merged by cat or add, a channel
    shuffle and ops that mix positions: where every op is local the layer says so, the
    autograd support lies inside the unit's box and the crop path equals a · ∂a/∂x; where
    one is not, the layer is not local and ``project`` (whole image) equals it."""
    torch.manual_seed(seed)
    model = build(ops)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError:  # pooled or convolved to nothing
        return
    if out.shape[-1] < 1 or out.shape[-2] < 1:
        return
    layer = str(len(model) - 1)
    info = layer_geometry(model, (3, height, width))[layer]
    assert info.shape == tuple(out.shape[1:])
    local = all(op[0] in _LOCAL_OPS for op in ops)
    assert info.local == local, ops
    y, xx = int(where[0] * (out.shape[-2] - 1)), int(where[1] * (out.shape[-1] - 1))
    channel = seed % out.shape[1]
    ref = autograd_projection(model, x, channel, y, xx)
    if not bool(ref.abs().max() > 0):
        return
    if local:
        support = ref.abs().sum(0).nonzero()
        top, bottom, left, right = info.box(y, xx, height, width)
        assert support[:, 0].min() >= top and support[:, 0].max() < bottom, (ops, info)
        assert support[:, 1].min() >= left and support[:, 1].max() < right, (ops, info)
        close(crop_projection(model, x, layer, channel, y, xx), ref)
    close(vizcnn.project(model, x, layer, channel, (y, xx), method="gradient"), ref)
