"""Image collections for dataset passes, decoded in DataLoader workers.

A collection (:class:`ImageSource`) is an ordered list of images; an image's position
in that order is its *global index*, the same in every process of a distributed run.
:func:`open_data` turns what a user types as DATA into one:

* a folder: every image below it, any depth (``.jpg .jpeg .png .bmp .webp .tif
  .tiff``, any case; hidden files and folders skipped), ordered by relative path; the
  label is the first-level subfolder (ImageFolder style) when the image lies in one;
* an image file: that one image;
* any other file: a list file, one path per line (relative to the list file's
  folder, or absolute), an optional integer label after whitespace, ``#`` comments;
* ``samples``: the images shipped inside the package (``vizcnn samples`` lists them); a
  ``samples/NAME`` that is not here is the shipped image NAME (said on stderr);
* ``fashion-mnist``, ``fashion-mnist:test`` (the default split, 10,000 images) or
  ``fashion-mnist:train`` (60,000): Fashion-MNIST's IDX files, plain or gzipped, from
  ``$VIZCNN_FASHION_MNIST`` or Debian's ``dataset-fashion-mnist`` package
  (/usr/share/datasets/fashion-mnist). Nothing is downloaded.

An existing path wins over a built-in name (a folder called ``samples`` in the current
directory is that folder).

Preprocessing is the model's own (:func:`prepare`): files are read by
:func:`vizcnn.io.imageio.read_image` (grey for one-channel models), resized on the shorter
side and centre-cropped by :func:`vizcnn.io.inputs.fit`, normalised by
:func:`vizcnn.io.inputs.normalize`. Fashion-MNIST's 28×28 grey images are padded with
black to the input when it is at most 8 px larger (LeNet-5's 32×32, as its sample
checkpoint was trained), otherwise resized; three-channel models get them repeated.

An image that cannot be read or prepared is never fatal: the dataset yields a
:class:`Skipped` marker, :func:`collate` drops it from the batch and keeps it in
``Batch.skipped``, and the pass logs a warning (logger ``vizcnn.io.sources``) and counts it.
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..core.batch import Batch, Skipped
from ..core.errors import BadArgumentError, BadInputError, VizcnnError
from .samples import SAMPLES_DIR, resolve_sample  # DATA=samples: the images shipped inside the package

log = logging.getLogger("vizcnn.data")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FASHION_MNIST_ENV = "VIZCNN_FASHION_MNIST"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_SPLITS = {"test": "t10k", "train": "train"}
BUILTIN = ("samples", "fashion-mnist", "fashion-mnist:test", "fashion-mnist:train")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

#: Fashion-MNIST images are padded (not resized) to inputs at most this many px larger.
PAD_MARGIN = 8

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- sources


class ImageSource(ABC):
    """An ordered collection of images. Index i is image i's global index."""

    name: str
    classes: list[str] | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def describe(self, i: int) -> str:
        """The file path of image i, or ``source#i`` for images without one."""

    @abstractmethod
    def label(self, i: int) -> int | None:
        """Image i's class index (into ``classes`` where known), or None."""

    @abstractmethod
    def read(self, i: int, *, gray: bool = False) -> np.ndarray:
        """Image i as an H×W×C float32 array in [0, 1] (C = 1 if ``gray`` else 3);
        BadInputError when it cannot be read."""

    #: Small images are padded to the model's input rather than resized (Fashion-MNIST).
    pad_small: bool = False


@dataclass
class FileSource(ImageSource):
    """Images in files; ``labels[i]`` indexes ``classes`` (or is None)."""

    name: str
    paths: list[str]
    labels: list[int | None] = field(default_factory=list)
    classes: list[str] | None = None

    def __post_init__(self):
        if not self.labels:
            self.labels = [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, i: int) -> str:
        from .imageio import display_text

        return display_text(self.paths[i])  # a name that is not UTF-8, or holds a newline, shown escaped

    def label(self, i: int) -> int | None:
        return self.labels[i]

    def read(self, i: int, *, gray: bool = False) -> np.ndarray:
        from .imageio import read_image

        return read_image(self.paths[i], gray=gray)

    def head(self, n: int) -> "FileSource":
        return FileSource(self.name, self.paths[:n], self.labels[:n], self.classes)


