"""Dataset passes: streaming top-k and dead-filter statistics against brute force, ties,
the 2-rank torchrun merge, projections of the winners, and the two commands."""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_untouched, snapshot
from dataset_worker import CONSTANT_UNIT, LAYERS, SPEC, tiny_model, write_images

from vizcnn.api import project_winners, scan
from vizcnn.core.errors import BadArgumentError
from vizcnn.core.extract import Extractor
from vizcnn.core.layers import feeding_weight
from vizcnn.io.sources import load, open_data
from vizcnn.methods.scan import ORDER, order, parse_units

TOP = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("images")
    write_images(path)
    return path


@pytest.fixture(scope="module")
def source(folder):
    return open_data(folder)


@pytest.fixture(scope="module")
def activations(source):
    """{layer: [(global index, (C, H, W) activation)]}, one image per forward."""
    model = tiny_model()
    acts = {name: [] for name in LAYERS}
    with Extractor(model, LAYERS) as ex:
        for i in range(len(source)):
            try:
                _, x = load(source, i, SPEC)
            except Exception:
                continue
            outs = ex.run(x[None])
            for name in LAYERS:
                acts[name].append((i, outs[name][0]))
    return acts


def brute_force(per_image, k, distinct=False):
    """Per unit, every (value, image, y, x) sorted by value desc, then image, y, x."""
    channels = per_image[0][1].shape[0]
    best = []
    for c in range(channels):
        cands = []
        for i, act in per_image:
            a = act[c].numpy()
            entries = [(float(a[y, x]), i, y, x) for y in range(a.shape[0]) for x in range(a.shape[1])]
            if distinct:
                entries = [min(entries, key=lambda e: (-e[0], e[2], e[3]))]
            cands.extend(entries)
        cands.sort(key=lambda e: (-e[0], e[1], e[2], e[3]))
        best.append(cands[:k])
    return best


def as_lists(topk):
    t = topk.cpu()
    return [[(float(t.value[c, r]), int(t.image[c, r]), int(t.y[c, r]), int(t.x[c, r]))
             for r in range(t.value.shape[1]) if int(t.image[c, r]) >= 0] for c in range(t.value.shape[0])]


def test_batches_compute_exactly(activations, source):
    # The helper model's arithmetic is exact: batched and per-image forwards agree bit for bit,
    # so brute force over per-image forwards is a fair reference for any batch size.
    model = tiny_model()
    xs = torch.stack([load(source, i, SPEC)[1] for i, _ in activations["conv1"]])
    with Extractor(model, LAYERS) as ex:
        outs = ex.run(xs)
    for name in LAYERS:
        assert torch.equal(outs[name], torch.stack([a for _, a in activations[name]]))


@pytest.mark.parametrize("distinct, host", [(False, True), (False, False), (True, True)])
def test_topk_equals_brute_force_and_skips_the_corrupt_file(source, activations, distinct, host, caplog, monkeypatch):
    import vizcnn.methods.scan

    monkeypatch.setattr(vizcnn.methods.scan, "host_branching", lambda device: host)  # False: the GPU's code path
    model = tiny_model()
    before = snapshot(model)
    with caplog.at_level(logging.WARNING, logger="vizcnn.data"):
        result = scan(model, source, SPEC, topk_layers=LAYERS, top=TOP, distinct_images=distinct, batch_size=3,
                      num_workers=0)
    assert_untouched(model, before)
    assert len(source) == 21 and result.images == 20
    assert [s.index for s in result.skipped] == [11] and "img_10_broken.png" in result.skipped[0].path
    assert "img_10_broken.png" in caplog.text
    for name in LAYERS:
        assert as_lists(result.topk[name]) == brute_force(activations[name], TOP, distinct)


