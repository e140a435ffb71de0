"""``vizcnn atlas``: the pass against brute force, the optimised stimuli, resuming, the
site in real headless Chromium, and the README's command."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from tests.conftest import assert_untouched, snapshot
from tests.dataset_worker import SPEC, tiny_model
from vizcnn.core.extract import Extractor
from vizcnn.io.sources import folder_source, load
from vizcnn.methods.stimulus import optimise_units
from vizcnn.writers.atlas import atlas

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
LAYERS = ["conv1", "conv2"]
DEAD = 7  # a conv2 unit that never fires


def atlas_model():
    """tests/dataset_worker.py's tiny model with conv2 unit DEAD silenced (zero weights,
    bias -1/2): a dead unit for the pages and the filter box."""
    model = tiny_model()
    with torch.no_grad():
        model.features[3].weight[DEAD] = 0
        model.features[3].bias[DEAD] = -0.5
    return model


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on shared cores two spinning threads per process cost more than
    they give at these sizes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """24 binary 16×16 PNGs in two class folders (names that need escaping in HTML)."""
    import cv2

    root = tmp_path_factory.mktemp("atlas-data")
    rng = np.random.default_rng(1)
    for i in range(24):
        cls = root / ("<b>&bags" if i % 3 == 0 else "shoes")
        cls.mkdir(exist_ok=True)
        image = (rng.random((16, 16, 3)) < 0.3 + 0.02 * i).astype(np.uint8) * 255
        cv2.imwrite(str(cls / f"img_{i:02d}.png"), image)
    return root


@pytest.fixture(scope="module")
def site(data, tmp_path_factory):
    """The atlas of the tiny model over the data, with 6 optimisation steps."""
    out = tmp_path_factory.mktemp("atlas") / "site"
    model = atlas_model()
    before = snapshot(model)
    summary = atlas(model, data, out, spec=SPEC, layers=LAYERS, top=4, optimize_steps=6, batch_size=5)
    assert_untouched(model, before)
    return out, summary


def _brute(data: Path, layer: str):
    source = folder_source(data)
    x = torch.stack([load(source, i, SPEC)[1] for i in range(len(source))])
    with Extractor(atlas_model(), [layer]) as ex:
        return source, ex.run(x)[layer]


@pytest.mark.parametrize("layer", LAYERS)
def test_pass_equals_brute_force(site, data, layer):
    """Top-k by a full sort (value desc, image, y, x), statistics, top classes by the mean
    per-image maximum and the most similar units by NumPy's correlation."""
    _, summary = site
    source, act = _brute(data, layer)
    n, c, h, w = act.shape
    entry = next(e for e in summary["layers"] if e["layer"] == layer)
    labels = np.array([source.label(i) for i in range(n)])
    maxima = act.flatten(2).amax(2).double().numpy()
    with np.errstate(invalid="ignore"):
        corr = np.corrcoef(maxima.T)
    for u, row in enumerate(entry["units"]):
        a = act[:, u].numpy()
        cand = sorted(((-float(a[i, y, x]), i, y, x) for i in range(n) for y in range(h) for x in range(w)))[:4]
        assert [(win["image"], win["y"], win["x"]) for win in row["winners"]] == [t[1:] for t in cand]
        assert [win["value"] for win in row["winners"]] == pytest.approx([-t[0] for t in cand])
        assert row["firing"] == pytest.approx(float((a > 0).mean()))
        assert row["max"] == pytest.approx(float(a.max()))
        means = [maxima[labels == k, u].mean() for k in range(len(source.classes))]
        best = sorted(range(len(means)), key=lambda k: -means[k])  # ties: the lower class index
        assert [cl["class"] for cl in row["classes"]] == [source.classes[k] for k in best]
        assert [cl["mean"] for cl in row["classes"]] == pytest.approx([means[k] for k in best])
        if np.std(maxima[:, u]) > 0:
            others = [v for v in np.argsort(-np.nan_to_num(corr[u], nan=-2), kind="stable") if v != u]
            others = [v for v in others if np.std(maxima[:, v]) > 0][:len(row["similar"])]
            assert [s["unit"] for s in row["similar"]] == others
            assert [s["correlation"] for s in row["similar"]] == pytest.approx(corr[u, others])
        else:
            assert row["similar"] == []  # nothing correlates with a constant
    dead = [row["unit"] for row in entry["units"] if row["dead"]]
    assert dead == entry["dead_units"]