@dataclass
class ArraySource(ImageSource):
    """Grey images held in memory: ``images`` (N, H, W) uint8, ``labels`` (N,)."""

    name: str
    images: np.ndarray
    labels_array: np.ndarray | None = None
    classes: list[str] | None = None
    pad_small: bool = True

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, i: int) -> str:
        return f"{self.name}#{i}"

    def label(self, i: int) -> int | None:
        return None if self.labels_array is None else int(self.labels_array[i])

    def read(self, i: int, *, gray: bool = False) -> np.ndarray:
        image = self.images[i].astype(np.float32)[:, :, None] / np.float32(255)
        return image if gray else np.repeat(image, 3, axis=2)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def folder_source(folder: PathLike, *, name: str | None = None) -> FileSource:
    """Every image file below ``folder`` (any depth), ordered by relative path; labels
    from the first-level subfolder (sorted class names) where there is one."""
    root = Path(folder)
    found: list[tuple[str, str]] = []  # (relative posix path, full path)
    seen: set[tuple[int, int]] = set()  # (device, inode) of every folder walked: a symlink cycle is walked once
    for here, dirs, files in os.walk(root, followlinks=True):
        try:
            info = os.stat(here)
        except OSError:
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_here = Path(here).relative_to(root)
        for f in files:
            if not f.startswith(".") and _is_image(f):
                found.append(((rel_here / f).as_posix(), os.path.join(here, f)))
    found.sort()
    if not found:
        raise BadInputError(f"DATA {os.fspath(folder)}: no image files in this folder or below "
                            f"(looked for {' '.join(IMAGE_SUFFIXES)})")
    tops = [rel.split("/", 1)[0] if "/" in rel else None for rel, _ in found]
    classes = sorted({t for t in tops if t is not None})
    index = {c: i for i, c in enumerate(classes)}
    labels = [None if t is None else index[t] for t in tops]
    return FileSource(name or os.fspath(folder), [p for _, p in found], labels, classes or None)


def list_source(list_file: PathLike) -> FileSource:
    """A list file: one image path per line (relative to the list file's folder, or
    absolute), optionally followed by whitespace and an integer label; blank lines
    and lines starting with ``#`` are ignored. Missing files are skipped and counted
    during the pass, like corrupt ones."""
    path = Path(list_file)
    text = _read_list(path)
    paths, labels = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_LIST_LINE:
            raise BadInputError(f"DATA {path}: line {number} is longer than {MAX_LIST_LINE} characters; "
                                "a list file holds one image path per line")
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        label = None
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            line, label = parts[0], int(parts[1])
        p = Path(line).expanduser()
        paths.append(os.fspath(p if p.is_absolute() else path.parent / p))
        labels.append(label)
    if not paths:
        raise BadInputError(f"DATA {path}: the list file names no images")
    return FileSource(os.fspath(path), paths, labels)


MAX_LIST_BYTES = 64 << 20
"""Largest list file read (64 MiB: about 600,000 paths of 100 characters)."""
MAX_LIST_LINE = 4096
"""Longest line of a list file, in characters (Linux's PATH_MAX, with room for a label)."""


