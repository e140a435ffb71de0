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
from vizcnn.core.errors import VizcnnError
from vizcnn.io.output import OutputDir
from vizcnn.writers.deconv import write_deconv


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
    from vizcnn.io.inputs import load_input
    from vizcnn.models import get_spec

    image, x = load_input(samples_dir / "fashion-bag.png", get_spec("lenet5"))
    out_dir = tmp_path / "run"
    first = write_deconv(OutputDir(out_dir, "deconv"), model, "lenet5", image, x, layers=["c1", "c3"])
    saved = {f: (out_dir / f).read_bytes() for f in os.listdir(out_dir)}
    assert set(saved) == {*first["files"], "summary.json", ".vizcnn-manifest.json"}

    import vizcnn.writers.deconv as reports

    calls = []

    def interrupted(fig, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(fig, path, **kw)

    original = reports.save_figure
    monkeypatch.setattr(reports, "save_figure", interrupted)
    with pytest.raises(KeyboardInterrupt), OutputDir(out_dir, "deconv") as out:  # leaving the block aborts
        write_deconv(out, model, "lenet5", image, x, layers=["c1", "c3"], method="guided")
    # every file exactly as the first run left it; no staging folder or temporary file remains
    assert {f: (out_dir / f).read_bytes() for f in os.listdir(out_dir)} == saved
    assert os.listdir(tmp_path) == ["run"]


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


# ------------------------------------------------------------ the README's Safety promises (#14)
# One test per promise; each failed on the code before #14.

import resource  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RSS_BOUND = 1.5e9  # bytes
AS_SAFETY_NET = 8 << 30  # a regression fails its test instead of taking the machine down


# The child's own peak: VmHWM, its address space's high-water RSS (kB), which starts afresh at
# exec. Not getrusage(RUSAGE_SELF).ru_maxrss: Linux carries the pre-exec peak over exec, and the
# forked child's pre-exec image counts the parent's whole RSS, so a big pytest parent (~2 GB
# late in the full suite) failed every bound below while each test passed alone.
_REPORT_PEAK = ("import atexit, sys\n"
                "def _vm_hwm():\n"
                "    with open('/proc/self/status') as f:\n"
                "        return next(line.split()[1] for line in f if line.startswith('VmHWM:'))\n"
                "atexit.register(lambda: sys.stderr.write(f'\\nPEAK_RSS {_vm_hwm()}\\n'))\n")


def _python(code: str, *args: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    """Runs ``code`` in a fresh interpreter under an address-space cap; returns the result
    and the child's own peak RSS in bytes (it reports its VmHWM at exit: only what ``code``
    made resident, none of this process's memory)."""

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (AS_SAFETY_NET, AS_SAFETY_NET))

    done = subprocess.run([sys.executable, "-c", _REPORT_PEAK + code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=cap)
    peaks = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_RSS ")]
    assert peaks, f"the child did not report its peak RSS: {done.stderr[-2000:]}"
    return done, int(peaks[-1]) * 1024.0


def test_promise_no_hang_when_workers_fork_after_opencv_used_its_threads(tmp_path):
    # The parent runs OpenCV's thread pool (a big resize), then forks decoding workers:
    # before #14 the workers blocked forever in cv2.setNumThreads.
    script = textwrap.dedent("""
        import sys, numpy as np
        from types import SimpleNamespace
        from vizcnn.io.opencv import cv2
        from vizcnn.io.sources import folder_source, loader
        spec = SimpleNamespace(name="t", input_size=(3, 32, 32), mean=(0, 0, 0), std=(1, 1, 1))
        for i in range(8):
            cv2.imwrite(f"{sys.argv[1]}/{i}.png", np.full((40, 40, 3), i * 20, np.uint8))
        source, big = folder_source(sys.argv[1]), np.random.rand(1500, 1500, 3).astype(np.float32)
        for _ in range(8):
            cv2.resize(big, (2500, 2500))
            assert sum(len(b) for b in loader(source, spec, batch_size=2, num_workers=2)) == 8
        print("ok")
    """)
    done, _ = _python(script, str(tmp_path), timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def _hdr_bomb(path: Path, side: int = 16000) -> Path:
    """A Radiance HDR of side×side pixels in run-length scanlines: ~1 KB per line, 3 GB decoded."""
    runs = b"".join(bytes([128 + min(127, side - x), 100]) for x in range(0, side, 127))
    line = bytes([2, 2, side >> 8, side & 255]) + runs * 4
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {side} +X {side}\n".encode() + line * side)
    return path


@pytest.mark.parametrize("command", ["deconv", "saliency", "sanity", "occlusion", "invariance", "report",
                                     "topk", "dead-filters"])
def test_promise_decode_limits_apply_to_every_command(tmp_path, command):
    (tmp_path / "data").mkdir()
    bomb = _hdr_bomb(tmp_path / "data" / "bomb.hdr") if command in ("topk", "dead-filters") else None
    if bomb is None:
        bomb = _hdr_bomb(tmp_path / "bomb.hdr")
        args = [command, "lenet5", str(bomb)]
    else:  # a list file naming the HDR bomb and a PNM one
        (tmp_path / "data" / "b.pgm").write_bytes(b"P5\n60000 60000\n255\n" + bytes(64))
        (tmp_path / "data" / "list.txt").write_text("bomb.hdr\nb.pgm\n")
        args = [command, "lenet5", str(tmp_path / "data" / "list.txt"), "--workers", "0"]
    code = "import sys; from cli.main import cli; cli(sys.argv[1:], prog_name='vizcnn')"
    done, peak = _python(code, *args, "--weights", "random", "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refusing to decode 16000×16000" in done.stderr, done.stderr
    if command in ("topk", "dead-filters"):
        assert "refusing to decode 60000×60000" in done.stderr and "no readable images (2 skipped)" in done.stderr
    assert peak < RSS_BOUND, f"{command}: peak RSS {peak / 1e9:.2f} GB"
    assert not (tmp_path / "out").exists()


def test_promise_long_thin_image_costs_only_its_crop(tmp_path):
    code = textwrap.dedent("""
        import sys, numpy as np
        from vizcnn.io.opencv import cv2
        cv2.imwrite(sys.argv[1], np.zeros((28, 200000, 3), np.uint8))
        from vizcnn.io.inputs import load_input
        from vizcnn.models import get_spec
        shown, x = load_input(sys.argv[1], get_spec("alexnet"))
        assert shown.shape == (224, 224, 3) and tuple(x.shape) == (1, 3, 224, 224)
        print("ok")
    """)
    done, peak = _python(code, str(tmp_path / "long.png"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert peak < RSS_BOUND, f"peak RSS {peak / 1e9:.2f} GB"


def test_promise_only_regular_files_are_read(tmp_path):
    from vizcnn.core.errors import BadInputError
    from vizcnn.io.imageio import read_image
    from vizcnn.io.sources import open_data
    from vizcnn.models import build_model
    from vizcnn.models.registry import load_checkpoint

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    signal.alarm(20)  # a read that blocks fails the test instead of hanging it
    try:
        for call in (lambda: open_data(fifo), lambda: read_image(fifo), lambda: open_data("/dev/zero"),
                     lambda: load_checkpoint(build_model("lenet5"), fifo), lambda: read_image(tmp_path)):
            with pytest.raises(BadInputError, match="not a regular file|is a directory"):
                call()
    finally:
        signal.alarm(0)


def test_promise_list_files_are_bounded_and_folders_walked_once(tmp_path, samples_dir):
    from vizcnn.core.errors import BadInputError
    from vizcnn.io.sources import MAX_LIST_BYTES, folder_source, list_source

    (tmp_path / "nul.txt").write_bytes(bytes(1000))
    with pytest.raises(BadInputError, match="NUL"):
        list_source(tmp_path / "nul.txt")
    with open(tmp_path / "big.txt", "wb") as f:
        f.truncate(MAX_LIST_BYTES + 1)
    with pytest.raises(BadInputError, match="larger than"):
        list_source(tmp_path / "big.txt")
    (tmp_path / "long.txt").write_text("a" * 5000 + "\n")
    with pytest.raises(BadInputError, match="line 1 is longer"):
        list_source(tmp_path / "long.txt")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfcat.jpg 3\ncamera.png\n")
    assert [Path(p).name for p in list_source(tmp_path / "bom.txt").paths] == ["cat.jpg", "camera.png"]

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes((samples_dir / "cat.jpg").read_bytes())
    (folder / "self").symlink_to(".")
    (folder / "again").symlink_to(".")
    start = time.perf_counter()
    assert len(folder_source(folder)) == 1
    assert time.perf_counter() - start < 5


_RUN = textwrap.dedent("""
    import sys, time
    from vizcnn.io.output import OutputDir
    out = OutputDir(sys.argv[1], "deconv")
    out.path("conv1.png").write_bytes(b"new")
    print("ready", flush=True)
    time.sleep(60)
    out.finish({})
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_promise_an_interrupted_run_leaves_the_previous_results(tmp_path, signum):
    first = OutputDir(tmp_path / "out", "deconv")
    first.path("conv1.png").write_bytes(b"old1")
    first.path("conv2.png").write_bytes(b"old2")
    first.finish({"n": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    child = subprocess.Popen([sys.executable, "-c", _RUN, str(tmp_path / "out")], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    with pytest.raises(Exception):  # the lock: a second run cannot interleave
        OutputDir(tmp_path / "out", "deconv")
    child.send_signal(signum)
    assert child.wait(timeout=60) != 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert os.listdir(tmp_path) == ["out"]  # no staging folder, no .tmp files


def test_promise_only_files_vizcnn_wrote_are_deleted(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "summary.json").write_text(json.dumps({"command": "deconv", "files": ["thesis.tex"]}))
    with pytest.raises(VizcnnError, match="did not write"):
        OutputDir(out, "deconv")
    run = OutputDir(out, "deconv", force=True)
    run.path("conv1.png").write_bytes(b"x")
    run.finish({})
    rerun = OutputDir(out, "deconv", force=True)
    rerun.finish({})
    assert (out / "thesis.tex").read_text() == "years of work"
    assert not (out / "conv1.png").exists()  # ours, vouched for by the manifest's hash


def test_promise_overflowing_activations_and_no_usable_images_exit_2(tmp_path, samples_dir):
    from vizcnn.models import build_model

    model = build_model("lenet5")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3e38)
    torch.save(model.state_dict(), tmp_path / "huge.pt")
    run = CliRunner().invoke(cli, ["topk", "lenet5", str(samples_dir), "--weights", str(tmp_path / "huge.pt"),
                                   "--workers", "0", "--out", str(tmp_path / "a")])
    assert run.exit_code == 2 and "overflow" in run.output and "layer " in run.output, run.output
    assert not (tmp_path / "a").exists()
    for command in ("deconv", "saliency", "occlusion", "report"):  # the single-image commands stop just as early
        (tmp_path / command).mkdir()
        (tmp_path / command / "keep.txt").write_text("an earlier file")
        run = CliRunner().invoke(cli, [command, "lenet5", str(samples_dir / "fashion-bag.png"), "--weights",
                                       str(tmp_path / "huge.pt"), "--out", str(tmp_path / command), "--force"])
        assert run.exit_code == 2 and "NaN or Inf" in run.output and "layer " in run.output, (command, run.output)
        assert [p.name for p in (tmp_path / command).iterdir()] == ["keep.txt"], command
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    run = CliRunner().invoke(cli, ["dead-filters", "lenet5", str(tmp_path / "bad"), "--weights", "random",
                                   "--workers", "0", "--out", str(tmp_path / "b")])
    assert run.exit_code == 2 and "no readable images (1 skipped)" in run.output, run.output
    assert not (tmp_path / "b").exists()


def test_promise_checkpoint_zip_bomb_is_refused_before_inflating(tmp_path):
    from vizcnn.core.errors import BadInputError
    from vizcnn.models import load_model

    path = tmp_path / "bomb.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z, \
            z.open("archive/data/99", "w", force_zip64=True) as entry:
        chunk = bytes(1 << 24)
        for _ in range(64):  # 1 GiB of zeros, about 1 MB deflated
            entry.write(chunk)
    assert path.stat().st_size < 4 << 20
    start = time.perf_counter()
    with pytest.raises(BadInputError, match="refused before inflating"):
        load_model("lenet5", path)
    assert time.perf_counter() - start < 2