@pytest.mark.parametrize("layer", LAYERS)  # conv1 through crops, conv2 through whole-image windows
def test_batched_projections_equal_single_ones(data, layer):
    from vizcnn.api import scan
    from vizcnn.core.layers import geometry_key, layer_geometry
    from vizcnn.methods.atlas import project_winners_batched
    from vizcnn.methods.deconv import project

    model, source = atlas_model(), folder_source(data)
    top = scan(model, source, SPEC, topk_layers=[layer], top=3, num_workers=0).topk[layer]
    info = layer_geometry(model, SPEC.input_size)[geometry_key(model, layer)]
    got = project_winners_batched(model, lambda i: load(source, i, SPEC)[1], layer, top, [0, 2, 4], info,
                                  batch_size=4)
    assert got
    for (u, r), (proj, box) in got.items():
        x = load(source, int(top.image[u, r]), SPEC)[1]
        single = project(model, x, layer, u, (int(top.y[u, r]), int(top.x[u, r])))
        t, b, left, right = box
        assert torch.allclose(proj, single[:, t:b, left:right], atol=1e-6), (u, r)
        assert single.abs().sum() == pytest.approx(single[:, t:b, left:right].abs().sum())  # nothing outside


def test_optimisation_is_deterministic():
    model = atlas_model()
    a = optimise_units(model, "conv2", [0, 3, 5], SPEC, steps=5, seed=3, batch_size=2)
    b = optimise_units(model, "conv2", [0, 3, 5], SPEC, steps=5, seed=3, batch_size=3)
    c = optimise_units(model, "conv2", [0, 3, 5], SPEC, steps=5, seed=4, batch_size=3)
    assert np.array_equal(a.images, optimise_units(model, "conv2", [0, 3, 5], SPEC, steps=5, seed=3,
                                                   batch_size=2).images)
    assert np.allclose(a.images, b.images, atol=1e-5)  # a unit's image does not depend on its batch
    assert not np.allclose(a.images, c.images)


def test_grey_stimuli_are_grey():
    s = optimise_units(atlas_model(), "conv1", [0, 1], SPEC, steps=2, grey=True)
    assert s.images.shape == (2, 16, 16, 3)
    assert np.array_equal(s.images[..., 0], s.images[..., 2])


def test_stimuli_drive_their_units_on_the_shipped_alexnet():
    """Each optimised image drives its unit harder than the median of the unit's dataset
    top-9, and harder (relative to each unit's dataset maximum) than most other units."""
    from vizcnn.api import scan
    from vizcnn.io.sources import open_data
    from vizcnn.models import get_spec, load_model
    from vizcnn.methods.stimulus import is_grey

    try:
        source = open_data("fashion-mnist:test", limit=200)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    spec = get_spec("alexnet", "fashion-mnist")
    model = load_model("alexnet", "fashion-mnist")
    assert is_grey(spec)
    top = scan(model, source, spec, topk_layers=["conv3"], top=9, num_workers=0).topk["conv3"]
    units = [u for u in range(12) if top.value[u, 4] > 0][:8]
    s = optimise_units(model, "conv3", units, spec, steps=64, grey=True, batch_size=8)
    own = s.activation[torch.arange(len(units)), torch.tensor(units)]
    assert (own > top.value[units].median(dim=1).values).all(), own
    live = top.value[:, 0] > 0  # a unit that never fires on the data has no scale to compare with
    relative = s.activation[:, live] / top.value[live, 0]
    for j, u in enumerate(units):
        assert (relative[j, int(live[:u].sum())] >= relative[j]).float().mean() > 0.9


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "state" not in p.relative_to(folder).parts
            and p.name not in ("summary.json", ".vizcnn-manifest.json")}


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("seconds", "pass_seconds", "files")}


def test_interrupted_run_resumes_to_the_same_result(site, data, tmp_path):
    """Interrupted while optimising conv2 (after the pass and conv1's projections and
    stimuli were saved), the run leaves the previous atlas as it was; a rerun continues
    from the saved state and publishes what the uninterrupted run did."""
    reference, ref_summary = site
    out = tmp_path / "site"
    atlas(atlas_model(), data, out, spec=SPEC, layers=["conv1"], top=2, optimize=False)
    previous = _tree(out)

    def stop(done, total, what):
        if what == "optimising conv2" and done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atlas(atlas_model(), data, out, spec=SPEC, layers=LAYERS, top=4, optimize_steps=6, batch_size=5,
              progress=stop, force=False)
    assert _tree(out) == previous  # the earlier atlas is untouched
    assert (out / "state" / "stimuli" / "conv1.pt").is_file()
    lines: list[str] = []
    summary = atlas(atlas_model(), data, out, spec=SPEC, layers=LAYERS, top=4, optimize_steps=6, batch_size=5,
                    log=lines.append)
    assert "resumed from the saved state" in lines[0]
    assert any("projections conv2" in line and "resumed" in line for line in lines)
    assert any("optimisation conv1" in line and "resumed" in line for line in lines)
    assert _comparable(summary) == _comparable(ref_summary)
    assert _tree(out) == _tree(reference)