def _read_list(path: Path) -> str:
    """A list file's text: a regular file of at most MAX_LIST_BYTES of UTF-8 (a leading
    byte-order mark is dropped) without NUL bytes; anything else is a one-line error."""
    from .imageio import open_regular

    with open_regular(path, f"DATA {path}", what="list file") as file:
        try:
            raw = file.read(MAX_LIST_BYTES + 1)
        except OSError as e:
            raise BadInputError(f"DATA {path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_LIST_BYTES:
        raise BadInputError(f"DATA {path}: list file larger than {MAX_LIST_BYTES} bytes; "
                            "split it, or give a folder of images")
    if b"\0" in raw:
        raise BadInputError(f"DATA {path}: not a folder, an image or a text list file of image paths "
                            "(it contains NUL bytes)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInputError(f"DATA {path}: not a folder, an image or a text list file of image paths") from None


def fashion_mnist_folder() -> Path:
    """Where the Fashion-MNIST IDX files are: ``$VIZCNN_FASHION_MNIST`` if set, else
    Debian's dataset-fashion-mnist location."""
    env = os.environ.get(FASHION_MNIST_ENV)
    return Path(env) if env else FASHION_MNIST_DIR


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    if os.environ.get(FASHION_MNIST_ENV):
        raise BadInputError(f"Fashion-MNIST: {stem}[.gz] not found in {folder} (${FASHION_MNIST_ENV})")
    raise BadInputError(f"Fashion-MNIST: {stem}[.gz] not found in {folder}; install Debian's "
                        f"dataset-fashion-mnist package (apt install dataset-fashion-mnist) or set "
                        f"{FASHION_MNIST_ENV} to a folder holding the IDX files")


def _read_idx(path: Path, ndim: int, limit: int | None) -> np.ndarray:
    """Reads an unsigned-byte IDX array (LeCun's format: magic 0 0 8 ndim, big-endian
    int32 sizes, then the bytes), only the first ``limit`` items when given."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) != 4 or head[:3] != b"\x00\x00\x08" or head[3] != ndim:
                raise BadInputError(f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s)")
            dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            n = dims[0] if limit is None else min(dims[0], limit)
            size = int(np.prod(dims[1:], dtype=np.int64)) if ndim > 1 else 1
            data = f.read(n * size)
    except (OSError, EOFError, gzip.BadGzipFile, struct.error) as e:
        raise BadInputError(f"{path}: cannot read IDX data: {e}") from None
    if len(data) != n * size:
        raise BadInputError(f"{path}: truncated: {len(data)} bytes where {n * size} were expected")
    return np.frombuffer(data, dtype=np.uint8).reshape(n, *dims[1:])


def fashion_mnist_arrays(split: str = "test", *, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``split`` (``test`` or ``train``): images (N, 28, 28) uint8 and
    labels (N,) uint8, the first ``limit`` only when given (only those are read)."""
    if split not in FASHION_MNIST_SPLITS:
        raise BadArgumentError(f"unknown Fashion-MNIST split {split!r}; choose test or train")
    folder = fashion_mnist_folder()
    prefix = FASHION_MNIST_SPLITS[split]
    images = _read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"), 3, limit)
    labels = _read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"), 1, limit)
    if len(images) != len(labels):
        raise BadInputError(f"Fashion-MNIST {split} in {folder}: {len(images)} images but {len(labels)} labels")
    return images, labels


def fashion_mnist_source(split: str = "test", *, limit: int | None = None) -> ArraySource:
    images, labels = fashion_mnist_arrays(split, limit=limit)
    return ArraySource(f"fashion-mnist:{split}", images, labels, list(FASHION_MNIST_CLASSES))


def open_data(data: PathLike, *, limit: int | None = None) -> ImageSource:
    """The collection a user means by DATA (see the module docstring); the first
    ``limit`` images of its order when given."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise BadArgumentError(f"limit must be a positive integer, got {limit!r}")
    text = os.fspath(resolve_sample(data))  # samples/NAME not here: the shipped copy, said on stderr
    path = Path(text).expanduser()
    if text and path.exists():
        if path.is_dir():
            source: ImageSource = folder_source(path, name=text)
        elif _is_image(path.name):
            source = FileSource(text, [text])
        else:
            source = list_source(path)
    elif text == "samples":
        source = folder_source(SAMPLES_DIR, name="samples")
    elif text.startswith("fashion-mnist"):
        split = text.partition(":")[2] or "test"
        if text.partition(":")[0] != "fashion-mnist" or split not in FASHION_MNIST_SPLITS:
            raise BadArgumentError(f"DATA {text!r}: choose fashion-mnist, fashion-mnist:test or fashion-mnist:train")
        return fashion_mnist_source(split, limit=limit)
    else:
        raise BadInputError(f"DATA {text!r}: no such file or folder; give a folder of images, a list file, "
                            f"an image, or one of {', '.join(BUILTIN)}")
    return source.head(limit) if limit is not None and isinstance(source, FileSource) else source


# --------------------------------------------------------------------------- preprocessing


def prepare(image: np.ndarray, spec, *, pad_small: bool = False,
            shown: str = "image") -> tuple[np.ndarray, torch.Tensor]:
    """An H×W×C image in [0, 1] → (the H×W×C display image the model sees, the
    normalised (C, H, W) tensor) for ``spec`` (a ModelSpec, or anything with
    ``input_size``, ``mean`` and ``std``). Too small an image is a BadInputError."""
    from .inputs import MAX_UPSCALE, fit, normalize

    c, h, w = spec.input_size
    if image.shape[2] != c:
        image = np.repeat(image[:, :, :1], c, axis=2) if image.shape[2] == 1 else \
            image[:, :, :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    ih, iw = image.shape[:2]
    if pad_small and ih <= h <= ih + PAD_MARGIN and iw <= w <= iw + PAD_MARGIN:
        top, left = (h - ih) // 2, (w - iw) // 2
        image = np.pad(image, ((top, h - ih - top), (left, w - iw - left), (0, 0)))
    else:
        if min(ih, iw) * MAX_UPSCALE < min(h, w):
            raise BadInputError(f"{shown}: {iw}×{ih} px is too small for the model's {w}×{h} input "
                                f"(more than {MAX_UPSCALE}× upscaling)")
        image = fit(image, (h, w))
    image = np.ascontiguousarray(image, dtype=np.float32)
    return image, normalize(image, spec)[0]


def load(source: ImageSource, i: int, spec) -> tuple[np.ndarray, torch.Tensor]:
    """Image i of ``source`` prepared for ``spec``: (display image, (C, H, W) tensor). An
    image file is read at the input's size (:func:`vizcnn.io.imageio.read_fitted`: one
    float copy, at that size)."""
    gray = spec.input_size[0] == 1
    if isinstance(source, FileSource) and not source.pad_small:
        from .imageio import read_fitted
        from .inputs import MAX_UPSCALE

        c, h, w = spec.input_size
        image, (ih, iw) = read_fitted(source.paths[i], (h, w), gray=gray)
        if min(ih, iw) * MAX_UPSCALE < min(h, w):
            raise BadInputError(f"{source.describe(i)}: {iw}×{ih} px is too small for the model's {w}×{h} input "
                                f"(more than {MAX_UPSCALE}× upscaling)")
    else:
        image = source.read(i, gray=gray)
    return prepare(image, spec, pad_small=source.pad_small, shown=source.describe(i))


class ModelInputs(torch.utils.data.Dataset):
    """The images ``indices`` of ``source`` (all when None) as model inputs: item j is
    (global index, (C, H, W) tensor) or a :class:`Skipped` marker."""

    def __init__(self, source: ImageSource, spec, indices: Sequence[int] | None = None):
        self.source, self.spec = source, spec
        self.indices = range(len(source)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = int(self.indices[j])
        try:
            return i, load(self.source, i, self.spec)[1]
        except (VizcnnError, OSError, ValueError, MemoryError) as e:  # cv2.error is an Exception too
            return Skipped(i, self.source.describe(i), " ".join(str(e).split()) or type(e).__name__)
        except Exception as e:  # noqa: BLE001 — any decoder failure on one file must not end the run
            return Skipped(i, self.source.describe(i), f"{type(e).__name__}: {' '.join(str(e).split())}")


def collate(items: list) -> Batch:
    """Stacks the usable items of a batch; Skipped markers go to ``Batch.skipped``."""
    good = [it for it in items if not isinstance(it, Skipped)]
    skipped = [it for it in items if isinstance(it, Skipped)]
    index = torch.tensor([i for i, _ in good], dtype=torch.long)
    x = torch.stack([t for _, t in good]) if good else None
    return Batch(index, x, skipped)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def _worker_init(_worker_id: int) -> None:
    # Workers decode one image at a time: extra threads per worker only compete. Safe
    # because the parent's OpenCV pool was stopped before the fork (_Loader.__iter__).
    from .opencv import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


class _Loader(torch.utils.data.DataLoader):
    """A DataLoader whose worker processes are forked while OpenCV's thread pool is
    stopped (:func:`vizcnn.io.opencv.fork_safe`): a fork that copies a live pool hangs the
    worker. Fork, not spawn or forkserver, because it is the fastest start (measured in
    fork_safe's docstring) and needs no ``if __name__ == "__main__"`` guard in scripts."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        from .opencv import fork_safe

        with fork_safe():  # workers start here (or on the first iteration, persistent or not)
            return super().__iter__()


def _start_method() -> str | None:
    # fork on Linux (the pool is stopped around it); elsewhere the platform's default,
    # since macOS system libraries are not fork-safe at all.
    return "fork" if sys.platform.startswith("linux") else None


def loader(source: ImageSource, spec, *, indices: Sequence[int] | None = None, batch_size: int = 32,
           num_workers: int | None = None, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader of :class:`Batch` over ``indices`` of ``source`` in order, decoding in
    ``num_workers`` worker processes (default min(4, CPU count); 0 decodes in this one)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BadArgumentError(f"batch size must be a positive integer, got {batch_size!r}")
    workers = default_workers() if num_workers is None else num_workers
    if not isinstance(workers, int) or workers < 0:
        raise BadArgumentError(f"workers must be a non-negative integer, got {num_workers!r}")
    return _Loader(
        ModelInputs(source, spec, indices), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=collate, pin_memory=pin_memory, worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None, multiprocessing_context=_start_method() if workers else None)




class TensorSource(ImageSource):
    """Images already in memory as a (N, 3, H, W) tensor in [0, 1]."""

    def __init__(self, name: str, images: torch.Tensor):
        self.name, self.images = name, images.detach().cpu()

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, i: int) -> str:
        return f"{self.name}#{i}"

    def label(self, i: int) -> int | None:
        return None

    def read(self, i: int, *, gray: bool = False) -> np.ndarray:
        return self.images[i].permute(1, 2, 0).numpy()


__all__ = ["IMAGE_SUFFIXES", "SAMPLES_DIR", "FASHION_MNIST_CLASSES", "ImageSource", "FileSource", "ArraySource",
           "TensorSource", "ModelInputs", "folder_source", "list_source", "fashion_mnist_folder",
           "fashion_mnist_arrays", "fashion_mnist_source", "open_data", "prepare", "load", "collate", "loader",
           "default_workers"]