@pytest.mark.parametrize("host", [True, False])
def test_ties_are_broken_by_image_then_position(source, activations, host, monkeypatch):
    import vizcnn.methods.scan

    monkeypatch.setattr(vizcnn.methods.scan, "host_branching", lambda device: host)
    # Unit CONSTANT_UNIT of conv1 is 0.5 at every position of every image.
    for batch in (1, 4, 7):
        result = scan(tiny_model(), source, SPEC, topk_layers=["conv1"], top=TOP, batch_size=batch, num_workers=0)
        assert as_lists(result.topk["conv1"])[CONSTANT_UNIT] == [(0.5, 0, 0, x) for x in range(TOP)]
    distinct = scan(tiny_model(), source, SPEC, topk_layers=LAYERS, top=TOP, distinct_images=True, batch_size=4,
                    num_workers=0)
    assert as_lists(distinct.topk["conv1"])[CONSTANT_UNIT] == [(0.5, i, 0, 0) for i in range(TOP)]
    # images 2 and 7 are identical: every tie between them goes to image 2
    for unit in as_lists(distinct.topk["conv2"]):
        images = [e[1] for e in unit]
        if 7 in images:
            assert 2 in images and images.index(2) < images.index(7)


def test_order_is_lexicographic_and_stable():
    value = torch.tensor([[1.0, 2.0, 2.0, 2.0, -0.0, 0.0]])
    image = torch.tensor([[0, 5, 3, 3, 1, 0]])
    y = torch.tensor([[0, 0, 1, 0, 0, 0]])
    x = torch.tensor([[0, 0, 0, 9, 0, 1]])
    assert order(value, image, y, x).tolist() == [[3, 2, 1, 0, 5, 4]]
    assert "value descending" in ORDER


def test_fewer_candidates_than_k_leave_empty_slots(source):
    result = scan(tiny_model(), open_data(source.paths[0]), SPEC, topk_layers=["conv2"], top=3,
                  distinct_images=True, num_workers=0)
    t = result.topk["conv2"]
    assert (t.image[:, 0] == 0).all() and (t.image[:, 1:] == -1).all()


def test_fully_connected_layers_rank_whole_images(source, activations):
    model = tiny_model()
    result = scan(model, source, SPEC, topk_layers=["fc3"], top=4, batch_size=6, num_workers=0)
    with Extractor(model, ["fc3"]) as ex:
        per_image = [(i, ex.run(load(source, i, SPEC)[1][None])["fc3"][0][:, None, None])
                     for i, _ in activations["conv1"]]
    assert as_lists(result.topk["fc3"]) == brute_force(per_image, 4)
    got = project_winners(model, source, SPEC, "fc3", result.topk["fc3"], [1])
    assert all(p.box == (0, 16, 0, 16) and p.projection.shape == (3, 16, 16) for p in got.values())


def test_dead_filter_statistics_against_brute_force(source, activations):
    model = copy.deepcopy(tiny_model())
    with torch.no_grad():  # filter 3 dead on purpose
        model.features[0].weight[3] = 0
        model.features[0].bias[3] = -1.0
    before = snapshot(model)
    both = scan(model, source, SPEC, topk_layers=LAYERS, stats_layers=LAYERS, top=TOP, batch_size=4, num_workers=0)
    only = scan(model, source, SPEC, stats_layers=LAYERS, batch_size=6, num_workers=0)
    assert_untouched(model, before)
    with Extractor(model, LAYERS) as ex:
        acts = {n: torch.cat([ex.run(load(source, i, SPEC)[1][None])[n] for i, _ in activations["conv1"]])
                for n in LAYERS}
    for name, conv in (("conv1", model.features[0]), ("conv2", model.features[3])):
        a = acts[name].transpose(0, 1).flatten(1).double()  # (C, positions)
        for s in (both.stats[name], only.stats[name]):
            assert s.positions == a.shape[1] and s.conv == ("features.0" if name == "conv1" else "features.3")
            assert torch.equal(s.fires, (a > 0).sum(1))
            assert torch.equal(s.max.double(), a.max(1).values)
            torch.testing.assert_close(s.mean, a.mean(1), rtol=1e-12, atol=0)
            torch.testing.assert_close(s.weight_norm, conv.weight.flatten(1).norm(dim=1))
    dead = both.stats["conv1"].dead()
    assert dead.nonzero().flatten().tolist() == [3]
    assert not both.stats["conv2"].dead().any()
    assert both.stats["conv1"].firing[3] == 0 and both.stats["conv1"].firing[CONSTANT_UNIT] == 1
    # thresholds: firing on every position is the only way to survive min_firing=1
    assert both.stats["conv1"].dead(min_firing=1.0).nonzero().flatten().tolist() == \
        [c for c in range(6) if both.stats["conv1"].firing[c] < 1]
    live = scan(tiny_model(), source, SPEC, stats_layers=["conv1"], num_workers=0).stats["conv1"]
    assert not live.dead().any()


