"""Reading images and writing result files, safely.

Reading: :func:`read_image` turns any image file OpenCV can decode into a float32
RGB array in [0, 1], and refuses unusable files with one-line
:class:`~vizcnn.core.errors.BadInputError` messages. Before decoding it reads the
declared size from the header (:func:`image_size`) so that a decompression bomb
(a small file that claims billions of pixels) is refused without allocating
anything.

Writing: every output goes through :func:`write_atomic`, so a crash or Ctrl-C
never leaves a half-written PNG/JSON behind and never destroys the previous file.
"""
from __future__ import annotations

import contextlib
import contextvars
import io
import json
import os
import re
import stat
import struct
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from vizcnn.core.errors import BadArgumentError, BadInputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PathLike = Union[str, "os.PathLike[str]"]

from vizcnn.io.opencv import DECODE_SECONDS, MAX_DECODE_BYTES, MAX_JPEG_SCANS, MAX_PIXELS, cv2

# MAX_PIXELS (from vizcnn.io.opencv, where every OpenCV limit is set before cv2 loads):
# the default refusal threshold of read_image, in pixels (width × height). 40
# megapixels covers every camera photo a user would visualise while keeping the
# worst-case decode (a float32 RGBA copy) under about 700 MB. Files whose header
# claims more are refused before decoding; pass a larger max_pixels to read a file
# you trust.

BYTES_PER_PIXEL = 16
"""File-size bound of :func:`read_image`: a file larger than ``max_pixels`` × this
(the size of an uncompressed float32 RGBA image at that limit) plus 1 MiB is refused
before anything but its size is read."""

_HEADER_CACHE = 1 << 16  # bytes read up front; anything further is read on demand

__all__ = [
    "encode_image",
    "figure_dpi",
    "decode_layout",
    "display_text",
    "image_size",
    "read_fitted",
    "read_image",
    "safe_filename",
    "save_figure",
    "write_atomic",
    "write_image",
    "write_json",
    "write_png",
]

# Rec. 601 weights, as OpenCV's BGR2GRAY and PIL's "L" conversion use.
_LUMA_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4/C8/CC: DHT, JPG, DAC
_BMP_INFO_SIZES = frozenset({16, 40, 52, 56, 64, 108, 124})  # headers with 32-bit width/height


def _current_umask() -> int:
    # There is no portable read-only getter; done once at import, before threads
    # that could be affected by the momentary change usually exist.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def display_text(path: PathLike) -> str:
    """A file name (any a filesystem allows) as text that is safe to show in one line, a
    figure or an HTML page: bytes that are not UTF-8 as ``\\xNN``, control and
    formatting characters (newline, the right-to-left override) as ``\\n``, ``\\u202e``;
    everything printable as it is."""
    text = os.fsdecode(os.fspath(path))
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode keeps it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def _show(path: PathLike) -> str:
    """The path as text for a one-line message (:func:`display_text`)."""
    return display_text(path)


