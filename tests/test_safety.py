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
import stat  # noqa: E402
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


# Bombs of the issue-25 table, made in milliseconds: every compressed stream is one flushed
# 1 MiB block of zeros repeated, and every TIFF strip points at the same compressed strip.

def _zeros_zlib(n: int) -> bytes:
    """A zlib stream inflating to ``n`` zero bytes, built without compressing ``n`` bytes."""
    def raw(size):
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(bytes(size)) + c.flush(zlib.Z_FULL_FLUSH) if size else b""
    chunk = 1 << 20
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    return b"\x78\xda" + raw(chunk) * (n // chunk) + raw(n % chunk) + end + struct.pack(">I", ((n % 65521) << 16) | 1)


def _png16_rgba_bomb(path: Path, side: int = 6324) -> Path:
    """16-bit RGBA PNG of side² zeros: 311 KB on disk, 320 MB decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    path.write_bytes(_PNG + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", _zeros_zlib((1 + side * 8) * side))
                     + _png_chunk(b"IEND", b""))
    return path


_PNG = b"\x89PNG\r\n\x1a\n"


def _tiff_bomb(path: Path, width: int = 6324, height: int = 6324, *, tile: int | None = None) -> Path:
    """Deflate float64 RGBA TIFF of zeros: one-row strips all pointing at one compressed row
    (6324²: 51 KB, 1.28 GB decoded), or one tile of ``tile``² (a 16×16 image, 1 GB tile)."""
    spp, sample = 4, 8
    data = _zeros_zlib((tile * tile if tile else width) * spp * sample)
    n = 1 if tile else height
    blob = bytearray(data)

    def array(code, values):
        at = 8 + len(blob)
        blob.extend(struct.pack("<" + code * len(values), *values))
        return at

    bits, formats = array("H", [64] * spp), array("H", [3] * spp)
    offsets, counts = (8, len(data)) if n == 1 else (array("I", [8] * n), array("I", [len(data)] * n))
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, spp, bits), (259, 3, 1, 8), (262, 3, 1, 2),
            (277, 3, 1, spp), (284, 3, 1, 1), (338, 3, 1, 2), (339, 3, spp, formats)]
    tags += ([(322, 4, 1, tile), (323, 4, 1, tile), (324, 4, n, offsets), (325, 4, n, counts)] if tile else
             [(273, 4, n, offsets), (278, 4, 1, 1), (279, 4, n, counts)])
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in sorted(tags):
        ifd += (struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1
                else struct.pack("<HHII", tag, kind, count, value))
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8 + len(blob)) + bytes(blob) + ifd + bytes(4))
    return path


def _bomb_files(folder: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, the refusal its decode gets; None: decoded, within the budgets)."""
    from vizcnn.io.opencv import cv2

    webp, jpeg = folder / "lossless.webp", folder / "big.jpg"
    webp.write_bytes(cv2.imencode(".webp", np.zeros((4800, 4800, 4), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])[1])
    jpeg.write_bytes(cv2.imencode(".jpg", np.zeros((6324, 6324, 3), np.uint8))[1])
    return {
        "float64 RGBA deflate TIFF 6324²": (_tiff_bomb(folder / "f64.tiff"), "6324×6324×4 samples of 8 bytes"),
        "HDR 6324²": (_hdr_bomb(folder / "bomb.hdr", 6324), "6324×6324×3 samples of 4 bytes"),
        "HDR 16000²": (_hdr_bomb(folder / "huge.hdr"), "refusing to decode 16000×16000"),
        "16-bit RGBA PNG 6324²": (_png16_rgba_bomb(folder / "rgba16.png"), "6324×6324×4 samples of 2 bytes"),
        "16×16 TIFF, one 5664² float64 tile": (_tiff_bomb(folder / "tile.tiff", 16, 16, tile=5664),
                                               "1026588672-byte tile or strip buffer"),
        "lossless WebP 4800²": (webp, None),
        "baseline JPEG 6324² (one more)": (jpeg, None),
    }


_MEASURE = textwrap.dedent("""
    import json, sys
    from cli.main import cli
    def status(key):
        with open('/proc/self/status') as f:
            return int(next(line.split()[1] for line in f if line.startswith(key))) * 1024
    for args in json.loads(sys.argv[1]):
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # the peak (VmHWM) starts again from the current RSS
        try:
            cli(args, prog_name='vizcnn', standalone_mode=False)
            code = 0
        except SystemExit as e:
            code = e.code
        except Exception as e:  # a vizcnn error: its one line
            code = str(e)
        print(json.dumps({"args": args, "code": code, "peak": status('VmHWM:')}), flush=True)
""")


def test_promise_decode_budget_in_bytes_and_seconds_in_every_command(tmp_path):
    """Every bomb of the issue's table plus one more (a 40-megapixel JPEG, decoded: its one float
    copy is at the input size) through every command that reads images: each refused from its
    header or decoded within the byte budget, each run under 1.5 GB peak RSS (the child's own
    VmHWM, reset before each run). Before the budgets: 2.5-4.7 GB."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure each run's peak")
    bombs = _bomb_files(tmp_path)
    (tmp_path / "list.txt").write_text("".join(f"{p.name}\n" for p, _ in bombs.values()))
    missing = str(tmp_path / "no-such-weights.pt")  # single-image commands read the image, then stop here
    single = [[c, "lenet5", str(p), "--weights", missing, "--out", str(tmp_path / "out")]
              for c in ("deconv", "saliency", "sanity", "occlusion", "invariance", "report") for p, _ in bombs.values()]
    dataset = [[c, "lenet5", str(tmp_path / "list.txt"), "--weights", "random", "--workers", "0", "--out",
                str(tmp_path / f"out-{c}")] for c in ("topk", "dead-filters")]
    children = [subprocess.Popen([sys.executable, "-c", _MEASURE, json.dumps(runs)], cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (AS_SAFETY_NET,) * 2))
                for runs in (single[::2] + dataset[:1], single[1::2] + dataset[1:])]  # one per core
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-2000:]
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(results) == len(single) + len(dataset)
    by_file = {str(p): (name, refusal) for name, (p, refusal) in bombs.items()}
    for r in results:
        command, target = r["args"][0], r["args"][2]
        assert r["peak"] < RSS_BOUND, f"{command} {target}: peak RSS {r['peak'] / 1e9:.2f} GB"
        if command in ("topk", "dead-filters"):
            assert r["code"] == 0, r
            continue
        name, refusal = by_file[target]
        assert "\n" not in str(r["code"]), r
        assert (refusal or "no-such-weights.pt") in str(r["code"]), (command, name, r["code"])
    for c in ("topk", "dead-filters"):  # the two decodable ones used, every other one skipped
        summary = json.loads((tmp_path / f"out-{c}" / "summary.json").read_text())
        assert summary["images"] == 2 and summary["skipped"] == len(bombs) - 2, summary


def test_break_06_decoding_is_bounded_in_time(tmp_path, samples_dir, monkeypatch):
    """A progressive JPEG of 100,000 empty scans (211 s in deconv before) is refused from its
    bytes; a decode past the wall-clock budget is refused in a single-image command and skipped
    in a dataset pass, each in one line."""
    import vizcnn.io.imageio as imageio
    from vizcnn.core.errors import BadInputError
    from vizcnn.io.opencv import cv2

    jpeg = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    last_scan = jpeg.rindex(b"\xff\xda")
    header_len = struct.unpack(">H", jpeg[last_scan + 2:last_scan + 4])[0]
    empty_scan = jpeg[last_scan:last_scan + 2 + header_len]
    (tmp_path / "scans.jpg").write_bytes(jpeg[:-2] + empty_scan * 100_000 + b"\xff\xd9")
    start = time.perf_counter()
    with pytest.raises(BadInputError, match=r"JPEG of 1000\d\d scans"):
        imageio.read_image(tmp_path / "scans.jpg")
    assert time.perf_counter() - start < 2

    big = tmp_path / "data" / "big.jpg"  # noise: about 0.1 s to decode; the small PNG, microseconds
    big.parent.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)
    big.write_bytes(cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    (tmp_path / "data" / "small.png").write_bytes(cv2.imencode(".png", noise[:64, :64])[1].tobytes())
    monkeypatch.setattr(imageio, "DECODE_SECONDS", 0.02)
    run = CliRunner().invoke(cli, ["deconv", "lenet5", str(big), "--weights", "random", "--out", str(tmp_path / "a")])
    assert run.exit_code == 2 and "decode time budget" in run.output, run.output
    assert len(run.output.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    run = CliRunner().invoke(cli, ["dead-filters", "lenet5", str(tmp_path / "data"), "--weights", "random",
                                   "--workers", "0", "--json", "--out", str(tmp_path / "b")])
    assert run.exit_code == 0, run.output
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["images"] == 1 and summary["skipped"] == 1, summary
    assert run.exit_code == 0, run.output


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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
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


# ------------------------------------------------------------------ promises that hold under attack (#25)

def _tree(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``, links not followed: (kind, mode, mtime_ns, content or target)."""
    found = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(here) / name
            st = os.lstat(path)
            what = (os.readlink(path) if stat.S_ISLNK(st.st_mode) else path.read_bytes() if stat.S_ISREG(st.st_mode)
                    else None)
            found[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                                  None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns, what)
    return found


def _users_things(out: Path) -> None:
    """What a user keeps in a folder: a private folder, empty folders (one nested), a link, a
    FIFO, a dangling link, a file with an old date."""
    (out / "private").mkdir(mode=0o700)
    os.chmod(out / "private", 0o700)
    (out / "private" / "key.txt").write_text("secret")
    (out / "empty").mkdir()
    (out / "Downloads" / "inner").mkdir(parents=True)
    (out / "link").symlink_to("/etc/hostname")
    (out / "dangling").symlink_to("nowhere")
    os.mkfifo(out / "fifo")
    (out / "notes.txt").write_text("")
    os.utime(out / "notes.txt", ns=(10**18, 10**18))


def _run(out: Path, command: str = "deconv", *, force: bool = False, files=("conv1.png",)) -> dict:
    run = OutputDir(out, command, force=force)
    for name in files:
        run.path(name).write_bytes(name.encode())
    return run.finish({})


def test_promise_the_output_folder_never_loses_a_users_entry(tmp_path):
    import stat as stat_module

    old_umask = os.umask(0o022)
    try:
        out = tmp_path / "out"
        _run(out, files=("conv1.png", "sub/grid.png"))
        assert stat_module.S_IMODE(os.stat(out).st_mode) == 0o755  # the user's umask, not mkdtemp's 0700
        os.chmod(out, 0o2775)
        _users_things(out)
        mine = {k: v for k, v in _tree(out).items() if k.split("/")[0] in
                ("private", "empty", "Downloads", "link", "dangling", "fifo", "notes.txt")}
        with pytest.raises(VizcnnError, match="did not write"):
            OutputDir(out, "deconv")
        _run(out, force=True, files=("conv2.png",))
        after = _tree(out)
        assert {k: after[k] for k in mine} == mine  # every entry of the user's, with mode and times
        assert stat_module.S_IMODE(os.stat(out).st_mode) == 0o2775
        assert "conv1.png" not in after and "sub" not in after and "conv2.png" in after  # vizcnn's own: replaced
    finally:
        os.umask(old_umask)


def test_promise_a_forged_manifest_is_a_foreign_file(tmp_path):
    import hashlib

    from vizcnn.io.output import MANIFEST, run_command, secret_path

    assert str(secret_path()).startswith(os.environ["VIZCNN_CONFIG_DIR"])  # the tests never touch the real home
    assert stat.S_IMODE(os.stat(_secret_made(tmp_path)).st_mode) == 0o600
    out = tmp_path / "shared"
    out.mkdir()
    (out / "photo.jpg").write_bytes(b"a photo")
    (out / "notes.txt").write_text("")
    forged = {"version": 2, "command": "deconv", "dirs": [], "kept": [],
              "files": {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in ("photo.jpg", "notes.txt")}}
    for extra in ({}, {"hmac": "0" * 64}):
        (out / MANIFEST).write_text(json.dumps({**forged, **extra}))
        assert run_command(out) is None
        with pytest.raises(VizcnnError, match="did not write"):
            OutputDir(out, "deconv")
    _run(out, force=True)
    assert (out / "photo.jpg").read_bytes() == b"a photo" and (out / "notes.txt").exists()
    assert run_command(out) == "deconv"  # vizcnn's own manifest verifies


def _secret_made(tmp_path) -> Path:
    from vizcnn.io.output import secret_path

    _run(tmp_path / "first")
    return secret_path()


_SLOW_CLI = textwrap.dedent("""
    import sys, time
    import vizcnn.writers.deconv as writer
    def slow(*a, **k):  # the run is in the middle of writing its figures when the signal comes
        print("writing", flush=True)
        time.sleep(60)
    writer.save_figure = slow
    from cli.main import cli
    *outs, last = sys.argv[1:]
    args = ["deconv", "lenet5", "samples/fashion-bag.png", "--weights", "random", "--layer", "c1", "--out"]
    for out in outs:  # SIGTERM, SIGHUP, SIGQUIT: the same command run again in this process
        try:
            cli([*args, out], prog_name="vizcnn")
        except SystemExit as e:
            print(f"exit {e.code}", flush=True)
    cli([*args, last], prog_name="vizcnn")  # Ctrl-C last: this process's own exit code
""")


def test_promise_signals_exit_128_plus_the_signal_and_leave_out_as_it_was(tmp_path):
    """SIGTERM, SIGHUP, SIGQUIT and Ctrl-C (SIGINT) sent to a running vizcnn command: exit
    128 + the signal (the process exits 130 for Ctrl-C), one vizcnn line saying --out is
    unchanged, the old --out intact, no staging folder left."""
    sigs = [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT]
    outs = [tmp_path / f"out-{sig.name}" for sig in sigs]
    before = []
    for out in outs:
        _run(out, "deconv", files=("old.png",))
        before.append(_tree(out))
    child = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *map(str, outs)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    for sig in sigs:
        assert child.stdout.readline().strip() == "writing", child.stderr.read()
        child.send_signal(sig)
        if sig != signal.SIGINT:
            assert child.stdout.readline().strip() == f"exit {128 + sig}", (sig, child.stderr.read())
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    said = [line for line in err.splitlines() if line.startswith("vizcnn: interrupted")]
    assert said == [f"vizcnn: interrupted ({sig.name}); nothing was written: --out is unchanged" for sig in sigs], err
    assert "Traceback" not in err and "Aborted" not in err, err
    assert [_tree(out) for out in outs] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(out.name for out in outs)


def test_promise_ctrl_c_in_the_api_propagates_after_cleanup(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), OutputDir(out, "deconv") as run:
        run.path("a.png").write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_promise_checkpoints_are_bounded_however_forged(tmp_path):
    from vizcnn.core.errors import BadInputError
    from vizcnn.models import build_model, load_model
    from vizcnn.models.checkpoint import load_bounded

    torch.save(build_model("lenet5").state_dict(), tmp_path / "honest.pt")
    assert set(load_bounded(tmp_path / "honest.pt")) == set(build_model("lenet5").state_dict())
    _two_directories(tmp_path / "forged.pt", tmp_path / "honest.pt", 256 << 20)
    with zipfile.ZipFile(tmp_path / "forged.pt") as z:  # what Python's zipfile sees: small and honest
        assert sum(e.file_size for e in z.infolist()) < 1 << 20
    start = time.perf_counter()
    with pytest.raises(BadInputError, match="forged zip.*refused before inflating"):
        load_model("lenet5", tmp_path / "forged.pt")
    assert time.perf_counter() - start < 2
    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "dir.pt").mkdir()
    (tmp_path / "garbage.pt").write_bytes(b"garbage" * 100)
    for bad, why in (("fifo.pt", "not a regular file"), ("dir.pt", "is a directory"), ("garbage.pt", "not a zip")):
        with pytest.raises(BadInputError, match=why) as e:
            load_bounded(tmp_path / bad)
        assert "refused before inflating" not in str(e.value)  # never a refusal that did not happen