def test_a_model_in_training_mode_is_scanned_in_eval_mode_and_left_training(source):
    model = tiny_model()
    model.features = torch.nn.Sequential(*model.features, torch.nn.Dropout(0.5))
    expected = scan(model, source, SPEC, stats_layers=["features.5"], num_workers=0).stats["features.5"]
    model.train()
    before = snapshot(model)
    got = scan(model, source, SPEC, stats_layers=["features.5"], num_workers=0).stats["features.5"]
    assert_untouched(model, before)
    assert model.training and torch.equal(got.fires, expected.fires) and torch.equal(got.total, expected.total)


def test_feeding_weight_finds_the_conv_before_the_relu():
    model = tiny_model()
    assert feeding_weight(model, "conv2")[0] == "features.3"
    assert feeding_weight(model, "features.3")[0] == "features.3"
    assert feeding_weight(model, "features.2") == (None, None)  # max pool: not element-wise


def test_two_ranks_with_gloo_equal_one_process(folder, source, tmp_path, monkeypatch):
    import socket

    import dataset_worker
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "merged.pt"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(dataset_worker.spawned, args=(2, port, str(folder), str(out)), nprocs=2, join=True)
    merged = torch.load(out, weights_only=False)
    assert merged["world"] == 2
    for distinct, got in merged["results"].items():
        single = scan(tiny_model(), source, SPEC, topk_layers=LAYERS, stats_layers=LAYERS, top=TOP,
                      distinct_images=distinct, batch_size=3, num_workers=0)
        assert got["world_size"] == 2 and got["images"] == single.images == 20
        assert got["skipped"] == [s.index for s in single.skipped] == [11]
        for name in LAYERS:
            for field, t in vars(single.topk[name]).items():
                assert torch.equal(got["topk"][name][field], t), (distinct, name, field)
            for field, t in vars(single.stats[name]).items():
                if isinstance(t, torch.Tensor):
                    assert torch.equal(got["stats"][name][field], t), (distinct, name, field)
                else:
                    assert got["stats"][name][field] == t


def test_projections_of_winners_match_single_projections(source):
    from vizcnn.methods.deconv import project

    model = tiny_model()
    before = snapshot(model)
    result = scan(model, source, SPEC, topk_layers=["conv2"], top=3, batch_size=8, num_workers=0)
    got = project_winners(model, source, SPEC, "conv2", result.topk["conv2"], [0, 4])
    assert_untouched(model, before)
    assert sorted(got) == [(u, r) for u in (0, 4) for r in range(3)]
    for (u, r), p in got.items():
        t = result.topk["conv2"]
        assert p.image == int(t.image[u, r]) and p.value == float(t.value[u, r])
        _, x = load(source, p.image, SPEC)
        full = project(model, x, "conv2", u, (int(t.y[u, r]), int(t.x[u, r])))
        top, bottom, left, right = p.box
        torch.testing.assert_close(p.projection, full[:, top:bottom, left:right])
        assert p.patch.shape[:2] == (bottom - top, right - left)
        # the receptive field holds every nonzero pixel of the projection
        outside = full.abs().sum(0)
        outside[top:bottom, left:right] = 0
        assert outside.max() == 0