# --------------------------------------------------------------------- header sizes


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` in pixels as declared by an image file's header.

    Parses PNG (IHDR), JPEG (first SOFn marker), GIF (logical screen), BMP,
    WebP (VP8, VP8L, VP8X), TIFF/BigTIFF (ImageWidth/ImageLength of the first
    IFD), PNM/PAM/PFM, Radiance HDR and Sun raster without decoding anything.
    Returns None for any other format and for a header too short or malformed
    to read; the numbers are what the file claims, not a promise that it decodes.
    """
    parser = _parser(data)
    if parser is None:
        return None
    try:
        return parser(data)
    except (struct.error, IndexError, ValueError):  # header cut short or garbled
        return None


def _parser(data) -> Any:
    """The header parser for ``data``'s format (by its signature), or None if unknown."""
    if data[:8] == _PNG_SIGNATURE:
        return _png_size
    if data[:2] == b"\xff\xd8":
        return _jpeg_size
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_size
    if data[:2] == b"BM":
        return _bmp_size
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_size
    if data[:1] == b"P" and data[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"f", b"F"):
        return _pnm_size
    if data[:10] == b"#?RADIANCE" or data[:6] == b"#?RGBE":
        return _hdr_size
    if data[:4] == b"\x59\xa6\x6a\x95":
        return _sun_size
    return None


def _text_header(data, limit: int = _HEADER_CACHE) -> bytes:
    return bytes(data[:limit])


def _pnm_size(data) -> tuple[int, int] | None:
    head = _text_header(data)
    if head[1:2] == b"7":  # PAM: WIDTH/HEIGHT lines up to ENDHDR
        fields = dict(line.split(None, 1) for line in head.split(b"ENDHDR", 1)[0].splitlines()[1:]
                      if line.strip() and not line.startswith(b"#") and len(line.split(None, 1)) == 2)
        return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    tokens: list[bytes] = []
    for line in head[2:].splitlines():
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            return int(tokens[0]), int(tokens[1])
    return None


def _hdr_size(data) -> tuple[int, int] | None:
    lines = _text_header(data).split(b"\n")
    end = lines.index(b"")  # the blank line ending the header; ValueError if missing
    axes = lines[end + 1].split()
    if len(axes) != 4 or {axes[0][1:], axes[2][1:]} != {b"X", b"Y"}:
        return None
    sizes = {axes[0][1:]: int(axes[1]), axes[2][1:]: int(axes[3])}
    return sizes[b"X"], sizes[b"Y"]


def _sun_size(data) -> tuple[int, int] | None:
    return struct.unpack(">II", bytes(data[4:12]))


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = _jpeg_sof(data)
    if at is None:
        return None
    height, width = struct.unpack(">HH", data[at + 5 : at + 9])
    return width, height


def _jpeg_sof(data) -> int | None:
    """The offset of a JPEG's first frame header (SOFn marker), or None."""
    i = 2
    # Bounded so that a file of 0xFF fill bytes cannot keep us here for long;
    # real files reach their SOF within a few dozen segments.
    for _ in range(10_000):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            return None
        elif marker in _JPEG_SOF:
            return i
        else:
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if length < 2:
                return None
            i += 2 + length
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    return struct.unpack("<HH", data[6:10])


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    if header_size not in _BMP_INFO_SIZES:
        return None
    width, height = struct.unpack("<ii", data[18:26])
    if width < 0:
        return None
    return width, abs(height)  # negative height = rows stored top-down


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: key-frame header after the 3-byte frame tag
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF  # top 2 bits are scaling hints
    if chunk == b"VP8L":  # lossless: 14-bit (size - 1) fields after the 0x2f signature
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit (canvas size - 1)
        return (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    tags = _tiff_tags(data, (256, 257))
    if 256 not in tags or 257 not in tags:
        return None
    return tags[256], tags[257]


def _tiff_tags(data, wanted: tuple[int, ...]) -> dict[int, int]:
    """The first value of each tag in ``wanted`` found in a TIFF/BigTIFF's first IFD (SHORT,
    LONG or LONG8; a value stored elsewhere is followed to its offset)."""
    order = "<" if data[:2] == b"II" else ">"
    (version,) = struct.unpack(order + "H", data[2:4])
    if version == 42:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
        first, entry_size, value_at, inline = ifd + 2, 12, 8, 4
    else:  # 43: BigTIFF, 8-byte offsets
        offset_size, _, ifd = struct.unpack(order + "HHQ", data[4:16])
        if offset_size != 8:
            return {}
        (count,) = struct.unpack(order + "Q", data[ifd : ifd + 8])
        first, entry_size, value_at, inline = ifd + 8, 20, 12, 8
    found: dict[int, int] = {}
    for k in range(min(count, 0xFFFF)):
        at = first + k * entry_size
        tag, kind = struct.unpack(order + "HH", data[at : at + 4])
        if tag not in wanted:
            continue
        fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)  # SHORT, LONG, LONG8
        if fmt is None:
            continue
        (n,) = struct.unpack(order + ("I" if version == 42 else "Q"), data[at + 4 : at + value_at])
        start = at + value_at
        width = struct.calcsize(fmt)
        if n * width > inline:  # the values live elsewhere: the first one is enough
            (start,) = struct.unpack(order + ("I" if version == 42 else "Q"), data[start : start + inline])
        found[tag] = struct.unpack(order + fmt, data[start : start + width])[0]
        if len(found) == len(wanted):
            break
    return found


def decode_layout(data) -> tuple[int, int, int, int] | None:
    """``(channels, bytes per sample, extra buffer bytes, width × height)`` of what OpenCV
    will allocate to decode ``data``, from its header alone: the decoded array is
    width × height × channels × bytes per sample, and a tiled or stripped TIFF also needs
    one tile or strip buffer (read as RGBA at the sample size). Channels and depth are
    the largest the decoder may produce for that header (a palette PNG or GIF may come out
    BGRA, a CMYK JPEG is decoded through four channels). None where the header cannot say.
    """
    size = image_size(data)
    if size is None:
        return None
    layout = _LAYOUTS.get(_parser(data), lambda d: (4, 1, 0))
    try:
        channels, sample, extra = layout(data)
    except (struct.error, IndexError, ValueError, KeyError):
        return None
    return channels, sample, extra, size[0] * size[1]


def _png_layout(data) -> tuple[int, int, int]:
    depth, colour = data[24], data[25]
    return {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}[colour], 2 if depth == 16 else 1, 0


def _jpeg_layout(data) -> tuple[int, int, int]:
    at = _jpeg_sof(data)
    if at is None:
        raise ValueError("no frame header")
    precision, components = data[at + 4], data[at + 9]
    return max(1, min(4, components)) if components != 2 else 3, 1 if precision <= 8 else 2, 0


def _bmp_layout(data) -> tuple[int, int, int]:
    (header_size,) = struct.unpack("<I", data[14:18])
    bits = struct.unpack("<H", data[24:26] if header_size == 12 else data[28:30])[0]
    return 4 if bits == 32 else 3, 1, 0


def _pnm_layout(data) -> tuple[int, int, int]:
    head = _text_header(data)
    kind = head[1:2]
    if kind in (b"f", b"F"):
        return (1 if kind == b"f" else 3), 4, 0
    if kind == b"7":
        fields = dict(line.split(None, 1) for line in head.split(b"ENDHDR", 1)[0].splitlines()[1:]
                      if line.strip() and not line.startswith(b"#") and len(line.split(None, 1)) == 2)
        return max(1, min(4, int(fields.get(b"DEPTH", b"4")))), 2 if int(fields.get(b"MAXVAL", b"65535")) > 255 else 1, 0
    if kind in (b"1", b"4"):
        return 1, 1, 0
    tokens: list[bytes] = []
    for line in head[2:].splitlines():
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 3:
            break
    channels = 3 if kind in (b"3", b"6") else 1
    return channels, 2 if len(tokens) < 3 or int(tokens[2]) > 255 else 1, 0


def _sun_layout(data) -> tuple[int, int, int]:
    (depth,) = struct.unpack(">I", bytes(data[12:16]))
    return 4 if depth == 32 else 3, 1, 0


def _tiff_layout(data) -> tuple[int, int, int]:
    tags = _tiff_tags(data, (256, 257, 258, 277, 278, 322, 323, 339))
    width, height = tags.get(256, 0), tags.get(257, 0)
    spp = max(1, tags.get(277, 1))
    bits = max(1, tags.get(258, 1))
    sample = max(1, bits // 8)
    if 322 in tags or 323 in tags:  # tiled: one tile buffer
        buffer = tags.get(322, 0) * tags.get(323, 0)
    else:  # stripped: one strip buffer (RowsPerStrip, at most the image's height)
        buffer = width * min(height, tags.get(278, height) or height)
    return min(spp, 4), sample, buffer * max(spp, 4) * sample


_LAYOUTS = {_png_size: _png_layout, _jpeg_size: _jpeg_layout, _gif_size: lambda d: (4, 1, 0),
            _bmp_size: _bmp_layout, _webp_size: lambda d: (4, 1, 0), _tiff_size: _tiff_layout,
            _pnm_size: _pnm_layout, _hdr_size: lambda d: (3, 4, 0), _sun_size: _sun_layout}


# --------------------------------------------------------------------------- reading


def read_image(path: PathLike, *, max_pixels: int = MAX_PIXELS, gray: bool = False,
               max_bytes: int = MAX_DECODE_BYTES, max_seconds: float | None = None) -> np.ndarray:
    """Read an image file as a float32 array in [0, 1].

    Returns H×W×3 RGB, or with ``gray=True`` H×W×1 luminance (Rec. 601 weights;
    a grayscale file is returned as is) for single-channel models.

    Conversions: 8-bit samples are divided by 255, 16-bit by 65535, float samples
    (TIFF, HDR) are clipped to [0, 1] with NaN read as 0. Grayscale is replicated
    to three channels. An alpha channel is composited over mid grey (0.5), so
    transparent pixels become neutral instead of black. Palette PNGs come out as
    colour and CMYK JPEGs as RGB (OpenCV converts both). JPEGs are turned upright
    according to their EXIF orientation, as every photo viewer shows them; other
    formats ignore EXIF orientation. Multi-frame files (GIF, TIFF) give their
    first frame.

    Size limits: ``max_pixels`` is checked against the header before decoding and
    against the decoded array after. OpenCV applies its own process-wide limit,
    ``OPENCV_IO_MAX_IMAGE_PIXELS`` (set to :data:`MAX_PIXELS` when this module
    loads cv2), so a ``max_pixels`` above it also needs that variable raised in
    the environment before Python starts; the error message says so.

    Byte and time budgets: what the header says the decoder will allocate (width ×
    height × channels × bytes per sample, and a TIFF's tile or strip buffer) must fit
    ``max_bytes`` (:data:`~vizcnn.io.opencv.MAX_DECODE_BYTES`, 256 MiB); a JPEG of more
    than :data:`~vizcnn.io.opencv.MAX_JPEG_SCANS` scans is refused; a decode still running
    after ``max_seconds`` (None: :data:`~vizcnn.io.opencv.DECODE_SECONDS`, 20 s) is
    refused (the decoder finishes in the background, bounded by the byte budget, and the
    next decode waits for it). The result is the only float copy made (:func:`read_fitted`
    makes it at the model's input size).

    Truncated files: a PNG whose last chunk runs past the end of the file is
    refused before decoding. Otherwise OpenCV decides: the 5.0 build this was
    written against fails on any truncated PNG, JPEG, WebP, TIFF, GIF or BMP
    (refused here); a build whose decoder returns the part it could decode
    (older libjpeg paths fill the rest with grey) gives that partial image back
    without complaint.

    Raises:
        BadInputError: path missing, a directory, empty, not an image, corrupt,
            declaring more than ``max_pixels`` pixels or ``max_bytes`` bytes, or over
            the time budget; the message is one line.
        BadArgumentError: ``max_pixels`` < 1.
    """
    image, shown = _read_raw(path, max_pixels, max_bytes, max_seconds)
    return _to_unit_rgb(image, shown, gray)


def read_fitted(path: PathLike, size: tuple[int, int], *, gray: bool = False, max_pixels: int = MAX_PIXELS,
                max_bytes: int = MAX_DECODE_BYTES,
                max_seconds: float | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image` and :func:`vizcnn.io.inputs.fit` in one step, at the cost of the
    crop: returns (the H×W×C float32 image in [0, 1] of ``size`` = (H, W), shorter side
    resized to fit and centred, the file's own (height, width)). A large crop is resized
    in the decoder's own sample type before the one float copy is made at ``size``, so
    a 40-megapixel photo costs its decode and a 224² float image, nothing more. Same
    limits and errors as :func:`read_image`."""
    from .inputs import crop_box, resize_crop

    image, shown = _read_raw(path, max_pixels, max_bytes, max_seconds)
    if image.ndim == 2:
        image = image[:, :, None]
    h, w = image.shape[:2]
    top, left, sh, sw, interp = crop_box(h, w, size)
    crop = image[top:top + sh, left:left + sw]
    if sh * sw * 3 * 4 > _FLOAT_CROP_BYTES and crop.dtype in _RESIZABLE and crop.shape[2] <= 4:
        # resized in its own sample type first (a uint8 crop rounds to 1/255 after averaging)
        return _to_unit_rgb(resize_crop(crop, size, interp), shown, gray), (h, w)
    return resize_crop(_to_unit_rgb(crop, shown, gray), size, interp), (h, w)


#: A crop whose float copy is larger than this is resized before it is converted.
_FLOAT_CROP_BYTES = 64 << 20
_RESIZABLE = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32), np.dtype(np.float64))


def _read_raw(path: PathLike, max_pixels: int, max_bytes: int, max_seconds: float | None) -> tuple[np.ndarray, str]:
    """The decoded array as OpenCV gives it (H×W[×C], its own sample type), and the path as shown."""
    if max_pixels < 1:
        raise BadArgumentError(f"max_pixels must be >= 1, got {max_pixels}")
    shown = _show(path)
    with open_regular(path, shown) as file:
        data = _read_checked(file, shown, max_pixels, max_bytes)
    if data[:8] == _PNG_SIGNATURE:
        _check_png_chunks(data, shown)
    if data[:2] == b"\xff\xd8":
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise BadInputError(f"{shown}: refusing to decode a JPEG of {scans} scans (more than {MAX_JPEG_SCANS}: "
                                "each scan decodes the whole image again)")
    image = _decode_within(data, shown, DECODE_SECONDS if max_seconds is None else max_seconds)
    _check_pixels(shown, image.shape[1], image.shape[0], max_pixels)  # what the decoder actually made
    return image, shown


#: A decode that ran past its time budget and still runs; the next decode waits for it.
_OVERTIME: list[threading.Thread] = []


def _decode_within(data: bytes, shown: str, seconds: float) -> np.ndarray:
    """:func:`_decode` in a helper thread (OpenCV releases the GIL), given up after
    ``seconds``: then a BadInputError, and the thread finishes on its own (its cost is
    bounded by the byte budget) while at most one such thread ever runs."""
    while _OVERTIME:
        _OVERTIME.pop().join()
    result: dict = {}

    def work():
        try:
            result["image"] = _decode(data, shown)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=work, name="vizcnn-decode", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _OVERTIME.append(thread)
        raise BadInputError(f"{shown}: refusing the image: decoding took longer than {seconds:g} s, the decode "
                            "time budget")
    if "error" in result:
        raise result["error"]
    return result["image"]


@contextlib.contextmanager
def open_regular(path: PathLike, shown: str | None = None, what: str = "file"):
    """``path`` opened for binary reading if it is a regular file; a FIFO, device,
    socket or directory is refused at once with a one-line BadInputError (opened
    non-blocking and checked with ``fstat`` on the open descriptor, so neither a FIFO
    without a writer nor a swap between check and open can make the read block)."""
    shown = _show(path) if shown is None else shown
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise BadInputError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise BadInputError(f"{shown}: is a directory, not an image file" if what == "file"
                            else f"{shown}: is a directory, not a {what}") from None
    except (OSError, ValueError) as exc:  # ValueError: NUL byte in the path
        raise BadInputError(f"{shown}: cannot read: {_reason(exc)}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BadInputError(f"{shown}: is a directory, not an image file" if what == "file"
                                else f"{shown}: is a directory, not a {what}")
        if not stat.S_ISREG(mode):
            raise BadInputError(f"{shown}: not a regular file (a FIFO, device or socket is never read)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield file


class _FileView:
    """An open file seen as a read-only byte string: ``view[a:b]`` and ``view[i]`` read
    only those bytes (the first 64 KiB are cached), so header parsers can follow
    offsets (TIFF's IFD, JPEG's segments) without the file being read whole."""

    def __init__(self, file, size: int):
        self.file, self.size = file, size
        self.head = file.read(min(size, _HEADER_CACHE))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        if isinstance(key, int):
            got = self[key:key + 1]
            if not got:
                raise IndexError(key)
            return got[0]
        start, stop, _ = key.indices(self.size)
        if stop <= len(self.head):
            return self.head[start:stop]
        if stop <= start:
            return b""
        self.file.seek(start)
        return self.file.read(min(stop - start, 1 << 24))


def _read_checked(file, shown: str, max_pixels: int, max_bytes: int = MAX_DECODE_BYTES) -> bytes:
    """The whole file, read only after its size and its header's declared pixel count passed."""
    size = os.fstat(file.fileno()).st_size
    if size == 0:
        raise BadInputError(f"{shown}: empty file")
    max_file = max_pixels * BYTES_PER_PIXEL + (1 << 20)
    if size > max_file:
        raise BadInputError(f"{shown}: refusing to read a {size}-byte file: more than {max_file} bytes, the most "
                            f"an image of max_pixels = {max_pixels} needs; raise max_pixels if you trust this file")
    view = _FileView(file, size)
    if _parser(view) is None:
        raise BadInputError(f"{shown}: cannot decode image: not an image, or a format whose size cannot be read "
                            "from its header (read: PNG, JPEG, GIF, BMP, WebP, TIFF, PNM/PAM/PFM, Radiance HDR, Sun raster)")
    declared = image_size(view)
    if declared is None:
        raise BadInputError(f"{shown}: cannot decode image: corrupt or truncated header (no readable width and height)")
    _check_pixels(shown, *declared, max_pixels)
    layout = decode_layout(view)
    if layout is not None:
        channels, sample, extra, pixels = layout
        cost = pixels * channels * sample + extra
        if cost > max_bytes:
            what = f"{declared[0]}×{declared[1]}×{channels} samples of {sample} byte{'s' if sample > 1 else ''}"
            if extra:
                what += f" plus a {extra}-byte tile or strip buffer"
            raise BadInputError(f"{shown}: refusing to decode {what} = {cost} bytes > the decode budget of "
                                f"{max_bytes} bytes; raise max_bytes if you trust this file")
    file.seek(0)
    try:
        data = file.read()
    except OSError as exc:
        raise BadInputError(f"{shown}: cannot read: {_reason(exc)}") from None
    if not data:
        raise BadInputError(f"{shown}: empty file")
    return data


def _check_pixels(shown: str, width: int, height: int, max_pixels: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise BadInputError(
            f"{shown}: refusing to decode {width}×{height} = {pixels} pixels > max_pixels"
            f" = {max_pixels}; raise max_pixels if you trust this file"
        )


def _check_png_chunks(data: bytes, shown: str) -> None:
    """Refuse a PNG whose chunk lengths run past the end of the file.

    OpenCV 5.0 allocates whatever length a chunk claims before reading it, so a
    100-byte file with a corrupt length field costs up to 4 GB and seconds.
    """
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if at + 12 + length > len(data):
            raise BadInputError(
                f"{shown}: corrupt or truncated PNG: chunk {kind!r} at byte {at} claims {length} bytes,"
                f" the file has {max(len(data) - at - 12, 0)} left"
            )
        if kind == b"IEND":
            return
        at += 12 + length


def _decode(data: bytes, shown: str) -> np.ndarray:
    # IMREAD_UNCHANGED keeps 16-bit samples, alpha and grayscale as they are, but
    # also skips EXIF orientation. JPEG has no alpha and (here) 8-bit samples, so
    # for it ANYCOLOR|ANYDEPTH loses nothing and applies the orientation phones write.
    if data[:2] == b"\xff\xd8":
        flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH
    else:
        flags = cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except Exception as exc:  # cv2.error, MemoryError, ...: all mean "cannot decode this file"
        if "MAX_IMAGE" in str(exc):
            limit = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", "its default")
            raise BadInputError(
                f"{shown}: refusing to decode: the image exceeds OpenCV's size limit"
                f" (OPENCV_IO_MAX_IMAGE_PIXELS = {limit}, read when cv2 is loaded);"
                " set that variable before starting Python if you trust this file"
            ) from None
        raise BadInputError(f"{shown}: cannot decode image: {_reason(exc)}") from None
    if image is None or image.size == 0:
        raise BadInputError(f"{shown}: not an image, or corrupt or truncated (OpenCV cannot decode it)")
    return image


def _to_unit_rgb(image: np.ndarray, shown: str, gray: bool) -> np.ndarray:
    """OpenCV's H×W[×C] BGR(A)/gray array of any depth -> float32 RGB or luminance in [0, 1].

    The result is the one float copy: each channel is scaled straight into its place
    (BGR to RGB included), alpha composited there, so the peak is the result plus one
    channel's worth of alpha (grey from colour: plus the luminance, a third of it)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise BadInputError(f"{shown}: unsupported image layout {image.shape} (expected 1 to 4 channels)")
    kind = image.dtype
    if kind == np.uint8 or kind == np.uint16 or kind == np.uint32:
        top = np.float32(np.iinfo(kind).max)

        def unit(k: int, out: np.ndarray) -> None:
            np.divide(image[:, :, k], top, out=out, casting="unsafe")
    elif np.issubdtype(kind, np.floating):
        def unit(k: int, out: np.ndarray) -> None:
            out[...] = image[:, :, k]
            np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
            np.clip(out, 0.0, 1.0, out=out)
    else:
        raise BadInputError(f"{shown}: unsupported sample type {kind} (expected unsigned integers or floats)")

    h, w, c = image.shape
    colour = c >= 3
    # BGR -> RGB; kept BGR for grey from colour (the luminance below reads it reversed)
    sources = ((0, 1, 2) if gray else (2, 1, 0)) if colour else (0,)
    result = np.empty((h, w, 3 if colour or not gray else 1), np.float32)
    alpha = blend = None
    if c in (2, 4):  # gray+alpha or BGRA: over mid grey, x * a + 0.5 * (1 - a)
        alpha = np.empty((h, w), np.float32)
        unit(c - 1, alpha)
        blend = np.subtract(np.float32(1.0), alpha)  # 0.5 * (1 - a), made in place
        blend *= np.float32(0.5)
    for j, k in enumerate(sources):
        plane = result[:, :, j]
        unit(k, plane)
        if alpha is not None:
            plane *= alpha
            plane += blend
    del alpha, blend
    if colour and gray:
        return np.ascontiguousarray((result[:, :, ::-1] @ _LUMA_RGB)[:, :, None], dtype=np.float32)
    if not colour and not gray:
        result[:, :, 1] = result[:, :, 0]
        result[:, :, 2] = result[:, :, 0]
    return result


def _reason(exc: BaseException) -> str:
    """A short one-line reason for an OSError or OpenCV exception."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = getattr(exc, "err", None) or str(exc) or type(exc).__name__  # cv2.error.err: message only
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- writing


def write_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    The bytes go to a hidden temporary file in the same folder, are flushed to
    disk, then renamed over ``path``. On any failure or interruption
    (KeyboardInterrupt included) the temporary file is removed and a previous
    file at ``path`` is left as it was. A new file gets the usual permissions
    (0o666 minus the umask); a replaced one keeps its own. A symlink at ``path``
    is replaced by the file, not written through.

    Raises:
        BadInputError: the folder is missing or not writable, ``path`` is a folder,
            or the disk is full; the message is one line.
    """
    shown = _show(path)
    target = os.fspath(path)
    folder = os.path.dirname(target) or os.curdir
    name = os.path.basename(target)
    if not name or os.path.isdir(target):
        raise BadInputError(f"{shown}: cannot write: is a directory, not a file name")
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = 0o666 & ~_UMASK
    try:
        # Name capped so that prefix + random part + suffix stays within NAME_MAX.
        tmp = tempfile.NamedTemporaryFile(dir=folder, delete=False, prefix="." + name[:100] + ".", suffix=".tmp")
    except FileNotFoundError:
        raise BadInputError(f"{shown}: cannot write: folder {_show(folder)} does not exist") from None
    except OSError as exc:
        raise BadInputError(f"{shown}: cannot write into folder {_show(folder)}: {_reason(exc)}") from None
    try:
        with tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, mode)  # NamedTemporaryFile creates 0o600
        os.replace(tmp.name, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        if isinstance(exc, OSError):
            raise BadInputError(f"{shown}: cannot write: {_reason(exc)}") from None
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    # Makes the rename itself durable on POSIX; folders cannot be opened on Windows.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_png(path: PathLike, rgb: np.ndarray) -> None:
    """Write an H×W×3 RGB image (float in [0, 1], or uint8) as a PNG file, atomically.

    Float values outside [0, 1] are clipped and rounded to the nearest of 256
    levels. The content is PNG whatever the suffix of ``path``.

    Raises:
        BadArgumentError: not an H×W×3 array of floats or uint8.
        BadInputError: NaN or infinite values, or the file cannot be written.
    """
    write_atomic(path, encode_image(rgb, ".png", shown=_show(path), caller="write_png"))


#: What :func:`encode_image` writes: suffix -> (OpenCV's extension, its quality flag).
_ENCODINGS = {".png": (".png", None), ".jpg": (".jpg", cv2.IMWRITE_JPEG_QUALITY),
              ".jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY), ".webp": (".webp", cv2.IMWRITE_WEBP_QUALITY)}


def encode_image(rgb: np.ndarray, suffix: str = ".png", *, quality: int = 90, shown: str = "image",
                 caller: str = "encode_image") -> bytes:
    """An H×W×3 RGB image (float in [0, 1], or uint8) encoded as PNG, JPEG (``.jpg``,
    ``.jpeg``) or WebP (``.webp``); ``quality`` 1..100 for the lossy two.

    Float values outside [0, 1] are clipped and rounded to the nearest of 256 levels.

    Raises:
        BadArgumentError: not an H×W×3 array of floats or uint8, or another suffix.
        BadInputError: NaN or infinite values, or the encoder fails.
    """
    array = np.asarray(rgb)
    if suffix.lower() not in _ENCODINGS:
        raise BadArgumentError(f"{shown}: cannot encode {suffix!r}; choices: {', '.join(_ENCODINGS)}")
    ext, flag = _ENCODINGS[suffix.lower()]
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BadArgumentError(f"{shown}: {caller} expects an H×W×3 array, got shape {array.shape}")
    if array.dtype == np.uint8:
        levels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise BadInputError(f"{shown}: image to write contains NaN or infinite values")
        levels = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise BadArgumentError(f"{shown}: {caller} expects float or uint8 values, got {array.dtype}")
    params = [] if flag is None else [flag, int(min(100, max(1, quality)))]
    try:
        ok, encoded = cv2.imencode(ext, np.ascontiguousarray(levels[:, :, ::-1]), params)
    except cv2.error as exc:
        raise BadInputError(f"{shown}: cannot encode {ext[1:].upper()}: {_reason(exc)}") from None
    if not ok:
        raise BadInputError(f"{shown}: cannot encode {ext[1:].upper()} of shape {array.shape}")
    return encoded.tobytes()


def write_image(path: PathLike, rgb: np.ndarray, *, quality: int = 90) -> None:
    """Write an H×W×3 RGB image atomically in the format its suffix names (``.png``,
    ``.jpg``/``.jpeg``, ``.webp``; see :func:`encode_image`)."""
    suffix = Path(os.fsdecode(os.fspath(path))).suffix
    write_atomic(path, encode_image(rgb, suffix, quality=quality, shown=_show(path), caller="write_image"))


_FIGURE_FORMATS = ("png", "pdf", "svg")


#: The dpi of figures saved without an explicit one; set for a block by :func:`figure_dpi`.
_FIGURE_DPI: contextvars.ContextVar[int] = contextvars.ContextVar("vizcnn_figure_dpi", default=100)


@contextlib.contextmanager
def figure_dpi(dpi: int):
    """Inside the ``with`` block, every :func:`save_figure` call that passes no ``dpi``
    uses this one (default 100 outside): one setting for all the figures of a run, e.g.
    ``vizcnn report --dpi``, without threading it through every writer.

    Raises:
        BadArgumentError: ``dpi`` is not an integer >= 1.
    """
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 1:
        raise BadArgumentError(f"dpi must be an integer >= 1, got {dpi!r}")
    token = _FIGURE_DPI.set(dpi)
    try:
        yield
    finally:
        _FIGURE_DPI.reset(token)


def save_figure(fig: Figure, path: PathLike, *, dpi: int | None = None) -> None:
    """Save a matplotlib Figure atomically; the format follows the suffix (.png, .pdf, .svg).

    The figure is rendered in memory first, so a failing render leaves no file.
    ``dpi`` is dots per inch (it sets the pixel size of a PNG); None: 100, or the
    value of an enclosing :func:`figure_dpi` block.

    Raises:
        BadArgumentError: unsupported suffix or dpi < 1.
        BadInputError: the file cannot be written.
    """
    shown = _show(path)
    suffix = Path(os.fsdecode(os.fspath(path))).suffix.lower()
    if suffix.lstrip(".") not in _FIGURE_FORMATS:
        choices = ", ".join("." + f for f in _FIGURE_FORMATS)
        raise BadArgumentError(f"{shown}: unsupported figure format {suffix or '(no suffix)'!r}; choices: {choices}")
    if dpi is None:
        dpi = _FIGURE_DPI.get()
    if dpi < 1:
        raise BadArgumentError(f"dpi must be >= 1, got {dpi}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=suffix.lstrip("."), dpi=dpi)
    write_atomic(path, buffer.getvalue())


#: a JSON list or object whose compact form fits this many characters is written on one line
_JSON_LINE = 100


def _json_text(obj: Any, indent: str = "") -> str:
    """JSON indented by level, except that any list or object whose compact form fits
    :data:`_JSON_LINE` characters stays on one line: summaries of thousands of units stay
    readable and a fraction of the size of ``indent=2`` (one number per line)."""
    compact = json.dumps(obj, allow_nan=False, separators=(", ", ": "))
    if not isinstance(obj, (dict, list)) or len(compact) <= _JSON_LINE or not obj:
        return compact
    inner = indent + "  "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(str(k))}: {_json_text(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + _json_text(v, inner) for v in obj) + "\n" + indent + "]"


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON plus a final newline, atomically; short lists and
    objects stay on one line (:func:`_json_text`).

    ``obj`` must be plain Python (dict, list, str, int, float, bool, None): convert
    numpy and torch scalars first (``.item()``); anything else raises TypeError,
    as a programming error should.

    Raises:
        BadInputError: ``obj`` contains NaN or infinity (invalid JSON) or a
            circular reference, or the file cannot be written.
    """
    try:
        text = _json_text(obj)
    except ValueError as exc:
        raise BadInputError(f"{_show(path)}: cannot write JSON: {exc}") from None
    write_atomic(path, (text + "\n").encode("utf-8"))


_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def safe_filename(name: str) -> str:
    """A layer or class name made safe as one file-name component.

    Keeps ASCII letters, digits, ``.``, ``_`` and ``-``; every other character
    (path separators, ``:``, spaces, non-ASCII) becomes ``_``. Leading dots are
    dropped so the result is never ``.``, ``..`` or a hidden file; at most 100
    characters; never empty (``"_"``). ``"layer3.1"`` stays ``"layer3.1"``.
    """
    cleaned = _UNSAFE_CHARS.sub("_", name).lstrip(".")[:100]
    return cleaned or "_"