def test_a_killed_command_resumes_to_the_same_site(tmp_path):
    """``kill -9`` during the projections (no handler runs): the rerun of the same command
    continues from the saved pass and layers and publishes what an uninterrupted run does."""
    import signal
    import sys

    args = ["atlas", "alexnet", "samples", "--weights", "fashion-mnist", "--layer", "conv1", "--layer", "conv3",
            "--units", "0-1", "--no-optimize", "--workers", "0"]
    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-m", "cli", *args, "--out", str(killed)], cwd=ROOT,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in child.stderr:
            if "projections conv3" in line:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert (killed / "state" / "pass.pt").is_file() and not (killed / "index.html").exists()
    resumed = CliRunner().invoke(cli, [*args, "--out", str(killed)])
    assert resumed.exit_code == 0, resumed.output
    assert "data pass: resumed" in resumed.output and "projections conv1 (1/2): resumed" in resumed.output
    whole = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    assert _tree(killed) == _tree(tmp_path / "whole")
    a, b = (json.loads((f / "summary.json").read_text()) for f in (killed, tmp_path / "whole"))
    assert _comparable({**a, "out": None}) == _comparable({**b, "out": None})


def spawned(rank: int, world: int, port: int, data: str, out: str) -> None:
    """One rank of a 2-process run, with the environment torchrun gives."""
    from vizcnn.io.output import OutputDir
    from vizcnn.methods.scan import distributed
    from vizcnn.writers.atlas import write_atlas

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed(torch.device("cpu")):
        folder = OutputDir(out, "atlas") if rank == 0 else None
        result = write_atlas(folder, atlas_model(), "tiny", folder_source(data), SPEC, layers=LAYERS, top=4,
                             optimize=False, batch_size=5, num_workers=0)
        assert (result is None) == (rank != 0)


