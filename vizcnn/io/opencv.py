"""The one place vizcnn imports OpenCV: its decode limits are set first, then cv2 is loaded.

OpenCV reads its size limits from the environment once, when the library loads
(loadsave.cpp), so they must be in ``os.environ`` before the first ``import cv2`` of
the process. Every vizcnn module that needs OpenCV does ``from .opencv import cv2``;
nothing else in vizcnn imports cv2, so every command and API call that decodes an
image runs under these limits. A deployer's own setting of a variable wins
(``setdefault``). If cv2 was imported before vizcnn (by the caller), its limits are
whatever that import saw: :data:`LIMITS_APPLIED` is then False, and
:func:`vizcnn.io.imageio.read_image` still refuses oversized files from their headers,
which it checks for every format it decodes.

OpenCV's thread pool is not fork-safe: a process forked while the pool's threads
exist inherits locked mutexes and condition variables without the threads, and the
child hangs the first time it touches the pool (``cv2.setNumThreads`` blocks in
``pthread_cond_destroy``). :func:`fork_safe` stops the pool around a fork.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

MAX_PIXELS = 40_000_000
"""Pixels (width × height) above which a file is refused before decoding; see
:data:`vizcnn.io.imageio.MAX_PIXELS`."""

MAX_SIDE = 1 << 20
"""Longest side OpenCV will decode (its own default, stated here so that all limits are
in one place). Long thin images stay readable: only their crop is resized."""

MAX_DECODE_BYTES = 256 << 20
"""The byte budget of one decode: what the header says the decoder will allocate
(width × height × channels × bytes per sample, plus a tiled or stripped TIFF's tile or
strip buffer) must fit, besides :data:`MAX_PIXELS`. 256 MiB admits a 40-megapixel photo in
8 bits (RGBA: 160 MB) or 16-bit RGB (240 MB), and refuses the float64 RGBA TIFF or float
HDR of the same size (1.3 GB, 480 MB) whose decode alone would cost gigabytes."""

DECODE_SECONDS = 20.0
"""The wall-clock budget of one decode: a file still decoding after this long is refused
(a single-image command) or skipped (a dataset pass), in one line."""

MAX_JPEG_SCANS = 256
"""A JPEG with more scans is refused before decoding: each progressive scan passes over
the whole image again, so a 1 MB file of 100,000 empty scans decodes for minutes.
Encoders write at most a few dozen."""

#: OpenCV's environment variables and the values vizcnn sets unless already set.
LIMITS = {
    "OPENCV_IO_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
    "OPENCV_IO_MAX_IMAGE_WIDTH": str(MAX_SIDE),
    "OPENCV_IO_MAX_IMAGE_HEIGHT": str(MAX_SIDE),
    # OpenEXR and JPEG 2000 declare sizes vizcnn does not parse. These switch off OpenEXR and
    # the JasPer JPEG 2000 decoder; a build whose JPEG 2000 comes from OpenJPEG (this one's
    # does) ignores the second, so read_image refuses JPEG 2000 (and AVIF) by signature.
    "OPENCV_IO_ENABLE_OPENEXR": "0",
    "OPENCV_IO_ENABLE_JASPER": "0",
}

_ALREADY_LOADED = "cv2" in sys.modules
for _name, _value in LIMITS.items():
    os.environ.setdefault(_name, _value)

import cv2  # noqa: E402  (the only import of cv2 in vizcnn; must follow the limits above)

#: True when cv2 was first loaded here, i.e. under :data:`LIMITS` (or the deployer's values).
LIMITS_APPLIED = not _ALREADY_LOADED

__all__ = ["DECODE_SECONDS", "LIMITS", "LIMITS_APPLIED", "MAX_DECODE_BYTES", "MAX_JPEG_SCANS", "MAX_PIXELS", "MAX_SIDE",
           "cv2", "fork_safe"]


@contextlib.contextmanager
def fork_safe() -> Iterator[None]:
    """Inside the block OpenCV runs single-threaded, its pool's threads joined, so a
    ``fork()`` (DataLoader workers) copies no half-owned lock; the previous thread count
    is restored after. Measured on 2 cores, 10 passes of 16 images with 2 workers: fork
    this way 0.1–0.2 s per pass, forkserver 4.0 s, spawn 7.8 s (each of those imports
    torch again per worker)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)