def _two_directories(path: Path, honest: Path, bomb: int) -> None:
    """An honest checkpoint re-laid with a second central directory: the end record's
    directory offset points torch's reader (miniz) at one whose data.pkl inflates ``bomb``
    zero bytes, while Python's zipfile reads the honest one just before the end record."""
    with zipfile.ZipFile(honest) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    pkl = next(n for n, _ in entries if n.endswith("data.pkl"))

    def local(name, method, crc, csize, usize):
        return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc, csize, usize, len(name), 0) + name

    def central(name, method, crc, csize, usize, at):
        return struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, csize, usize,
                           len(name), 0, 0, 0, 0, 0, at) + name

    data = _zeros_zlib(bomb)[2:-4]  # raw deflate
    crc = 0
    for _ in range(bomb >> 20):
        crc = zlib.crc32(bytes(1 << 20), crc)
    body = bytearray(local(pkl.encode(), 8, crc, len(data), bomb) + data)
    torch_dir = [central(pkl.encode(), 8, crc, len(data), bomb, 0)]
    python_dir = []
    for name, blob in entries:
        at = len(body)
        c = zlib.crc32(blob)
        body += local(name.encode(), 0, c, len(blob), len(blob)) + blob
        python_dir.append((name.encode(), c, len(blob), at))
        if name != pkl:
            torch_dir.append(central(name.encode(), 0, c, len(blob), len(blob), at))
    torch_at = len(body)
    body += b"".join(torch_dir)
    shift = len(body) - torch_at  # Python adds (end record's place - size - offset) to every offset
    python_at = len(body)
    body += b"".join(central(n, 0, c, s, s, at - shift) for n, c, s, at in python_dir)
    size = len(body) - python_at
    body += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), size, torch_at, 0)
    path.write_bytes(bytes(body))


