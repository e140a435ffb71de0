"""Tests for vizcnn.io.imageio: every image is made here, in tmp_path, by OpenCV, PIL or by hand."""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vizcnn.core.errors import BadArgumentError, BadInputError
from vizcnn.io import imageio
from vizcnn.io.imageio import image_size, read_image, safe_filename, write_atomic, write_json, write_png

import cv2  # noqa: E402,I001  (after vizcnn.io.imageio, which sets OpenCV's pixel limit first)

RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


# ------------------------------------------------------------------------- helpers


def _encode(ext: str, image: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    """OpenCV-encoded bytes of an RGB (H×W×3), RGBA or gray array."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image), list(params))
    assert ok
    return buf.tobytes()


def _file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _bad_input(path: os.PathLike[str] | str, **kwargs: object) -> str:
    """read_image's BadInputError message for path, checked to be one line naming the file."""
    with pytest.raises(BadInputError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    name = Path(path).name
    assert name in message or repr(name)[1:-1] in message  # odd names are shown escaped
    return message


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _hand_png(width: int, height: int, color_type: int, rows: bytes, *extra_chunks: bytes) -> bytes:
    """A PNG built byte by byte: 8-bit samples, `rows` already prefixed with filter bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + b"".join(extra_chunks)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def _smooth_rgb(height: int, width: int) -> np.ndarray:
    """A uint8 colour gradient: JPEG reproduces it closely."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), 128 + 0 * x], axis=2).astype(
        np.uint8
    )


def _check_rgb(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.dtype == np.float32
    assert image.shape == (*shape, 3)
    assert image.flags.c_contiguous
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


# ------------------------------------------------------------------- decoding


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = read_image(_file(tmp_path, "a.png", _encode(".png", rgb)))
    _check_rgb(image, (6, 8))
    np.testing.assert_allclose(image, rgb / 255.0, atol=1e-6)


def test_rgb_jpeg_round_trip(tmp_path: Path) -> None:
    rgb = _smooth_rgb(32, 48)
    image = read_image(_file(tmp_path, "a.jpg", _encode(".jpg", rgb, (cv2.IMWRITE_JPEG_QUALITY, 95))))
    _check_rgb(image, (32, 48))
    error = np.abs(image - rgb / 255.0)
    assert error.mean() < 0.01 and error.max() < 0.08


def test_16bit_png_uses_full_range(tmp_path: Path) -> None:
    rgb = np.array([[[65535, 32768, 0]]], dtype=np.uint16).repeat(3, axis=1)
    image = read_image(_file(tmp_path, "deep.png", _encode(".png", rgb)))
    _check_rgb(image, (1, 3))
    np.testing.assert_allclose(image[0, 0], [1.0, 0.5, 0.0], atol=1e-4)


def test_grayscale_png_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    path = _file(tmp_path, "gray.png", _encode(".png", gray))
    image = read_image(path)
    _check_rgb(image, (2, 2))
    for c in range(3):
        np.testing.assert_allclose(image[:, :, c], gray / 255.0, atol=1e-6)
    single = read_image(path, gray=True)
    assert single.shape == (2, 2, 1) and single.dtype == np.float32
    np.testing.assert_allclose(single[:, :, 0], gray / 255.0, atol=1e-6)


def test_gray_keyword_gives_rec601_luminance(tmp_path: Path) -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    single = read_image(_file(tmp_path, "rgb.png", _encode(".png", rgb)), gray=True)
    assert single.shape == (1, 3, 1)
    np.testing.assert_allclose(single[0, :, 0], [0.299, 0.587, 0.114], atol=1e-6)


def test_alpha_is_composited_over_mid_grey(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 255, 51]]], dtype=np.uint8)
    image = read_image(_file(tmp_path, "alpha.png", _encode(".png", rgba)))
    _check_rgb(image, (1, 3))
    np.testing.assert_allclose(image[0, 0], [0.5, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(image[0, 1], RED, atol=1e-6)
    np.testing.assert_allclose(image[0, 2], [0.4, 0.4, 0.6], atol=1e-6)  # 0.2 * blue + 0.8 * grey


def _palette_png_by_hand(transparent_index: int | None) -> bytes:
    rows = b"\x00\x00\x01\x02"  # one row: filter 0, indices 0 1 2
    chunks = [_chunk(b"PLTE", bytes([255, 0, 0, 0, 255, 0, 0, 0, 255]))]
    if transparent_index is not None:
        chunks.append(_chunk(b"tRNS", bytes(255 if i != transparent_index else 0 for i in range(3))))
    return _hand_png(3, 1, 3, rows, *chunks)


def _palette_png_by_pil(transparent_index: int | None) -> bytes:
    image_module = pytest.importorskip("PIL.Image")
    image = image_module.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    image.putdata([0, 1, 2])
    out = io.BytesIO()
    if transparent_index is None:
        image.save(out, "PNG")
    else:
        image.save(out, "PNG", transparency=transparent_index)
    return out.getvalue()


@pytest.mark.parametrize("make", [_palette_png_by_hand, _palette_png_by_pil], ids=["by-hand", "pil"])
def test_palette_png_comes_out_in_colour(tmp_path: Path, make) -> None:
    data = make(None)
    assert data[25] == 3  # IHDR colour type: really a palette image
    image = read_image(_file(tmp_path, "palette.png", data))
    _check_rgb(image, (1, 3))
    np.testing.assert_allclose(image[0], [RED, GREEN, BLUE], atol=1e-6)

    transparent = read_image(_file(tmp_path, "palette-trns.png", make(1)))
    np.testing.assert_allclose(transparent[0], [RED, (0.5, 0.5, 0.5), BLUE], atol=1e-6)


def test_cmyk_jpeg_comes_out_as_rgb(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    for cmyk, rgb in [((0, 255, 255, 0), RED), ((255, 0, 0, 0), (0.0, 1.0, 1.0)), ((0, 0, 0, 255), (0.0, 0.0, 0.0))]:
        out = io.BytesIO()
        image_module.new("CMYK", (8, 8), cmyk).save(out, "JPEG", quality=95)
        image = read_image(_file(tmp_path, "cmyk.jpg", out.getvalue()))
        _check_rgb(image, (8, 8))
        np.testing.assert_allclose(image.mean(axis=(0, 1)), rgb, atol=0.03)


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    exif = image_module.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = io.BytesIO()
    image_module.new("RGB", (16, 8), (255, 0, 0)).save(out, "JPEG", exif=exif)
    assert read_image(_file(tmp_path, "rotated.jpg", out.getvalue())).shape == (16, 8, 3)


def test_float_tiff_is_clipped(tmp_path: Path) -> None:
    values = np.array([[[2.5, -1.0, 0.25]]], dtype=np.float32)
    image = read_image(_file(tmp_path, "hdr.tiff", _encode(".tiff", values)))
    np.testing.assert_allclose(image[0, 0], [1.0, 0.0, 0.25], atol=1e-6)


def test_one_pixel_image(tmp_path: Path) -> None:
    image = read_image(_file(tmp_path, "dot.png", _encode(".png", np.array([[[10, 20, 30]]], dtype=np.uint8))))
    _check_rgb(image, (1, 1))
    np.testing.assert_allclose(image[0, 0], np.array([10, 20, 30]) / 255.0, atol=1e-6)


# ----------------------------------------------------------------- bad files


def test_missing_path(tmp_path: Path) -> None:
    assert "no such file" in _bad_input(tmp_path / "nope.png")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "pics.png").mkdir()
    assert "directory" in _bad_input(tmp_path / "pics.png")


def test_empty_file(tmp_path: Path) -> None:
    assert "empty" in _bad_input(_file(tmp_path, "empty.png", b""))


def test_text_file_named_jpg(tmp_path: Path) -> None:
    assert "cannot decode" in _bad_input(_file(tmp_path, "notes.jpg", b"just some text\n" * 20))


def test_message_stays_one_line_for_odd_file_names(tmp_path: Path) -> None:
    _bad_input(_file(tmp_path, "two\nlines.jpg", b"text"))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_file_is_refused_or_partially_decoded(tmp_path: Path, ext: str) -> None:
    data = _encode(ext, _smooth_rgb(32, 32))
    assert image_size(data[: len(data) // 2]) == (32, 32)  # the header survives the cut
    path = _file(tmp_path, "cut" + ext, data[: len(data) // 2])
    try:
        image = read_image(path)
    except BadInputError as exc:
        assert "\n" not in str(exc) and path.name in str(exc)
    else:  # some OpenCV builds return what libjpeg/libpng could decode
        _check_rgb(image, (32, 32))


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 100000 × 100000 RGB claimed by a file of under 100 bytes (one empty row of data).
    bomb = _hand_png(100_000, 100_000, 2, b"\x00")
    assert len(bomb) < 100
    assert image_size(bomb) == (100_000, 100_000)
    decoded: list[object] = []
    monkeypatch.setattr(cv2, "imdecode", lambda *args: decoded.append(args))
    start = time.perf_counter()
    message = _bad_input(_file(tmp_path, "bomb.png", bomb))
    assert time.perf_counter() - start < 0.5
    assert decoded == []
    assert "100000×100000 = 10000000000 pixels" in message and "max_pixels" in message


def test_png_chunk_longer_than_the_file_is_refused_fast(tmp_path: Path) -> None:
    # OpenCV 5.0 would allocate the claimed 4 GB before noticing the file is short.
    data = bytearray(_encode(".png", _smooth_rgb(4, 4)))
    at = data.index(b"IDAT") - 4
    data[at : at + 4] = struct.pack(">I", 0xFFFFFFF0)
    start = time.perf_counter()
    assert "IDAT" in _bad_input(_file(tmp_path, "long-chunk.png", bytes(data)))
    assert time.perf_counter() - start < 0.5


def test_max_pixels_is_a_limit_on_width_times_height(tmp_path: Path) -> None:
    path = _file(tmp_path, "ten.png", _encode(".png", np.zeros((10, 10, 3), np.uint8)))
    assert read_image(path, max_pixels=100).shape == (10, 10, 3)
    assert "100 pixels" in _bad_input(path, max_pixels=99)
    with pytest.raises(BadArgumentError):
        read_image(path, max_pixels=0)


def test_pnm_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    # PGM has no decoder-independent guard but its header: it is parsed, and refused
    # before OpenCV sees it (whatever OPENCV_IO_MAX_IMAGE_PIXELS a caller's cv2 loaded with).
    data = b"P5\n100000 100000\n255\n" + bytes(64)
    assert image_size(data) == (100000, 100000)
    start = time.perf_counter()
    assert "refusing to decode 100000×100000" in _bad_input(_file(tmp_path, "bomb.pgm", data))
    assert time.perf_counter() - start < 0.5


def test_format_without_a_readable_size_is_refused(tmp_path: Path) -> None:
    # JPEG 2000: OpenCV may decode it, but its size is not read from the header here.
    message = _bad_input(_file(tmp_path, "x.jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(64)))
    assert "size cannot be read" in message


def test_file_larger_than_any_allowed_image_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "sparse.png"
    with open(path, "wb") as f:  # a valid small PNG header, then a 3 GB hole (no disk used)
        f.write(_encode(".png", _smooth_rgb(8, 8), ()))
        f.truncate(3 << 30)
    start = time.perf_counter()
    assert "refusing to read a" in _bad_input(path)
    assert time.perf_counter() - start < 0.5


# ----------------------------------------------------------------- image_size


@pytest.mark.parametrize(
    "ext, params",
    [
        (".png", ()),
        (".jpg", ()),
        (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        (".bmp", ()),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80)),  # lossy: VP8
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)),  # lossless: VP8L
        (".tiff", ()),
        (".gif", ()),
        (".ppm", ()),
        (".pfm", ()),
        (".hdr", ()),
        (".ras", ()),
    ],
)
def test_image_size_matches_encoded_size(ext: str, params: tuple[int, ...]) -> None:
    rgb = _smooth_rgb(23, 37)
    try:
        data = _encode(ext, rgb, params)
    except cv2.error:
        pytest.skip(f"this OpenCV cannot encode {ext}")
    assert image_size(data) == (37, 23)


def test_image_size_of_hand_made_headers() -> None:
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x10\x00\x00\x00" + (36).to_bytes(3, "little") + (
        22
    ).to_bytes(3, "little")
    assert image_size(vp8x) == (37, 23)
    assert image_size(b"GIF89a" + struct.pack("<HH", 37, 23) + bytes(3)) == (37, 23)
    # Big-endian TIFF with a SHORT width and a LONG height.
    entries = struct.pack(">HHIHH", 256, 3, 1, 37, 0) + struct.pack(">HHII", 257, 4, 1, 23)
    assert image_size(b"MM\x00*" + struct.pack(">IH", 8, 2) + entries + bytes(4)) == (37, 23)
    # BMP stored top-down (negative height).
    bmp = b"BM" + bytes(12) + struct.pack("<Iii", 40, 37, -23) + bytes(40)
    assert image_size(bmp) == (37, 23)
    assert image_size(b"P7\nWIDTH 37\nHEIGHT 23\nDEPTH 3\nMAXVAL 255\nENDHDR\n") == (37, 23)
    assert image_size(b"P6\n# a comment\n37 # more\n23\n255\n") == (37, 23)
    assert image_size(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 23 +X 37\n") == (37, 23)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8" + b"\xff" * 50_000, b"BM", b"RIFF....WEBP"],
)
def test_image_size_unknown_or_cut_header_is_none(data: bytes) -> None:
    assert image_size(data) is None


# ------------------------------------------------------------------- fuzzing


def _seed_files() -> list[bytes]:
    rgb = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return [_encode(".png", rgb), _encode(".jpg", rgb), _encode(".png", rgb[:, :, 0]), _palette_png_by_hand(1)]


_SEEDS = _seed_files()

_edits = st.lists(
    st.tuples(st.sampled_from(["flip", "truncate", "insert"]), st.integers(0, 2**20), st.binary(min_size=1, max_size=8)),
    min_size=1,
    max_size=4,
)


def _mutate(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    for action, position, payload in edits:
        at = position % (len(data) + 1)
        if action == "flip" and data:
            at %= len(data)
            data = data[:at] + bytes([data[at] ^ (payload[0] or 1)]) + data[at + 1 :]
        elif action == "truncate":
            data = data[:at]
        elif action == "insert":
            data = data[:at] + payload + data[at:]
    return data


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "input.img"


def _read_fuzzed(path: Path, data: bytes) -> None:
    """The only allowed outcomes: a valid float32 RGB array, or BadInputError."""
    path.write_bytes(data)
    try:
        # A small limit keeps a mutated header from asking for a slow (if legal) decode.
        image = read_image(path, max_pixels=1_000_000)
    except BadInputError as exc:
        assert "\n" not in str(exc)
        return
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=512),
        st.builds(_mutate, st.sampled_from(_SEEDS), _edits),
    )
)
def test_fuzzed_bytes_decode_or_raise_bad_input(fuzz_file: Path, data: bytes) -> None:
    _read_fuzzed(fuzz_file, data)


# ------------------------------------------------------------------- writing


def test_write_atomic_writes_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    write_atomic(path, b"one")
    assert path.read_bytes() == b"one"
    write_atomic(str(path), b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_write_atomic_keeps_old_file_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "result.png"
    path.write_bytes(b"old content")

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, b"new content")
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["result.png"]


def test_write_atomic_turns_os_errors_into_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "full.json"
    path.write_bytes(b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(BadInputError, match="No space left"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["full.json"]


def test_write_atomic_into_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        write_atomic(tmp_path / "no" / "such" / "out.png", b"x")
    assert "does not exist" in str(info.value) and "\n" not in str(info.value)


def test_write_atomic_onto_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="directory"):
        write_atomic(tmp_path, b"x")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_write_atomic_permissions(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.txt"
    write_atomic(fresh, b"x")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~imageio._UMASK
    private = tmp_path / "private.txt"
    private.write_bytes(b"old")
    private.chmod(0o600)
    write_atomic(private, b"new")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_write_png_round_trip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).random((5, 7, 3)).astype(np.float32)
    write_png(tmp_path / "f.png", rgb)
    np.testing.assert_allclose(read_image(tmp_path / "f.png"), rgb, atol=0.5 / 255 + 1e-6)
    levels = (rgb * 255).astype(np.uint8)
    write_png(tmp_path / "u.png", levels)
    np.testing.assert_allclose(read_image(tmp_path / "u.png"), levels / 255.0, atol=1e-6)


def test_write_png_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(BadArgumentError, match="H×W×3"):
        write_png(tmp_path / "a.png", np.zeros((4, 4)))
    with pytest.raises(BadArgumentError):
        write_png(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.int64))
    with pytest.raises(BadInputError, match="NaN"):
        write_png(tmp_path / "a.png", np.full((4, 4, 3), np.nan))
    assert os.listdir(tmp_path) == []


def test_save_figure(tmp_path: Path) -> None:
    figure_module = pytest.importorskip("matplotlib.figure")
    fig = figure_module.Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    imageio.save_figure(fig, tmp_path / "fig.png", dpi=50)
    imageio.save_figure(fig, tmp_path / "fig.PDF")
    imageio.save_figure(fig, tmp_path / "fig.svg")
    assert (tmp_path / "fig.png").read_bytes().startswith(b"\x89PNG")
    assert read_image(tmp_path / "fig.png").shape == (50, 100, 3)
    assert (tmp_path / "fig.PDF").read_bytes().startswith(b"%PDF")
    assert b"<svg" in (tmp_path / "fig.svg").read_bytes()
    with pytest.raises(BadArgumentError, match=r"\.png, \.pdf, \.svg"):
        imageio.save_figure(fig, tmp_path / "fig.jpg")


def test_write_json(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    write_json(path, {"layer": "conv1", "scores": [0.5, 1.0]})
    text = path.read_text(encoding="utf-8")
    assert text == '{"layer": "conv1", "scores": [0.5, 1.0]}\n'  # short enough for one line
    assert json.loads(text) == {"layer": "conv1", "scores": [0.5, 1.0]}
    big = {"layer": "conv1", "units": [{"unit": u, "values": list(range(20))} for u in range(6)], "n": 3}
    write_json(path, big)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == big and text.endswith("}\n") and '\n  "layer": "conv1"' in text
    assert '"values": [0, 1, 2' in text  # a short list stays on one line inside an indented object
    with pytest.raises(BadInputError, match="meta.json"):
        write_json(path, {"score": float("nan")})
    assert json.loads(path.read_text(encoding="utf-8"))["layer"] == "conv1"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../etc/passwd", "_.._etc_passwd"),
        ("layer3.1", "layer3.1"),
        ("a/b\\c:d", "a_b_c_d"),
        ("", "_"),
        ("..", "_"),
        (".", "_"),
        (".hidden", "hidden"),
        ("features.0 (conv)", "features.0__conv_"),
        ("n01440764 tench, Tinca tinca", "n01440764_tench__Tinca_tinca"),
        ("caf\u00e9", "caf_"),
        ("x" * 300, "x" * 100),
    ],
)
def test_safe_filename(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


# ------------------------------------------------------------------ the decode budget (#25)

_LAYOUT_CASES = [
    (".png", np.zeros((9, 13, 4), np.uint16)), (".png", np.zeros((9, 13), np.uint8)),
    (".png", np.zeros((9, 13, 3), np.uint8)), (".jpg", np.zeros((9, 13, 3), np.uint8)),
    (".jpg", np.zeros((9, 13), np.uint8)), (".bmp", np.zeros((9, 13, 3), np.uint8)),
    (".bmp", np.zeros((9, 13, 4), np.uint8)), (".webp", np.zeros((9, 13, 4), np.uint8)),
    (".tiff", np.zeros((9, 13, 4), np.float64)), (".tiff", np.zeros((9, 13, 3), np.uint16)),
    (".tiff", np.zeros((9, 13), np.float32)), (".hdr", np.zeros((9, 13, 3), np.float32)),
    (".pgm", np.zeros((9, 13), np.uint16)), (".ppm", np.zeros((9, 13, 3), np.uint8)),
    (".pfm", np.zeros((9, 13, 3), np.float32)), (".ras", np.zeros((9, 13, 3), np.uint8)),
]


@pytest.mark.parametrize("ext, array", _LAYOUT_CASES, ids=[f"{e}-{a.dtype}-{a.shape}" for e, a in _LAYOUT_CASES])
def test_decode_layout_never_underestimates_what_opencv_allocates(ext, array):
    """The byte budget is checked against the header's width × height × channels × bytes per
    sample; OpenCV's own decode of the file (IMREAD_UNCHANGED, as read_image) is the reference."""
    data = cv2.imencode(ext, array)[1].tobytes()
    channels, sample, _extra, pixels = imageio.decode_layout(data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels == decoded.shape[0] * decoded.shape[1]
    assert channels * sample * pixels >= decoded.nbytes, (channels, sample, decoded.shape, decoded.dtype)


def test_over_budget_headers_are_refused_before_decoding(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_encode(".png", np.zeros((64, 64, 4), np.uint16)))
    with pytest.raises(BadInputError, match=r"64×64×4 samples of 2 bytes = 32768 bytes > the decode budget of 32767"):
        read_image(path, max_bytes=32767)
    assert read_image(path, max_bytes=32768).shape == (64, 64, 3)


def test_the_conversion_makes_one_float_copy(tmp_path):
    """tracemalloc sees numpy's allocations: converting a decoded 16-bit RGBA image costs the
    float32 RGB result plus one channel's worth (alpha and its complement), no more."""
    import tracemalloc

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65535, (600, 500, 4), dtype=np.uint16)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        unit = imageio._to_unit_rgb(raw, "x", gray=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert unit.shape == (600, 500, 3) and unit.dtype == np.float32
    assert peak <= unit.nbytes * (1 + 2 / 3) + (1 << 16), peak / unit.nbytes
    alpha = raw[:, :, 3:].astype(np.float32) / np.float32(65535)  # the reference, in plain numpy
    want = (raw[:, :, 2::-1] / np.float32(65535)).astype(np.float32) * alpha + np.float32(0.5) * (1 - alpha)
    np.testing.assert_array_equal(unit, want)


@pytest.mark.parametrize("shape, dtype, gray", [((90, 130, 3), np.uint8, False), ((90, 130, 4), np.uint16, True),
                                                 ((90, 130), np.uint8, False), ((3000, 2000, 3), np.uint8, False)])
def test_read_fitted_equals_read_then_fit(tmp_path, shape, dtype, gray):
    """read_fitted makes its float copy at the input size; below the resize-first threshold it
    equals read_image + fit bit for bit, above it to within one 8-bit level."""
    from vizcnn.io.inputs import fit

    rng = np.random.default_rng(1)
    top = np.iinfo(dtype).max
    raw = rng.integers(0, top, shape, dtype=dtype)
    path = tmp_path / "a.png"
    path.write_bytes(cv2.imencode(".png", raw)[1].tobytes())
    got, size = imageio.read_fitted(path, (64, 48), gray=gray)
    want = fit(read_image(path, gray=gray), (64, 48))
    assert size == shape[:2] and got.shape == want.shape
    if shape[0] * shape[1] * 12 <= imageio._FLOAT_CROP_BYTES:
        np.testing.assert_array_equal(got, want)
    else:
        assert np.abs(got - want).max() <= 1 / 255 + 1e-6
