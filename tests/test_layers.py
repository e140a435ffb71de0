"""Layer names and default layers (issue 21): Grad-CAM's and occlusion's default is the last
feature map feeding the classifier, a friendly name is the rectified output for
BatchNorm models too, and it means the same module in every command."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from vizcnn.core.layers import (feeding_layer, feeding_weight, friendly_names, last_conv_layer, layer_geometry,
                                resolve_layer)

#: torchvision model -> (the layer a person picks for Grad-CAM, what it is)
PICKS = {
    "squeezenet1_1": ("features", "the last Fire module's 13x13 map, before the head's 1x1 class conv and pool"),
    "densenet121": ("features", "norm5, the last dense block's output (its ReLU is functional, in forward)"),
    "convnext_tiny": ("features", "the last stage's output, before avgpool and the head's LayerNorm"),
    "regnet_y_400mf": ("trunk_output", "the last stage's output, after its add and ReLU"),
    "vgg19_bn": ("conv5_4", "features.51, the ReLU after conv5_4's batch norm, before the last max pool"),
    "efficientnet_b0": ("features", "features.8, the 1280-channel 1x1 conv after its SiLU"),
    "mobilenet_v3_large": ("features", "features.16, the 960-channel 1x1 conv after its Hardswish"),
    "inception_v3": ("Mixed_7c", "the last inception block, before avgpool"),
    "googlenet": ("inception5b", "the last inception block, before avgpool"),
    "resnet50": ("layer4", "the last stage, after its last block's add and ReLU"),
}


def _tv(name: str) -> nn.Module:
    """torchvision's definition with random weights; on the meta device where it can be
    built there (no weights to initialise: milliseconds)."""
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    if name.startswith("regnet"):  # its builder computes widths from tensors
        return torchvision.models.get_model(name, weights=None).eval()
    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()


@pytest.mark.parametrize("name", sorted(PICKS))
def test_default_layer_is_the_one_a_person_picks(name):
    model = _tv(name)
    size = (3, 299, 299) if name == "inception_v3" else (3, 224, 224)
    expected, _why = PICKS[name]
    assert last_conv_layer(model, size) == expected
    path, _ = resolve_layer(model, expected)
    info = layer_geometry(model, size)[path]
    assert len(info.shape) == 3 and info.shape[1] * info.shape[2] > 1  # a spatial map
    if name == "vgg19_bn":
        assert path == "features.51" and isinstance(model.get_submodule(path), nn.ReLU)


def test_default_layer_on_small_nets():
    """A bare conv whose ReLU is functional; a pool in front of the classifier; LeNet-5."""
    from vizcnn.models import build_model

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))

    assert last_conv_layer(Tiny(), (3, 16, 16)) == "conv2"
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    assert last_conv_layer(seq, (3, 16, 16)) == "3"  # conv2's ReLU, before the pool (AlexNet's conv5)
    assert last_conv_layer(build_model("lenet5"), (1, 32, 32)) == "act3"  # before s4, as conv5 is before pool5


def test_friendly_names_point_at_rectified_outputs_with_batch_norm():
    vgg = _tv("vgg19_bn")
    names = friendly_names(vgg)
    for name, path in names.items():  # fc8 gives the logits: no rectifier follows it
        assert isinstance(vgg.get_submodule(path), nn.ReLU if name != "fc8" else nn.Linear), (name, path)
    assert (names["conv1_1"], names["conv5_4"], names["fc6"], names["fc7"]) == \
        ("features.2", "features.51", "classifier.1", "classifier.4")
    assert feeding_layer(vgg, "conv5_4") == "features.49"  # the conv whose filters make it
    assert names["fc8"] == "classifier.6"
    # block stacks are not AlexNet-style stacks: their paths name them
    assert friendly_names(_tv("densenet121")) == {} and friendly_names(_tv("squeezenet1_1")) == {}


def test_a_friendly_name_means_one_module_in_every_command(tmp_path):
    """Issue 24, item 7: `vizcnn layers alexnet` put conv1 at features.1 and `vizcnn filters`
    at features.0. Both now say features.1; filters names the conv it reads."""
    from cli.main import cli

    listed = CliRunner().invoke(cli, ["layers", "alexnet", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r["module"] for r in json.loads(listed.output)["layers"]}
    res = CliRunner().invoke(cli, ["filters", "alexnet", "--weights", "random", "--layer", "conv1",
                                   "--out", str(tmp_path / "f"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert rows["conv1"] == summary["module"] == "features.1"
    assert summary["conv"] == "features.0"
    assert feeding_weight(_tv("alexnet"), "conv1")[0] == summary["conv"]