def test_promise_non_finite_results_are_errors(tmp_path, samples_dir, monkeypatch):
    """AlexNet's learned weights ×3e4: the forward stays finite, the deconvnet's backward
    overflows. The CLI stops with one line naming the layer, method and dtype before writing;
    the API raises under strict and otherwise warns, the NaNs left as the mark."""
    import warnings

    import vizcnn.models.registry as registry
    from vizcnn.core.finite import NonFiniteError, NonFiniteWarning
    from vizcnn.models import get_spec, load_model

    real = registry.load_checkpoint

    def scaled(model, path):
        real(model, path)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(3e4)

    monkeypatch.setattr(registry, "load_checkpoint", scaled)
    model = load_model("alexnet", "fashion-mnist")
    x = torch.rand(1, *get_spec("alexnet", "fashion-mnist").input_size, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteError, match=r"deconvnet projection of layer 'conv5' \(backward\).*float32"):
        vizcnn.project_top(model, x, "conv5", 2, strict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, proj = vizcnn.project_top(model, x, "conv5", 2)
    assert any(issubclass(w.category, NonFiniteWarning) for w in caught) and not torch.isfinite(proj).all()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bag.png").write_bytes((samples_dir / "fashion-bag.png").read_bytes())
    for args in (["deconv", "alexnet", str(samples_dir / "fashion-bag.png"), "--layer", "conv5"],
                 ["topk", "alexnet", str(tmp_path / "data"), "--layer", "conv5", "--workers", "0", "--units", "0-1"]):
        out = tmp_path / f"out-{args[0]}"
        run = CliRunner().invoke(cli, [*args, "--weights", "fashion-mnist", "--out", str(out)])
        assert run.exit_code == 2, run.output
        error = [line for line in run.output.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and "conv5" in error[0] and "NaN or Inf" in error[0] and "float32" in error[0], run.output
        assert not out.exists()


@pytest.mark.parametrize("args, said", [
    (["topk", "lenet5", "samples", "--top", "10000000"], "--top"),
    (["topk", "lenet5", "samples", "--units", "0-200000000", "--workers", "0"], "out of range"),
    (["topk", "lenet5", "samples", "--units", "0-10000000000", "--workers", "0"], "out of range"),
    (["topk", "lenet5", "samples", "--units", "²", "--workers", "0"], "write e.g."),
    (["topk", "lenet5", "samples", "--workers", "100000"], "--workers"),
    (["topk", "lenet5", "samples", "--batch-size", "100000"], "--batch-size"),
    (["saliency", "lenet5", "samples/cat.jpg", "--steps", "100000000"], "--steps"),
    (["report", "lenet5", "samples/cat.jpg", "--dpi", "100000"], "--dpi"),
    (["filters", "lenet5", "--fft-size", "100000"], "--fft-size"),
    (["deconv", "lenet5", "samples/cat.jpg", "--seed", "1e23"], "--seed"),
    (["deconv", "lenet5", "samples/cat.jpg", "--seed", "100000000000000000000000"], "--seed"),
    (["deconv", "lenet5", "samples/cat.jpg", "--out", "x" * 300], "longer than"),
    (["deconv", "lenet5", "samples/cat.jpg", "--out", "."], "refusing --out"),
    (["deconv", "lenet5", "samples/cat.jpg", "--out", "..", "--force"], "refusing --out"),
    (["deconv", "lenet5", "samples/cat.jpg", "--out", "/"], "refusing --out"),
])
def test_promise_every_number_is_bounded_and_a_bad_one_is_one_line(tmp_path, monkeypatch, args, said):
    monkeypatch.chdir(ROOT)
    before = sorted(os.listdir(ROOT))
    run = CliRunner().invoke(cli, [*args, "--weights", "random"] if args[0] != "filters" else args)
    assert run.exit_code == 2, run.output
    errors = [line for line in run.output.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in run.output and len(errors) == 1 and said in errors[0], run.output
    assert sorted(os.listdir(ROOT)) == before


def test_promise_any_file_name_is_shown_escaped(tmp_path, samples_dir):
    """Names a filesystem allows (not UTF-8, a newline, a right-to-left override) in a DATA
    folder: topk finishes (a traceback after the whole pass before), its figure captions and
    summary.json show the names escaped (the one place every figure and page takes them
    from: FileSource.describe)."""
    data = tmp_path / "data"
    data.mkdir()
    names = [b"\xff\xfebad.png", b"new\nline.png", "rtl\u202egnp.png".encode()]
    for name in names:
        with open(os.path.join(os.fsencode(data), name), "wb") as f:
            f.write((samples_dir / "fashion-bag.png").read_bytes())
    run = CliRunner().invoke(cli, ["topk", "lenet5", str(data), "--weights", "random", "--workers", "0", "--out",
                                   str(tmp_path / "t")])
    assert run.exit_code == 0, run.output
    text = (tmp_path / "t" / "summary.json").read_text()
    assert "\\\\xff\\\\xfebad" in text and "new\\\\nline" in text and "\\\\u202e" in text
    assert "3 images (0 skipped)" in run.output and "\u202e" not in run.output


def test_break_01_a_users_checkpoints_folder_is_never_state(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "figures").mkdir()
    (out / "report.md").write_text("my report")
    with pytest.raises(VizcnnError, match="did not write"):
        OutputDir(out, "study")
    run = OutputDir(out, "study", force=True)
    with pytest.raises(VizcnnError, match="not a folder an earlier 'study' run kept"):
        run.keep("checkpoints")
    run.abort()
    assert (out / "report.md").read_text() == "my report" and (out / "figures").is_dir()


def test_break_01_the_study_resumes_only_from_its_own_verified_run(tmp_path):
    from vizcnn.io.output import run_command

    out = tmp_path / "out"
    killed = ("import os, sys\nfrom vizcnn.io.output import OutputDir\nrun = OutputDir(sys.argv[1], 'study')\n"
              "(run.keep('checkpoints') / 'zfnet.pt').write_bytes(b'state')\nos._exit(9)\n")
    subprocess.run([sys.executable, "-c", killed, str(out)], cwd=ROOT, check=False)
    assert run_command(out) == "study"  # killed before it finished: the checkpoints and the signed manifest stay
    again = OutputDir(out, "study")  # no --force needed: the folder is provably this command's
    assert again.is_earlier() and not again.is_earlier("deconv")
    assert (again.keep("checkpoints") / "zfnet.pt").read_bytes() == b"state"
    again.finish({})
    assert (out / "checkpoints" / "zfnet.pt").read_bytes() == b"state"


def test_break_02_carrying_over_loses_nothing(tmp_path):
    """Without --force, a folder of only empty subfolders, or an empty folder beside an earlier
    run, is refused; --out ~ is refused before any work."""
    (tmp_path / "a" / "empty" / "deeper").mkdir(parents=True)
    with pytest.raises(VizcnnError, match="did not write.*empty"):
        OutputDir(tmp_path / "a", "deconv")
    _run(tmp_path / "b")
    (tmp_path / "b" / "mine").mkdir()
    with pytest.raises(VizcnnError, match="did not write.*mine"):
        OutputDir(tmp_path / "b", "deconv")
    _run(tmp_path / "b", force=True)
    assert (tmp_path / "b" / "mine").is_dir()
    with pytest.raises(VizcnnError, match="your home folder"):
        OutputDir(Path.home(), "deconv", force=True)


def test_break_03_keep_never_follows_a_link_and_a_failed_run_leaves_no_state(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    _run(out, "study")
    (out / "checkpoints").symlink_to(outside)
    run = OutputDir(out, "study", force=True)
    with pytest.raises(VizcnnError, match="never follows a link"):
        run.keep("checkpoints")
    run.abort()
    assert list(outside.iterdir()) == []
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError), OutputDir(fresh, "study") as failing:
        failing.keep("checkpoints")
        raise RuntimeError("bad --data")
    assert not fresh.exists()  # no checkpoints/, no manifest, no folder


def test_break_08_the_lock_is_held_until_the_last_entry_is_carried_over(tmp_path, monkeypatch):
    import vizcnn.io.output as output

    out = tmp_path / "out"
    _run(out)
    for i in range(5):
        (out / f"user{i}.txt").write_text("mine")
    tried = []
    rename = os.rename

    def probe(src, dst):
        if not tried:
            try:
                OutputDir(out, "deconv", force=True)
                tried.append("got in")
            except VizcnnError as e:
                tried.append(str(e))
        return rename(src, dst)

    monkeypatch.setattr(output.os, "rename", probe)
    _run(out, force=True)
    assert tried and "in use by another vizcnn run" in tried[0], tried
    assert all((out / f"user{i}.txt").read_text() == "mine" for i in range(5))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_break_09_unswappable_targets_are_refused_before_any_work(tmp_path, monkeypatch):
    from vizcnn.io.output import check_target

    monkeypatch.chdir(tmp_path)
    for target in (".", "..", "/", str(tmp_path), "x" * 300):
        with pytest.raises(VizcnnError, match="refusing --out"):
            check_target(target)
    mounts = [m for m in ("/proc", "/dev", "/sys") if os.path.ismount(m)]
    if mounts:
        with pytest.raises(VizcnnError, match="mount point"):
            check_target(mounts[0])
    assert os.listdir(tmp_path) == []


def test_break_10_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    _run(out, files=("old.png",))
    child = subprocess.Popen([sys.executable, "-c", _RUN, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    stale = [p for p in tmp_path.iterdir() if p.name != "out"]
    assert len(stale) == 1 and stale[0].name.startswith(".out.vizcnn-")  # what SIGKILL leaves
    _run(out, files=("new.png",))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(os.listdir(out)) == [".vizcnn-manifest.json", "new.png", "summary.json"]


def test_break_14_jpeg_2000_is_refused_by_signature(tmp_path):
    """This OpenCV decodes JPEG 2000 with OpenJPEG, which OPENCV_IO_ENABLE_JASPER=0 does not
    switch off; read_image refuses JP2 files and J2K codestreams by their signature, before
    OpenCV sees a byte, and the README says so."""
    from vizcnn.core.errors import BadInputError
    from vizcnn.io.imageio import read_image
    from vizcnn.io.opencv import cv2

    assert "JPEG 2000:" in cv2.getBuildInformation()
    jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 " + bytes(64)
    j2k = b"\xff\x4f\xff\x51" + bytes(64)
    for name, data in (("a.jp2", jp2), ("a.j2k", j2k)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadInputError, match="cannot decode image: not an image, or a format"):
            read_image(tmp_path / name)
    readme = (ROOT / "README.md").read_text()
    assert "OpenJPEG" in readme and "turns the OpenEXR and JPEG 2000 decoders off" not in readme


def test_break_11_a_float16_overflow_is_named_float16():
    """``scan`` on a half-precision model whose activations pass 65504 said "float32"."""
    from types import SimpleNamespace

    from vizcnn.core.errors import BadInputError
    from vizcnn.io.sources import TensorSource

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).half()
    with torch.no_grad():
        model[0].weight.fill_(1e4)
    source = TensorSource("ones", torch.ones(2, 1, 8, 8))
    spec = SimpleNamespace(name="t", input_size=(1, 8, 8), mean=(0.0,), std=(1.0,))
    with pytest.raises(BadInputError, match="too large for float16"):
        vizcnn.scan(model, source, spec, topk_layers=["0"], num_workers=0)
