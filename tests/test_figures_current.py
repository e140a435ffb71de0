"""The README's figures in docs/img are what docs/make_figures.py draws now.

docs/img/figures.json records, per committed figure, the command's options (defaults
filled in by click), the settings the code resolved (from the run's summary.json: an
occlusion stride left to its default is recorded as the number used), the shipped
weights' digest, and the same settings from a fast run made alongside. This reruns the
commands in fast mode at a low resolution and compares; a changed default (shown below
by changing one on purpose) makes it fail until `python docs/make_figures.py` is run.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"


@pytest.fixture(scope="module")
def make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "docs" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_figures"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("make_figures", None)


@pytest.fixture(scope="module")
def fresh(make_figures, tmp_path_factory):
    """Every figure's command rerun in fast mode at 20 dpi."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs: one thread is fastest on shared cores
    try:
        out = tmp_path_factory.mktemp("figures")
        return out, make_figures.make_figures(out, fast=True, dpi=20, echo=lambda *_: None)
    finally:
        torch.set_num_threads(threads)


def recorded() -> list[dict]:
    return json.loads((IMG / "figures.json").read_text())


def test_figures_json_describes_the_committed_files():
    entries = recorded()
    assert sorted(e["file"] for e in entries) == sorted(p.name for p in IMG.glob("*.png"))
    for e in entries:
        data = (IMG / e["file"]).read_bytes()
        assert len(data) == e["bytes"], f"{e['file']} is not the file figures.json was written with"
        assert list(_png_size(data)) == e["pixels"] and e["dpi"] == 100 and not e["fast"], e["file"]
        assert e["settings"] and e["fast_settings"] and e["options"], e["file"]


def _png_size(data: bytes) -> tuple[int, int]:
    import struct

    return struct.unpack(">II", data[16:24])


def test_the_fast_rerun_writes_every_readme_figure(make_figures, fresh):
    """The same commands, less work: every figure the README shows is written, as a PNG
    under the size limit, with its command and caption."""
    out, entries = fresh
    names = sorted(e["file"] for e in entries)
    assert names == sorted(n for f in make_figures.FIGURES for n in f.keep)
    readme = (ROOT / "README.md").read_text()
    for e in entries:
        data = (out / e["file"]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) <= make_figures.MAX_BYTES, e["file"]
        assert e["command"].startswith("vizcnn ") and e["caption"]
        assert f"docs/img/{e['file']}" in readme, e["file"]
    assert json.loads((out / "figures.json").read_text()) == entries


def test_the_committed_figures_are_what_the_code_draws_now(make_figures, fresh):
    problems = make_figures.stale(recorded(), fresh[1])
    assert not problems, "docs/img is stale; run `python docs/make_figures.py`:\n" + "\n".join(problems)


def test_a_changed_default_makes_the_committed_figures_stale(make_figures, tmp_path, monkeypatch):
    """The check can fail: the occlusion stride's default (the change that once left
    saliency-panel.png stale) and a CLI option's default, each changed on purpose."""
    import vizcnn.methods.occlusion as occlusion
    import vizcnn.methods.saliency as saliency
    from cli.main import cli

    import torch

    monkeypatch.setattr(occlusion, "DEFAULT_STRIDE", occlusion.DEFAULT_STRIDE * 2)
    monkeypatch.setattr(saliency, "DEFAULT_STRIDE", saliency.DEFAULT_STRIDE * 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        changed = make_figures.make_figures(tmp_path, fast=True, dpi=20, only=("occlusion",), echo=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    problems = make_figures.stale(recorded(), changed)
    assert any(p.startswith("occlusion.png: stride was") for p in problems), problems
    assert any(p.startswith("occlusion.png: positions was") for p in problems), problems

    steps = next(p for p in cli.commands["saliency"].params if p.name == "steps")
    monkeypatch.setattr(steps, "default", steps.default + 1)
    entry = next(e for e in recorded() if e["file"] == "saliency-panel.png")
    now = {**entry, "fast": True, "settings": entry["fast_settings"],
           "options": make_figures.options(tuple(entry["command"].split()[1:]))}
    assert make_figures.stale(recorded(), [now]) == [
        f"saliency-panel.png: option steps was {steps.default - 1}, now {steps.default}"]
