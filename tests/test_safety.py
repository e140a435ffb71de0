"""Reliability: hostile inputs, the user's model untouched under random calls, nothing
half-written, the same numbers twice."""
from __future__ import annotations

import json
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import assert_untouched, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import vizcnn
from cli.main import cli
from vizcnn.errors import VizcnnError
from vizcnn.output import OutputDir
from vizcnn.reports import write_deconv


class Tiny(nn.Module):
    """Small, but with every hazard: in-place functional ReLU, a reused ReLU module, a
    max-pool and a classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 12, 3, padding=1))
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.act(self.features(x))
        x = self.act(F.relu(x, inplace=True) + 0.5)
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Tiny()
    model.train()
    model.features[0].weight.requires_grad_(False)
    return model


LAYERS = st.sampled_from(["features.0", "features.1", "features.3", "act", "act:1", "head", "features.9", "",
                          "act:7", "nope", "act:x"])
CHANNELS = st.one_of(st.integers(-3, 20), st.lists(st.integers(-1, 14), min_size=0, max_size=4))
POSITIONS = st.one_of(st.none(), st.tuples(st.integers(-2, 20), st.integers(-2, 20)))
METHODS = st.sampled_from(["deconvnet", "guided", "gradient", "lrp"])
INPUTS = st.sampled_from(["ok", "nan", "batch", "int", "small"])


def make_input(kind: str) -> torch.Tensor:
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return {"ok": x, "nan": x.masked_fill(x > 1.5, float("nan")), "batch": x.repeat(2, 1, 1, 1),
            "int": x.long(), "small": x[..., :1, :1]}[kind]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=st.sampled_from(["project", "project_top", "top_activations", "extractor"]), layer=LAYERS,
       channel=CHANNELS, position=POSITIONS, method=METHODS, k=st.integers(-1, 20), kind=INPUTS)
def test_public_api_leaves_model_untouched(tiny, call, layer, channel, position, method, k, kind):
    """Random valid and invalid arguments: every call returns or raises vizcnn's own error,
    and the model comes back exactly as it was."""
    before = snapshot(tiny)
    x = make_input(kind)
    try:
        if call == "project":
            out = vizcnn.project(tiny, x, layer, channel, position, method=method)
            assert torch.isfinite(out).all()
        elif call == "project_top":
            units, proj = vizcnn.project_top(tiny, x, layer, k, method=method)
            assert len(units) == len(proj) <= k
        elif call == "top_activations":
            vizcnn.top_activations(tiny, x, layer, k)
        else:
            with vizcnn.Extractor(tiny, [layer]) as ex:
                ex.run(x.float())
    except VizcnnError as e:
        assert "\n" not in str(e)
    assert_untouched(tiny, before)


# --- hostile image files through the CLI -------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def hostile_files(folder) -> dict[str, str]:
    """Files a user might hand vizcnn, made here rather than shipped as blobs."""
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    files = {}

    def put(name, data):
        path = folder / name
        path.write_bytes(data)
        files[name] = str(path)

    put("empty.jpg", b"")
    put("text.jpg", b"this is not a JPEG\n")
    png = cv2.imencode(".png", rgb)[1].tobytes()
    jpg = cv2.imencode(".jpg", rgb)[1].tobytes()
    put("truncated.png", png[: len(png) // 2])
    put("truncated.jpg", jpg[: len(jpg) // 2])
    put("one-pixel.png", cv2.imencode(".png", rgb[:1, :1])[1].tobytes())
    put("tiny.png", cv2.imencode(".png", rgb[:3, :3])[1].tobytes())
    put("sixteen-bit.png", cv2.imencode(".png", (rgb.astype(np.uint16) * 257))[1].tobytes())
    put("grey.png", cv2.imencode(".png", rgb[..., 0])[1].tobytes())
    put("rgba.png", cv2.imencode(".png", np.dstack([rgb, rgb[..., :1]]))[1].tobytes())
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    put("bomb.png", b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))
    (folder / "a-directory.png").mkdir()
    files["a-directory.png"] = str(folder / "a-directory.png")
    files["missing.png"] = str(folder / "missing.png")
    return files


WORKS = {"sixteen-bit.png", "grey.png", "rgba.png"}


def test_hostile_images_work_or_fail_in_one_line(tmp_path):
    files = hostile_files(tmp_path)
    for name, path in files.items():
        out = tmp_path / f"out-{name}"
        result = CliRunner().invoke(cli, ["deconv", "lenet5", path, "--weights", "random", "--layer", "c1",
                                          "--top", "2", "--out", str(out)])
        assert "Traceback" not in result.output, (name, result.output)
        if name in WORKS:
            assert result.exit_code == 0, (name, result.output)
            assert (out / "summary.json").exists()
        else:
            assert result.exit_code == 2, (name, result.output)
            assert len(result.output.strip().splitlines()) == 1, (name, result.output)
            assert not out.exists() or not any(out.iterdir()), name
    assert "pixels" in CliRunner().invoke(cli, ["deconv", "lenet5", files["bomb.png"]]).output


# --- nothing half-written, nothing lost -------------------------------------------------

def test_interrupted_run_leaves_previous_results_intact(tmp_path, samples_dir, monkeypatch):
    model = vizcnn.load_model("lenet5", "fashion-mnist")
    from vizcnn.inputs import load_input
    from vizcnn.models import get_spec

    image, x = load_input(samples_dir / "fashion-bag.png", get_spec("lenet5"))
    out_dir = tmp_path / "run"
    first = write_deconv(OutputDir(out_dir, "deconv"), model, "lenet5", image, x, layers=["c1", "c3"])
    saved = {f: (out_dir / f).read_bytes() for f in [*first["files"], "summary.json"]}

    import vizcnn.reports as reports

    calls = []

    def interrupted(fig, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(fig, path, **kw)

    original = reports.save_figure
    monkeypatch.setattr(reports, "save_figure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_deconv(OutputDir(out_dir, "deconv"), model, "lenet5", image, x, layers=["c1", "c3"], method="guided")
    # summary.json still describes the files that are there; no temporary files remain
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary == json.loads(saved["summary.json"])
    assert sorted(os.listdir(out_dir)) == sorted(saved)
    assert (out_dir / "deconv_c3.png").read_bytes() == saved["deconv_c3.png"]


def test_layer_names_cannot_escape_the_output_folder(tmp_path):
    model = nn.Sequential()
    model.add_module("/tmp/escape", nn.Conv2d(3, 4, 3))  # "/" is allowed in module names
    model.add_module("relu", nn.ReLU())
    image = np.zeros((16, 16, 3), np.float32)
    x = torch.randn(1, 3, 16, 16)
    out = tmp_path / "deep" / "out"
    summary = write_deconv(OutputDir(out, "deconv"), model, "user", image, x, layers=["/tmp/escape"], top=2)
    assert all("/" not in f and not f.startswith(".") for f in summary["files"])
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]


def test_same_inputs_same_numbers(tmp_path, samples_dir):
    runs = []
    for i in range(2):
        result = CliRunner().invoke(cli, ["deconv", "alexnet-2012", str(samples_dir / "coffee.jpg"), "--weights",
                                          "random", "--seed", "3", "--layer", "conv2", "--top", "4", "--json",
                                          "--out", str(tmp_path / f"r{i}")])
        assert result.exit_code == 0, result.output
        runs.append(json.loads(result.output)["layers"])
    assert runs[0] == runs[1]
