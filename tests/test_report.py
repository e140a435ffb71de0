"""vizcnn report: one folder with every step, an index.html that references only files that
exist (and renders in a browser), summary.json with every number, --format/--dpi/--quiet,
bad input refused before any work; and docs/make_figures.py regenerating the README's figures."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_untouched, snapshot

from cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
BAG = str(ROOT / "samples" / "fashion-bag.png")
# Reduced settings: the same steps on less work (two layers, 3 units, 4 IG steps).
SMALL = ["--layer", "c1", "--layer", "c3", "--top", "4", "--units", "3", "--steps", "4"]


@pytest.fixture(scope="module")
def one_thread():
    """LeNet-5's tensors are tiny: on a busy 2-core machine torch's thread pool costs more
    than it saves (the report runs ~4× faster on one thread here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lenet_report(tmp_path_factory, one_thread):
    """The report of the trained sample LeNet-5 on the bag, with the dataset steps over samples/."""
    out = tmp_path_factory.mktemp("report") / "lenet5"
    result = CliRunner().invoke(cli, ["report", "lenet5", BAG, "--weights", "fashion-mnist", "--data", "samples",
                                      *SMALL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result, json.loads((out / "summary.json").read_text())


class Links(HTMLParser):
    """Every src/href of a page, the ids it defines, and the tags it uses."""

    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href"):
                self.links.append((tag, value))
            if name == "id":
                self.ids.add(value)


def parse(path: Path) -> Links:
    page = Links()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def check_links(folder: Path) -> Links:
    """Every src/href of index.html is a relative path to a file in the folder (or an
    in-page #anchor that exists): no absolute URL, no absolute path, no '..'."""
    page = parse(folder / "index.html")
    assert page.links
    for tag, link in page.links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc, f"absolute URL {link!r}"
        if link.startswith("#"):
            assert link[1:] in page.ids, f"anchor {link!r} has no target"
            continue
        path = unquote(parts.path)
        assert path and not path.startswith("/") and ".." not in Path(path).parts, f"bad path {link!r}"
        assert (folder / path).is_file(), f"<{tag}> {link!r} does not exist"
    assert not page.tags & {"script", "iframe", "link"}, "index.html must need no scripts or external resources"
    return page


def test_report_writes_every_step(lenet_report):
    out, result, summary = lenet_report
    assert summary["command"] == "report" and summary["errors"] == {}
    assert summary["steps_run"] == ["card", "filters", "deconv", "saliency", "sanity", "occlusion", "invariance",
                                   "dataset"]
    expected = ["index.html", "summary.json", "input.png", "filters/filters.png", "filters/spectra.png",
                "filters/spectra_summary.png", "deconv/deconv_c1.png", "deconv/deconv_c3.png", "saliency/panel.png",
                "saliency/gradcam_map.png", "saliency/occlusion_overlay.png", "sanity/sanity_maps.png",
                "sanity/sanity_curves.png", "occlusion/occlusion.png", "invariance/invariance_rotate.png",
                "dataset/topk_c1_p1.png",
                "dataset/topk_c3_p1.png", "dataset/dead_filters.png"]
    for name in expected:
        assert (out / name).is_file(), name
    # the figure standard: every figure at most 12 inches wide at the report's dpi
    from PIL import Image

    for path in out.rglob("*.png"):
        name = str(path.relative_to(out))
        if name != "input.png":
            with Image.open(path) as im:
                assert im.width <= 12 * summary["dpi"] + 1, f"{name} is {im.width / summary['dpi']:.1f} in wide"
    # zero-valued top-k winners are counted per layer
    for layer in summary["dataset"]["layers"]:
        zeros = sum(1 for u in layer["units"] for w in u["winners"] if not w["value"] > 0)
        assert layer["zero_winners"] == zeros
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    # every file listed, nothing else (but vizcnn's own manifest)
    assert on_disk == sorted({*summary["files"], "summary.json", ".vizcnn-manifest.json"})
    for name in on_disk:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # progress is drawn on a terminal only: stderr is not one here, so no step lines; the result on stdout
    assert "[1/8]" not in result.stderr and "[8/8]" not in result.stderr
    assert "index.html" in result.stdout and "[1/8]" not in result.stdout


def test_summary_holds_the_numbers(lenet_report):
    from vizcnn.io.inputs import load_input
    from vizcnn.models import get_spec, load_model

    out, _, s = lenet_report
    card = s["card"]
    assert card["params"] == 60_000 == card["published_params"]
    geometry = {c["layer"]: (c["kernel"], c["stride"], c["receptive_field"], c["output"]) for c in card["convs"]}
    assert geometry == {"c1": ([5, 5], [1, 1], [5, 5], [6, 28, 28]), "c3": ([5, 5], [1, 1], [14, 14], [16, 10, 10]),
                        "c5": ([5, 5], [1, 1], [32, 32], [120, 1, 1])}
    assert card["convs"][0]["params"] == 6 * 25 + 6  # c1: 6 filters 5×5 and their biases
    # the prediction, against an independent forward of the same checkpoint
    model = load_model("lenet5", "fashion-mnist")
    _, x = load_input(BAG, get_spec("lenet5"))
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[0]
    assert s["saliency"]["target"] == int(p.argmax()) == 8 and s["saliency"]["class_name"] == "Bag"
    assert s["saliency"]["probability"] == pytest.approx(float(p[8]), rel=1e-5)
    assert s["occlusion"]["probability_unoccluded"] == pytest.approx(float(p[8]), rel=1e-5)
    assert set(s["saliency"]["methods"]) == {"gradient", "deconvnet", "guided", "integrated-gradients", "smoothgrad",
                                             "gradcam", "occlusion"}
    assert s["saliency"]["methods"]["integrated-gradients"]["steps"] == 4
    assert set(s["sanity"]["verdicts"]) == {"gradient", "guided", "gradcam"}
    assert [e["layer"] for e in s["deconv"]["layers"]] == ["c1", "c3"]
    assert all(len(e["units"]) == 4 for e in s["deconv"]["layers"][1:])
    images = len([p for p in (ROOT / "samples").iterdir() if p.suffix in (".png", ".jpg")])
    assert s["dataset"]["images"] == images
    dead = s["dataset"]["dead_filters"]["layers"]
    assert [(e["layer"], e["filters"]) for e in dead] == [("c1", 6), ("c3", 16)]
    assert s["filters"]["filters"] == 6 and s["filters"]["layer"] == "c1"
    assert set(s["timings_s"]) == {*s["steps_run"], "total"}
    # file references inside the step summaries point at the files, relative to the report folder
    assert s["saliency"]["panel"] == "saliency/panel.png" and s["occlusion"]["figure"] == "occlusion/occlusion.png"
    assert all(e["file"].startswith("deconv/") for e in s["deconv"]["layers"])
    # and the page shows the key numbers
    page = (out / "index.html").read_text()
    for text in ("Bag", f"{float(p[8]):.3g}", "60,000", "c3 0/16" if dead[1]["dead"] == 0 else "c3 ", "passes"):
        assert text in page, text


def test_index_references_only_existing_files(lenet_report):
    out, _, s = lenet_report
    page = check_links(out)
    shown = {link for tag, link in page.links if tag == "img"}
    for must in ("input.png", "saliency/panel.png", "occlusion/occlusion.png", "sanity/sanity_maps.png",
                 "filters/filters.png", "deconv/deconv_c3.png", "dataset/topk_c1_p1.png", "dataset/dead_filters.png"):
        assert must in shown, must
    assert {"overview", "card", "filters", "deconv", "saliency", "sanity", "occlusion", "invariance", "dataset"} <= page.ids


def test_index_renders_in_headless_chromium(lenet_report, tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    out, _, _ = lenet_report
    shot = tmp_path / "shot.png"
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           (out / "index.html").resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    from vizcnn.io.imageio import read_image

    image = read_image(shot)
    assert image.shape[:2] == (2000, 1280)
    grey = image.mean(axis=2)
    assert grey.std() > 0.05, "the screenshot is blank"
    # the input image, the tables and the figures: many distinct grey levels, dark text on light ground
    assert len(np.unique(np.round(grey * 255))) > 50 and (grey < 0.3).mean() > 0.005


def test_svg_dpi_and_quiet_leave_the_model_untouched(tmp_path, one_thread, monkeypatch):
    """--format svg writes every figure as SVG (and index.html shows them), --quiet prints
    no progress on stderr (LeNet-5's tanh still gets its activation warnings, which are
    also in summary.json), and the model the command runs is left exactly as it was."""
    import vizcnn.models
    from vizcnn.models import load_model

    model = load_model("lenet5", "fashion-mnist")
    before = snapshot(model)
    monkeypatch.setattr(vizcnn.models, "load_model", lambda *a, **k: model)
    out = tmp_path / "svg"
    result = CliRunner().invoke(cli, ["report", "lenet5", BAG, "--weights", "fashion-mnist", "--layer", "c1",
                                      "--top", "2", "--steps", "2", "--format", "svg", "--dpi", "50", "--quiet",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert result.stderr == "".join(f"warning: {w}\n" for w in summary["activation_warnings"])
    assert summary["format"] == "svg" and summary["dpi"] == 50 and "dataset" not in summary
    figures = [f for f in summary["files"] if f not in ("index.html", "input.png")]
    assert figures and all(f.endswith(".svg") for f in figures)
    assert all((out / f).read_text()[:300].lstrip().startswith(("<?xml", "<svg")) for f in figures)
    page = check_links(out)
    assert "saliency/panel.svg" in {link for tag, link in page.links if tag == "img"}
    assert_untouched(model, before)


def test_figure_dpi_sets_every_figure(tmp_path):
    from matplotlib.figure import Figure

    from vizcnn.core.errors import BadArgumentError
    from vizcnn.io.imageio import figure_dpi, image_size, save_figure

    fig = Figure(figsize=(2, 1))
    save_figure(fig, tmp_path / "a.png")
    with figure_dpi(50):
        save_figure(fig, tmp_path / "b.png")
        save_figure(fig, tmp_path / "c.png", dpi=30)  # an explicit dpi wins
    save_figure(fig, tmp_path / "d.png")  # back to the default after the block
    sizes = [image_size((tmp_path / f"{n}.png").read_bytes()) for n in "abcd"]
    assert sizes == [(200, 100), (100, 50), (60, 30), (200, 100)]
    with pytest.raises(BadArgumentError):
        with figure_dpi(0):
            pass


def test_a_rerun_removes_the_earlier_runs_files(tmp_path):
    """An earlier report's files in subfolders that this run does not write are removed
    (the output folder holds one run); a file the user added needs --force and is kept."""
    from vizcnn.core.errors import BadInputError
    from vizcnn.io.output import OutputDir
    from vizcnn.writers.report import StepFolder

    first = OutputDir(tmp_path / "r", "report")
    step = StepFolder(first, "dataset", "png")
    step.path("old.png").write_bytes(b"x")
    StepFolder(first, "deconv", "png").path("deconv_c1.png").write_bytes(b"x")
    first.finish({})
    (tmp_path / "r" / "dataset" / "mine.txt").write_text("user file")
    with pytest.raises(BadInputError, match="mine.txt"):
        OutputDir(tmp_path / "r", "report")
    second = OutputDir(tmp_path / "r", "report", force=True)
    StepFolder(second, "deconv", "svg").path("deconv_c1.png").write_bytes(b"y")
    second.finish({})
    assert not (tmp_path / "r" / "dataset" / "old.png").exists()
    assert (tmp_path / "r" / "dataset" / "mine.txt").read_text() == "user file"
    assert not (tmp_path / "r" / "deconv" / "deconv_c1.png").exists()
    assert (tmp_path / "r" / "deconv" / "deconv_c1.svg").read_bytes() == b"y"


@pytest.mark.parametrize("args, message", [
    (["lenet5", "missing.png"], "no such file"),
    (["lenet5", "{readme}"], "cannot decode"),
    (["lenet-5", BAG], "lenet5"),
    (["lenet5", BAG, "--data", "no/such/folder"], "no such file or folder"),
    (["lenet5", BAG, "--layer", "conv9"], "conv9"),
    (["lenet5", BAG, "--format", "jpg"], "jpg"),
    (["lenet5", BAG, "--limit", "3"], "--limit applies to --data"),
])
def test_bad_input_is_one_line_exit_2_and_no_folder(tmp_path, args, message):
    args = [a.replace("{readme}", str(ROOT / "samples" / "README.md")) for a in args]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["report", *args, "--weights", "fashion-mnist", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert message in result.stderr and "Traceback" not in result.output
    assert len([line for line in lines if line.startswith("Error")]) == 1
    assert not out.exists()


def test_progress_is_a_bar_on_a_terminal_and_nothing_elsewhere_or_when_quiet(monkeypatch, capsys):
    import io

    from cli.report import _Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for quiet, stream, expected in ((False, io.StringIO(), ""), (True, Terminal(), ""),
                                    (False, Terminal(), "vizcnn report")):
        monkeypatch.setattr(sys, "stderr", stream)
        progress = _Progress(quiet)
        progress(1, 3, "a")
        progress(2, 3, "b")
        progress.close()
        text = stream.getvalue()
        assert (expected in text) if expected else text == ""
        if stream.isatty() and not quiet:
            assert "[1/3]" not in text and "3/3" in text  # a bar, not lines
