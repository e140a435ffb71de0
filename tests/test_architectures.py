"""The three paper architectures: parameter counts, map sizes, wiring, init, gradients.

Expected figures come from the papers' layer tables (see shared/REFERENCE.md),
not from the code under test. The 60M-parameter models are built once per module.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vizcnn.core.errors import BadArgumentError
from vizcnn.models.alexnet2012 import AlexNet2012, alexnet2012
from vizcnn.models.lenet5 import LeNet5, lenet5
from vizcnn.models.zfnet import ZFNet, zfnet

# Table I of LeCun et al. 1998, written out again so the test does not trust the module's copy.
PAPER_C3_TABLE = {
    0: {0, 1, 2}, 1: {1, 2, 3}, 2: {2, 3, 4}, 3: {3, 4, 5}, 4: {4, 5, 0}, 5: {5, 0, 1},
    6: {0, 1, 2, 3}, 7: {1, 2, 3, 4}, 8: {2, 3, 4, 5}, 9: {3, 4, 5, 0}, 10: {4, 5, 0, 1},
    11: {5, 0, 1, 2}, 12: {0, 1, 3, 4}, 13: {1, 2, 4, 5}, 14: {0, 2, 3, 5}, 15: {0, 1, 2, 3, 4, 5},
}  # fmt: skip

ALEXNET_FEATURE_NAMES = [
    "conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2",
    "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5",
]  # fmt: skip
CLASSIFIER_NAMES = ["drop6", "fc6", "relu6", "drop7", "fc7", "relu7", "fc8"]


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def map_sides(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, int]:
    """Run ``x`` through ``model`` and return the output side of each named module."""
    modules = dict(model.named_modules())
    sides: dict[str, int] = {}
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: sides.__setitem__(name, out.shape[-1]))
        for name in names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sides


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 3, 224, 224)


@pytest.fixture(scope="module")
def digit() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 1, 32, 32)


@pytest.fixture(scope="module")
def alexnet_dense() -> AlexNet2012:
    torch.manual_seed(0)
    return alexnet2012().eval()


@pytest.fixture(scope="module")
def alexnet_grouped() -> AlexNet2012:
    torch.manual_seed(0)
    return alexnet2012(groups=2).eval()


@pytest.fixture(scope="module")
def zf() -> ZFNet:
    torch.manual_seed(0)
    return zfnet().eval()


@pytest.fixture(scope="module")
def zf512() -> ZFNet:
    # Counted on the meta device: same modules and shapes, no 430 MB of weights to draw.
    with torch.device("meta"):
        return zfnet(widths=(512, 1024, 512))


@pytest.fixture()
def lenet_rbf() -> LeNet5:
    torch.manual_seed(0)
    return lenet5().eval()


# --- parameter counts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("alexnet_dense", 62_378_344),
        ("alexnet_grouped", 60_965_224),
        ("zf", 62_357_608),
        ("zf512", 107_627_624),
    ],
)
def test_imagenet_parameter_counts(fixture: str, expected: int, request: pytest.FixtureRequest) -> None:
    assert trainable(request.getfixturevalue(fixture)) == expected


@pytest.mark.parametrize(("output", "expected"), [("rbf", 60_000), ("linear", 60_850)])
def test_lenet5_parameter_count(output: str, expected: int) -> None:
    assert trainable(lenet5(output=output)) == expected


def test_lenet5_parameters_per_layer_match_paper_table() -> None:
    model = lenet5()
    modules = dict(model.named_modules())
    paper = {"c1": 156, "s2": 12, "c3": 1_516, "s4": 32, "c5": 48_120, "f6": 10_164, "out": 0}
    assert {name: trainable(modules[name]) for name in paper} == paper


# --- map sizes and layer order ---------------------------------------------------


def test_zfnet_map_sizes_on_224(zf: ZFNet, image: torch.Tensor) -> None:
    stages = ("conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4", "conv5", "pool5")
    names = [f"features.{n}" for n in stages]
    sides = map_sides(zf, image, names)
    expected = [110, 55, 55, 26, 13, 13, 13, 13, 13, 6]
    assert [sides[n] for n in names] == expected


def test_alexnet2012_map_sizes_on_224(alexnet_dense: AlexNet2012, image: torch.Tensor) -> None:
    names = [f"features.{n}" for n in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")]
    sides = map_sides(alexnet_dense, image, names)
    assert [sides[n] for n in names] == [55, 27, 27, 13, 13, 13, 13, 6]


def test_alexnet2012_layer_names_and_order(alexnet_dense: AlexNet2012) -> None:
    assert [n for n, _ in alexnet_dense.features.named_children()] == ALEXNET_FEATURE_NAMES
    assert [n for n, _ in alexnet_dense.classifier.named_children()] == CLASSIFIER_NAMES


def test_zfnet_layer_names_and_paper_order(zf: ZFNet) -> None:
    # Fig. 3: rectify, pool, then contrast-normalise (AlexNet normalises before pooling).
    paper_order = [
        "conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2",
        "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5",
    ]  # fmt: skip
    assert [n for n, _ in zf.features.named_children()] == paper_order
    assert [n for n, _ in zf.classifier.named_children()] == CLASSIFIER_NAMES
    lrn = zf.features.norm1
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 5e-4, 0.75, 2.0)


@pytest.mark.parametrize(("conv1", "flat"), [((11, 4), 256 * 3 * 3), ((5, 2), 256 * 6 * 6), ((9, 3), 256 * 4 * 4)])
def test_zfnet_other_first_layers_size_the_classifier(conv1: tuple[int, int], flat: int) -> None:
    # Meta tensors run the shape arithmetic of the real layers without allocating 60M weights.
    with torch.device("meta"):
        model = zfnet(conv1=conv1, num_classes=7)
        out = model(torch.empty(2, 3, 224, 224))
    assert model.classifier.fc6.in_features == flat
    assert out.shape == (2, 7)


def test_lenet5_order_and_map_sizes(lenet_rbf: LeNet5, digit: torch.Tensor) -> None:
    names = ["c1", "s2", "c3", "s4", "c5", "f6", "out"]
    seen: list[tuple[str, tuple[int, ...]]] = []
    modules = dict(lenet_rbf.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: seen.append((n, tuple(out.shape))))
        for n in names
    ]
    try:
        lenet_rbf(digit)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [
        ("c1", (1, 6, 28, 28)),
        ("s2", (1, 6, 14, 14)),
        ("c3", (1, 16, 10, 10)),
        ("s4", (1, 16, 5, 5)),
        ("c5", (1, 120, 1, 1)),
        ("f6", (1, 84)),
        ("out", (1, 10)),
    ]


# --- LeNet-5 specifics -----------------------------------------------------------


def expected_c3_mask() -> torch.Tensor:
    mask = torch.zeros(16, 6, dtype=torch.bool)
    for out_map, in_maps in PAPER_C3_TABLE.items():
        mask[out_map, sorted(in_maps)] = True
    return mask


def test_c3_perturbing_s2_map_changes_exactly_the_table_maps(lenet_rbf: LeNet5) -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 6, 14, 14)
    with torch.no_grad():
        base = lenet_rbf.c3(x)
        reach = torch.zeros(16, 6, dtype=torch.bool)
        for j in range(6):
            bumped = x.clone()
            bumped[:, j] += torch.randn(14, 14)
            reach[:, j] = (lenet_rbf.c3(bumped) - base).abs().amax(dim=(0, 2, 3)) > 0
    assert torch.equal(reach, expected_c3_mask())


def test_c3_gradient_flows_back_only_along_the_table(lenet_rbf: LeNet5) -> None:
    torch.manual_seed(2)
    x = torch.randn(1, 6, 14, 14, requires_grad=True)
    out = lenet_rbf.c3(x)
    reach = torch.zeros(16, 6, dtype=torch.bool)
    for i in range(16):
        # A random cotangent, so that no sum of weights can cancel by accident.
        (grad,) = torch.autograd.grad(out[0, i], x, torch.randn(10, 10), retain_graph=True)
        reach[i] = grad[0].abs().sum(dim=(1, 2)) > 0
    assert torch.equal(reach, expected_c3_mask())


def test_c3_equals_separate_convolutions_over_each_maps_inputs(lenet_rbf: LeNet5) -> None:
    c3 = lenet_rbf.c3
    assert c3.weight.shape[0] == 60 and c3.weight[0].numel() == 25
    torch.manual_seed(3)
    x = torch.randn(1, 6, 14, 14)
    with torch.no_grad():
        got = c3(x)
        kernels = iter(c3.weight)  # stored row-major: C3 map, then S2 map ascending
        for i in range(16):
            inputs = sorted(PAPER_C3_TABLE[i])
            weight = torch.stack([next(kernels) for _ in inputs]).unsqueeze(0)
            want = F.conv2d(x[:, inputs], weight, c3.bias[i : i + 1])
            torch.testing.assert_close(got[:, i : i + 1], want)


def test_subsampling_is_block_sum_times_coefficient_plus_bias(lenet_rbf: LeNet5) -> None:
    s2 = lenet_rbf.s2
    torch.manual_seed(4)
    x = torch.randn(2, 6, 28, 28)
    block_sum = x.reshape(2, 6, 14, 2, 14, 2).sum(dim=(3, 5))
    with torch.no_grad():
        want = block_sum * s2.weight.view(1, 6, 1, 1) + s2.bias.view(1, 6, 1, 1)
        torch.testing.assert_close(s2(x), want)


def test_lenet5_output_shape_and_fixed_rbf_codes(lenet_rbf: LeNet5) -> None:
    torch.manual_seed(5)
    assert lenet_rbf(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    codes = dict(lenet_rbf.named_buffers())["out.codes"]
    assert codes.shape == (10, 84)
    assert not codes.requires_grad
    assert all(p is not codes for p in lenet_rbf.parameters())
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(codes, lenet5().out.codes)  # deterministic across builds
    # Scores are negative squared distances: feeding code k scores class k highest, at 0.
    scores = lenet_rbf.out(codes)
    assert torch.equal(scores.argmax(dim=1), torch.arange(10))
    assert torch.equal(scores.diagonal(), torch.zeros(10))


def test_lenet5_named_modules_and_linear_head() -> None:
    model = lenet5(output="linear", num_classes=26)
    assert {"c1", "s2", "c3", "s4", "c5", "f6", "out"} <= set(dict(model.named_modules()))
    assert isinstance(model.out, nn.Linear) and model.out.out_features == 26
    torch.manual_seed(6)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 26)


# --- init ------------------------------------------------------------------------


def test_alexnet2012_init_follows_paper(alexnet_grouped: AlexNet2012) -> None:
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
    for name, module in [*alexnet_grouped.features.named_children(), *alexnet_grouped.classifier.named_children()]:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert torch.all(module.bias == (1.0 if name in ones else 0.0)), name
    assert abs(alexnet_grouped.classifier.fc6.weight.std().item() - 0.01) < 1e-4
    assert alexnet_grouped.features.conv2.groups == 2 and alexnet_grouped.features.conv3.groups == 1


def test_zfnet_init_follows_paper(zf: ZFNet) -> None:
    for name, module in zf.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert torch.all(module.bias == 0.0), name
    assert abs(zf.classifier.fc6.weight.std().item() - 0.01) < 1e-4


# --- forward + backward ----------------------------------------------------------


# zfnet's wide variant differs from "zf" only in widths; its count is checked above.
@pytest.mark.parametrize("fixture", ["alexnet_dense", "alexnet_grouped", "zf", "lenet5-rbf", "lenet5-linear"])
def test_forward_backward_finite_in_eval_mode(
    fixture: str, request: pytest.FixtureRequest, image: torch.Tensor, digit: torch.Tensor
) -> None:
    if fixture.startswith("lenet5"):
        torch.manual_seed(0)
        model, x = lenet5(output=fixture.split("-")[1]).eval(), digit
    else:
        model, x = request.getfixturevalue(fixture), image
    assert not model.training
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    try:
        out = model(x)
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    finally:
        model.zero_grad(set_to_none=True)  # the big fixtures stay alive; drop their grads


# --- bad arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "kwargs"),
    [
        (lenet5, {"output": "softmax"}),
        (lenet5, {"num_classes": 0}),
        (alexnet2012, {"groups": 3}),
        (alexnet2012, {"groups": True}),
        (alexnet2012, {"dropout": 1.0}),
        (zfnet, {"widths": (384, 384)}),
        (zfnet, {"widths": (384, 0, 256)}),
        (zfnet, {"conv1": (7,)}),
        (zfnet, {"conv1": (64, 64)}),  # shrinks 224 below conv2's window
        (zfnet, {"num_classes": 2.5}),
    ],
)
def test_bad_builder_arguments_raise(build: Callable[..., nn.Module], kwargs: dict[str, object]) -> None:
    with pytest.raises(BadArgumentError):
        build(**kwargs)
