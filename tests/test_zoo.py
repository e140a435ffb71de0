"""The model zoo: exact parameter counts, weights loading, and the zoo commands."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from click.testing import CliRunner

import vizcnn
from cli.main import cli
from vizcnn.core.errors import BadArgumentError, BadInputError, UnknownNameError
from vizcnn.models import build_model
from vizcnn.models.registry import read_checkpoint

# The published figures quoted by the foundation issue and torchvision's documentation.
PUBLISHED = {
    "lenet5": 60_000, "alexnet": 61_100_840, "alexnet-2012": 62_378_344, "alexnet-2012-2gpu": 60_965_224,
    "zfnet": 62_357_608, "zfnet-512": 107_627_624, "vgg11": 132_863_336, "vgg13": 133_047_848,
    "vgg16": 138_357_544, "vgg19": 143_667_240, "googlenet": 6_624_904, "resnet18": 11_689_512,
    "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160, "resnet152": 60_192_808,
}


@pytest.fixture(scope="module")
def models_json():
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    return {r["name"]: r for r in json.loads(result.output)["models"]}


def test_registry_has_every_entry():
    assert set(vizcnn.list_models()) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_computed_parameter_count_equals_published(name, models_json):
    assert models_json[name]["params"] == PUBLISHED[name]
    assert models_json[name]["published_params"] == PUBLISHED[name]


def test_models_table_shows_geometry_and_flops(models_json):
    alex = models_json["alexnet-2012"]
    assert [c["kernel"][0] for c in alex["convs"]] == [11, 5, 3, 3, 3]
    assert [c["stride"][0] for c in alex["convs"]] == [4, 1, 1, 1, 1]
    # Receptive fields by hand: 11; 11+4·4+... (pool 3/2 after conv1 and conv2).
    assert [c["receptive_field"][0] for c in alex["convs"]] == [11, 51, 99, 131, 163]
    assert [c["receptive_field"][0] for c in models_json["zfnet"]["convs"]] == [7, 27, 75, 107, 139]
    # conv1 of ZFNet alone: 96·3·7·7 MACs at 110², times 2 FLOPs per MAC, is part of the total.
    assert models_json["zfnet"]["gflops"] * 1e9 > 2 * 96 * 3 * 49 * 110 * 110
    assert 0.7 < models_json["alexnet"]["gflops"] / 1.43 < 1.01  # fvcore/ptflops quote 0.71 GMACs


def test_models_text_and_plot(tmp_path):
    plot = tmp_path / "lineage.png"
    result = CliRunner().invoke(cli, ["models", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "62,357,608" in result.output and "resnet152" in result.output
    assert plot.stat().st_size > 10_000


def test_layers_alexnet_2012_lists_friendly_names():
    result = CliRunner().invoke(cli, ["layers", "alexnet-2012", "--json"])
    assert result.exit_code == 0, result.output
    names = [r["name"] for r in json.loads(result.output)["layers"]]
    assert names == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    text = CliRunner().invoke(cli, ["layers", "alexnet-2012"]).output
    assert "features.relu5" in text and "256×13×13" in text


def test_unknown_model_and_layer_suggest_close_names():
    result = CliRunner().invoke(cli, ["layers", "alexnet2012"])
    assert result.exit_code == 2
    assert "did you mean alexnet-2012" in result.output
    with pytest.raises(UnknownNameError, match="did you mean conv5"):
        vizcnn.resolve_layer(build_model("zfnet"), "cnv5")


def test_random_weights_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = vizcnn.load_model("lenet5", "random", seed=1)
    b = vizcnn.load_model("lenet5", "random", seed=1)
    c = vizcnn.load_model("lenet5", "random", seed=2)
    assert torch.equal(torch.rand(3), expected)
    assert not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.c1.weight, c.c1.weight)


def test_checkpoint_round_trip_plain_and_wrapped(tmp_path):
    src = vizcnn.load_model("lenet5", seed=3)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    torch.save({"epoch": 4, "state_dict": src.state_dict()}, tmp_path / "wrapped.pt")
    for f in ("plain.pt", "wrapped.pt"):
        loaded = vizcnn.load_model("lenet5", tmp_path / f, seed=0)
        assert all(torch.equal(p, q) for p, q in zip(src.state_dict().values(), loaded.state_dict().values()))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"c1.weight": _Evil(marker)}, f, protocol=2)
    with pytest.raises(BadInputError, match="could run code|cannot load"):
        vizcnn.load_model("lenet5", bad)
    assert not marker.exists()
    torch.save({"w": torch.zeros(1), "x": _Evil(marker)}, tmp_path / "evil2.pt")
    with pytest.raises(BadInputError):
        read_checkpoint(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_mismatched_checkpoint_lists_keys(tmp_path):
    torch.save(vizcnn.load_model("lenet5").state_dict(), tmp_path / "lenet.pt")
    with pytest.raises(BadInputError) as e:
        vizcnn.load_model("zfnet", tmp_path / "lenet.pt")
    msg = str(e.value)
    assert "missing (" in msg and "features.conv1.weight" in msg and "unexpected (" in msg and "c1.weight" in msg
    assert "\n" not in msg
    small = build_model("zfnet", num_classes=10)
    torch.save(small.state_dict(), tmp_path / "zf10.pt")
    with pytest.raises(BadInputError, match=r"shape mismatch \(2\): classifier.fc8.weight \(10, 4096\) vs \(1000, 4096\)"):
        vizcnn.load_model("zfnet", tmp_path / "zf10.pt")
    assert vizcnn.load_model("zfnet", tmp_path / "zf10.pt", num_classes=10).classifier.fc8.out_features == 10


def test_truncated_empty_and_nan_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(vizcnn.load_model("lenet5").state_dict(), good)
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:500])
    (tmp_path / "empty.pt").write_bytes(b"")
    for f in ("trunc.pt", "empty.pt"):
        with pytest.raises(BadInputError, match="cannot load weights"):
            vizcnn.load_model("lenet5", tmp_path / f)
    state = vizcnn.load_model("lenet5").state_dict()
    state["c1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(BadInputError, match="NaN or Inf in c1.weight"):
        vizcnn.load_model("lenet5", tmp_path / "nan.pt")
    with pytest.raises(BadInputError, match="no such file"):
        vizcnn.load_model("lenet5", tmp_path / "nope.pt")


def test_imagenet_weights_offline(tmp_path, monkeypatch):
    """No cached copy and no network: a clear error naming the alternatives. With the file in
    torch's cache (as after one download), it loads offline."""
    import urllib.error

    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    with pytest.raises(BadInputError, match="no cached copy .* --weights random"):
        vizcnn.load_model("resnet18", "imagenet")
    with pytest.raises(BadArgumentError, match="no published ImageNet weights"):
        vizcnn.load_model("zfnet", "imagenet")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    reference = build_model("resnet18", seed=7)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    loaded = vizcnn.load_model("resnet18", "imagenet")
    assert torch.equal(loaded.fc.weight, reference.fc.weight)
    assert vizcnn.class_names("resnet18")[281] == "tabby"