def test_two_ranks_equal_one_process(site, data, tmp_path, monkeypatch):
    """Under torchrun (here its environment, two gloo ranks): the same winners, statistics,
    top classes and similar units as one process."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(spawned, args=(2, port, str(data), str(tmp_path / "ranks")), nprocs=2, join=True)
    merged = json.loads((tmp_path / "ranks" / "summary.json").read_text())
    _, single = site
    assert merged["world_size"] == 2 and merged["images"] == single["images"] == 24
    for a, b in zip(merged["layers"], single["layers"]):
        assert a["dead_units"] == b["dead_units"]
        for ua, ub in zip(a["units"], b["units"]):
            assert [w["image"] for w in ua["winners"]] == [w["image"] for w in ub["winners"]]
            assert [(k, ua[k]) for k in ("firing", "mean", "max")] == [(k, pytest.approx(ub[k])) for k in
                                                                      ("firing", "mean", "max")]
            assert [c["class"] for c in ua["classes"]] == [c["class"] for c in ub["classes"]]
            assert [s["unit"] for s in ua["similar"]] == [s["unit"] for s in ub["similar"]]


# --------------------------------------------------------------------------- the site in Chromium


def _links(page: Path) -> list[str]:
    text = page.read_text()
    return re.findall(r'(?:href|src)="([^"#]+)', text)


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=20000", *extra, "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)


HARNESS = """<!DOCTYPE html><html><body><pre id="out">waiting</pre><script>
var pages = %s, results = {}, left = pages.length;
pages.forEach(function (p) {
  var f = document.createElement("iframe"); f.width = 1200; f.height = 900; f.src = p;
  f.onload = function () {
    var d = f.contentDocument, imgs = Array.prototype.slice.call(d.images);
    imgs.forEach(function (i) { i.loading = "eager"; });
    Promise.all(imgs.map(function (i) { return i.decode().then(function () { return null; },
        function () { return i.getAttribute("src"); }); })).then(function (bad) {
      var entry = {title: d.title, images: imgs.length, broken: bad.filter(function (b) { return b; }),
                   shown: d.body.dataset.shown || null, hidden: d.querySelectorAll(".unit[hidden]").length};
      var box = d.getElementById("filter");
      if (box && p.indexOf("#") < 0) {  // typing into the box
        box.value = "dead"; box.dispatchEvent(new Event("input")); entry.typed = d.body.dataset.shown;
      }
      results[p] = entry;
      if (--left === 0) document.getElementById("out").textContent = JSON.stringify(results);
    });
  };
  document.body.appendChild(f);
});
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_the_site_in_headless_chromium(site, tmp_path):
    """Every page loads in Chromium from file:// without a console error and every image
    on it decodes; every link and image path exists inside the site; the filter box
    filters (by unit number, dead/alive and class, from the URL's #q=)."""
    out, summary = site
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html") if "state" not in p.parts)
    assert "index.html" in pages and len(pages) == 1 + 2 + sum(len(e["units"]) for e in summary["layers"])
    for page in pages:  # every reference is a relative file of the site
        for link in _links(out / page):
            assert not re.match(r"[a-z]+:", link), (page, link)
            assert (out / page).parent.joinpath(link).resolve().is_file(), (page, link)
    text = (out / "index.html").read_text()
    assert "&lt;b&gt;&amp;bags" in text and "<b>&bags" not in text  # class names are escaped
    total = sum(len(e["units"]) for e in summary["layers"])
    dead = sum(1 for e in summary["layers"] for u in e["units"] if u["dead"])
    bags = sum(1 for e in summary["layers"] for u in e["units"] if u["classes"] and "bags" in u["classes"][0]["class"])
    three_alive = sum(1 for e in summary["layers"] for u in e["units"] if u["unit"] == 3 and not u["dead"])
    queries = {"": total, "dead": dead, "alive": total - dead, "3": 2, "3 alive": three_alive, "BAGS": bags, "zzz": 0}
    index = (out / "index.html").as_uri()
    filtered = {f"{index}#q={q.replace(' ', '%20')}": n for q, n in queries.items() if q}
    urls = [(out / p).as_uri() for p in pages] + list(filtered)
    harness = tmp_path / "harness.html"
    harness.write_text(HARNESS % json.dumps(urls))
    for attempt in range(2):  # headless Chromium now and then dumps before its last iframe reports: try once more
        run = _chromium(harness.as_uri(), tmp_path / f"profile{attempt}", "--allow-file-access-from-files")
        found = re.search(r'<pre id="out">(.*?)</pre>', run.stdout, re.S)
        if found and found.group(1) != "waiting":
            break
    assert found and found.group(1) != "waiting", run.stderr[-2000:]
    results = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                         .replace("&gt;", ">"))
    assert len(results) == len(urls)
    for url, r in results.items():
        assert r["broken"] == [] and r["images"] > 0 and r["title"], (url, r)
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
               or "Failed to load" in line]
    assert console == [], console
    assert int(results[index]["shown"]) == total and results[index]["hidden"] == 0
    assert int(results[index]["typed"]) == dead == 1  # conv2's silenced unit
    for url, expected in filtered.items():  # the filter box, as the URL's #q= fills it in
        assert int(results[url]["shown"]) == expected, url
        assert results[url]["hidden"] == total - expected, url


# --------------------------------------------------------------------------- the command


def test_readme_command_runs(tmp_path):
    """The README's atlas command (on a few images, units and steps), end to end."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"```shell\n(vizcnn atlas [^\n]+)\n", readme)
    assert found, "the README shows the atlas command"
    args = shlex.split(found.group(1))[1:]
    args[args.index("--out") + 1] = str(tmp_path / "atlas")
    args += ["--limit", "40", "--layer", "conv2", "--units", "0-3", "--optimize-steps", "4", "--workers", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "atlas: [1/4] data pass" in result.output and "atlas: [4/4] rendering done" in result.output
    summary = json.loads((tmp_path / "atlas" / "summary.json").read_text())
    assert summary["command"] == "atlas" and summary["layers"][0]["layer"] == "conv2"
    unit = summary["layers"][0]["units"][0]
    assert unit["classes"] and unit["stimulus"]["file"] and unit["winners"][0]["projection"]
    for name in ("index.html", "layers/conv2.html", "units/conv2-3.html", unit["thumb"], unit["stimulus"]["file"]):
        assert (tmp_path / "atlas" / name).is_file(), name


@pytest.mark.parametrize("args, message", [
    (["--layer", "fc6"], "needs conv layers"), (["--layer", "nope"], "nope"), (["--units", "0-999"], "out of range"),
    (["--top", "0"], "0"), (["--optimize-steps", "0"], "0")])
def test_bad_arguments_are_one_line_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["atlas", "alexnet", "samples", "--weights", "fashion-mnist", "--limit", "3",
                                      "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()  # nothing left behind


def test_unreadable_data_is_a_one_line_error_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    result = CliRunner().invoke(cli, ["atlas", "alexnet", str(bad), "--weights", "fashion-mnist", "--workers", "0",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "no readable images" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