def test_parse_units():
    assert parse_units(None, 4) == parse_units("all", 4) == parse_units(None, 4, default=9) == [0, 1, 2, 3]
    assert parse_units(None, 40, default=16) == list(range(16)) and len(parse_units("all", 40)) == 40
    assert parse_units("0-2,7,1", 8) == [0, 1, 2, 7]
    assert parse_units([3, 1], 4) == [3, 1]
    for bad in ("5", "2-1", "a", "1-", ""):
        with pytest.raises(BadArgumentError):
            parse_units(bad, 4)


def test_bad_arguments(source):
    with pytest.raises(BadArgumentError):
        scan(tiny_model(), source, SPEC, top=3, num_workers=0)
    with pytest.raises(BadArgumentError):
        scan(tiny_model(), source, SPEC, topk_layers=["conv1"], top=0, num_workers=0)
    with pytest.raises(BadArgumentError):
        scan(tiny_model(), source, SPEC, topk_layers=["conv1"], batch_size=0)


# --------------------------------------------------------------------------- the commands


def cli(*args):
    from cli.main import cli as group

    return CliRunner().invoke(group, [str(a) for a in args])


def test_topk_command_on_samples(tmp_path, samples_dir):
    out = tmp_path / "topk"
    result = cli("topk", "alexnet", "samples", "--weights", "random", "--layer", "conv5", "--top", "3",
                 "--units", "0-1", "--dead-filters", "--workers", "1", "--limit", "4", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["data_size"] == summary["images"] == 4 and summary["skipped"] == 0
    assert summary["images_per_second"] > 0
    assert summary["world_size"] == 1 and summary["top"] == 3 and summary["order"] == ORDER
    assert sorted(os.listdir(out)) == sorted(summary["files"] + ["summary.json", ".vizcnn-manifest.json"])
    assert os.listdir(tmp_path) == ["topk"]  # no staging folder left beside it
    assert summary["files"] == ["dead_filters.png", "topk_conv5_p1.png"]
    for f in summary["files"]:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    layer = summary["layers"][0]
    assert layer["layer"] == "conv5" and layer["channels"] == 256 and layer["figure_units"] == [0, 1]
    assert len(layer["units"]) == 256
    for unit in layer["units"]:
        values = [w["value"] for w in unit["winners"]]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        w = unit["winners"][0]
        assert Path(w["path"]).resolve().parent == samples_dir and 0 <= w["y"] < 13 and 0 <= w["x"] < 13
        assert 0 <= w["box"]["top"] < w["box"]["bottom"] <= 224
    dead = summary["dead_filters"]["layers"][0]
    assert dead["layer"] == "conv5" and dead["filters"] == 256 and len(dead["units"]) == 256
    assert dead["units"][0]["max"] == layer["units"][0]["winners"][0]["value"]


def test_dead_filters_command_on_samples(tmp_path):
    out = tmp_path / "dead"
    result = cli("dead-filters", "alexnet", "samples", "--weights", "random", "--limit", "2", "--workers", "0",
                 "--min-firing", "0.01", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [e["layer"] for e in summary["layers"]] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert summary["images"] == 2 and summary["min_firing"] == 0.01 and summary["files"] == ["dead_filters.png"]
    conv1 = summary["layers"][0]
    assert conv1["filters"] == 64 and conv1["conv"] == "features.0" and conv1["positions"] == 2 * 55 * 55
    assert conv1["dead"] == sum(u["dead"] for u in conv1["units"]) == len(conv1["dead_units"])
    assert all(u["weight_norm"] > 0 for u in conv1["units"])
    assert "conv5:" in result.stdout and "images/s" in result.stdout


@pytest.mark.parametrize("data", ["no/such/folder", "fashion-mnist:valid"])
def test_bad_data_is_a_one_line_error(tmp_path, data):
    result = cli("topk", "alexnet", data, "--weights", "random", "--out", tmp_path / "x")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "DATA" in lines[0]
    assert not (tmp_path / "x").exists()
