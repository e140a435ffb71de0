"""The ZFNet study's data: labelled training batches identical for every design (same
seed → same images in the same order), and fixed held-out and probe sets.

Three kinds of DATA:

- ``fashion-mnist-canvas`` (the ``cpu`` preset's): Fashion-MNIST's 28 px images at their
  native resolution, each pasted at a random position of a larger canvas in a random
  foreground and background colour (bright on dark). Not upscaled, so the garments keep their pixel-sharp
  edges (energy a stride-4 first layer folds: about a quarter of it lies outside stride
  4's Nyquist square, against 3% for the upscaled images), and in colour, so conv1's
  colour channels receive a gradient (grey images fed as three equal channels leave the
  filters' colour differences at their initial noise).
- ``fractals`` (the ``gpu`` preset's): FractalDB-style colour IFS images, rendered once
  per run into a fixed labelled set at the preset's size (``train_images`` of them, and a
  held-out set drawn with seeds no training image uses).
- anything the dataset passes read (``fashion-mnist`` upscaled, a class-folder tree): a
  fixed 90/10 split, decoded in DataLoader workers (:class:`SourceStream`).

Seed i fixes the order of the training images (one permutation per epoch) and, for the
canvas, each training image's position and colours; the held-out set is the same for
every seed. ``vizcnn.study.train.train`` consumes the streams.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..core.errors import BadInputError
from ..io.sources import ImageSource, fashion_mnist_arrays, loader, open_data
from .fractals import FractalSource


class Recipe(Protocol):
    """What a stream needs of the study's recipe (``vizcnn.study.train.Preset`` has it)."""

    data: str
    size: int
    classes: int
    batch: int
    steps: int
    workers: int
    eval_images: int | None
    probe_images: int
    train_images: int


PIXEL_SCALE = 255.0  # inputs are (image - mean) · 255, the paper's raw-pixel scale
SPLIT_SEED = 20140101  # draws every held-out image (and the split of a collection): the same for every seed


def _order(seed: int, n: int, first: int, count: int) -> list[int]:
    """Positions first … first + count − 1 of seed's endless epoch order over n images."""
    order, epoch = [], first // n
    offset = first - epoch * n
    while len(order) < count:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order += torch.randperm(n, generator=g)[offset:].tolist()
        epoch, offset = epoch + 1, 0
    return order[:count]


class TensorStream:
    """A labelled training set and a held-out set held in memory as uint8 tensors:
    batches in seed's epoch order, each image passed through :meth:`compose` (the identity
    here; the canvas places and colours it)."""

    name = "tensors"
    mean = 0.5
    grey = False  # colour images: conv1's colour channels train

    def __init__(self, preset: Recipe, *, seed: int, device: torch.device, train: tuple, heldout: tuple,
                 classes: Sequence[str]):
        self.preset, self.seed, self.device = preset, seed, device
        self.train_x, self.train_y = train
        self.held_x, self.held_y = heldout
        self.classes = list(classes)

    def compose(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 images → float images in [0, 1] at the preset's size."""
        return images.float() / 255

    def batches(self, start_step: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(step, prepared images, labels) for steps start_step + 1 … preset.steps."""
        b = self.preset.batch
        order = torch.tensor(_order(self.seed, len(self.train_x), start_step * b, (self.preset.steps - start_step) * b))
        for j, step in enumerate(range(start_step + 1, self.preset.steps + 1)):
            idx = order[j * b:(j + 1) * b]
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 7)
            x = self.compose(self.train_x[idx], g).to(self.device)
            yield step, self.prepare(x), self.train_y[idx].to(self.device)

    def heldout(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out images in [0, 1] (all of them, or the first ``limit``) and labels."""
        n = len(self.held_x) if limit is None else min(limit, len(self.held_x))
        return self.held_x[:n].float().div(255).to(self.device), self.held_y[:n].to(self.device)

    def probe(self) -> torch.Tensor:
        """The first ``probe_images`` held-out images, in [0, 1]."""
        return self.heldout(self.preset.probe_images)[0]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) * PIXEL_SCALE


def _quantise(images: torch.Tensor) -> torch.Tensor:
    return images.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu()


class CanvasStream(TensorStream):
    """Fashion-MNIST at native resolution on a coloured canvas (see the module docstring).
    Each image: a dark background colour uniform in [0, 0.4]³, a bright foreground colour
    uniform in [0.6, 1]³ (so every channel keeps at least 0.2 of contrast), and the 28 px
    glyph at a uniformly random position of the ``size`` px canvas."""

    name = "fashion-mnist-canvas"
    GLYPH = 28

    def __init__(self, preset: Recipe, *, seed: int, device: torch.device):
        if preset.size < self.GLYPH:
            raise BadInputError(f"fashion-mnist-canvas needs a canvas of at least {self.GLYPH}px, "
                                f"the preset's input is {preset.size}px")
        from ..io.sources import FASHION_MNIST_CLASSES

        tx, ty = fashion_mnist_arrays("train")
        hx, hy = fashion_mnist_arrays("test")
        train = torch.from_numpy(np.array(tx)), torch.from_numpy(np.array(ty)).long()
        glyphs = torch.from_numpy(np.array(hx))
        held = _quantise(self.compose(glyphs, torch.Generator().manual_seed(SPLIT_SEED), preset.size))
        super().__init__(preset, seed=seed, device=device, train=train, heldout=(held, torch.from_numpy(np.array(hy)).long()),
                         classes=FASHION_MNIST_CLASSES)

    def compose(self, images: torch.Tensor, generator: torch.Generator, size: int | None = None) -> torch.Tensor:
        size = self.preset.size if size is None else size
        n, k = len(images), self.GLYPH
        out = torch.empty(n, 3, size, size)
        glyph = images.float().div(255).unsqueeze(1)  # (n, 1, 28, 28)
        for start in range(0, n, 4096):  # bounded memory for the 10,000 held-out images
            sl = slice(start, min(n, start + 4096))
            m = sl.stop - sl.start
            fg = 0.6 + 0.4 * torch.rand(m, 3, 1, 1, generator=generator)
            bg = 0.4 * torch.rand(m, 3, 1, 1, generator=generator)
            pos = torch.randint(0, size - k + 1, (m, 2), generator=generator)
            canvas = bg.expand(m, 3, size, size).clone()
            for i in range(m):
                y, x = int(pos[i, 0]), int(pos[i, 1])
                canvas[i, :, y:y + k, x:x + k] = bg[i] + (fg[i] - bg[i]) * glyph[sl.start + i]
            out[sl] = canvas
        return out

    def describe(self) -> str:
        return (f"fashion-mnist-canvas (Fashion-MNIST's 28 px images at native resolution, pasted at random "
                f"positions of a {self.preset.size}px canvas in random colours; 10 classes; "
                f"{len(self.train_x)} training images, {len(self.held_x)} held out)")


class FractalStream(TensorStream):
    """FractalDB-style colour fractals (``vizcnn.study.fractals``), rendered once into a fixed
    labelled set: ``train_images`` training images and ``eval_images`` held-out ones, in
    balanced classes. ``source_seed`` draws the classes (the IFS systems), the same for
    every seed; ``seed`` only orders the training set."""

    name = "fractals"

    def __init__(self, preset: Recipe, *, seed: int, device: torch.device, source_seed: int | None = None,
                 cache: dict | None = None):
        key = (preset.classes, preset.size, preset.train_images, preset.eval_images, source_seed, str(device))
        if cache is not None and key in cache:
            train, held = cache[key]
        else:
            source = FractalSource(preset.classes, preset.size, seed=0 if source_seed is None else source_seed,
                                   device=device)
            train = self._render(source, preset.train_images, salt=1, device=device)
            held = self._render(source, preset.eval_images or 1000, salt=2, device=device)
            if cache is not None:
                cache[key] = train, held
        super().__init__(preset, seed=seed, device=device, train=train, heldout=held,
                         classes=[f"IFS {i}" for i in range(preset.classes)])

    @staticmethod
    def _render(source: FractalSource, n: int, *, salt: int, device: torch.device) -> tuple:
        labels = torch.arange(n) % source.num_classes
        g = torch.Generator(device=device if device.type == "cuda" else "cpu")
        images = []
        for i in range(0, n, 512):
            g.manual_seed(SPLIT_SEED * 31 + salt * 1_000_003 + i)
            images.append(_quantise(source.batch(labels[i:i + 512], g)))
        return torch.cat(images), labels

    def describe(self) -> str:
        p = self.preset
        return (f"fractals (FractalDB-style colour IFS, {p.classes} classes, {p.size}px; {len(self.train_x)} "
                f"training images rendered once, {len(self.held_x)} held out)")


class SubsetSource(ImageSource):
    """Images ``indices`` of ``source``, in that order (a split of a collection)."""

    def __init__(self, source: ImageSource, indices: Sequence[int], name: str):
        self.source, self.indices, self.name = source, list(indices), name
        self.classes, self.pad_small = source.classes, source.pad_small

    def __len__(self) -> int:
        return len(self.indices)

    def describe(self, i: int) -> str:
        return self.source.describe(self.indices[i])

    def label(self, i: int) -> int | None:
        return self.source.label(self.indices[i])

    def read(self, i: int, *, gray: bool = False) -> np.ndarray:
        return self.source.read(self.indices[i], gray=gray)


#: the share of a class-folder tree held out from training (a fixed split, the same for every seed)
HELDOUT_FRACTION = 0.1


def labelled_split(data: str) -> tuple[ImageSource, ImageSource]:
    """DATA → (training images, held-out images), both labelled. ``fashion-mnist`` trains
    on its train split and holds out its test split; any other collection with labels
    (a folder of class subfolders, a list file with labels) is split once, by a fixed
    seed, into 90% training and 10% held out, per class."""
    if data.partition(":")[0] == "fashion-mnist":
        return open_data("fashion-mnist:train"), open_data("fashion-mnist:test")
    source = open_data(data)
    labels = [source.label(i) for i in range(len(source))]
    if not source.classes or len(source.classes) < 2 or any(y is None for y in labels):
        raise BadInputError(f"--data {data}: the study needs labelled images in at least 2 classes — a folder "
                            f"with one subfolder per class (ImageFolder layout), fashion-mnist, "
                            f"fashion-mnist-canvas, or fractals")
    g = torch.Generator().manual_seed(SPLIT_SEED)
    by_class: dict[int, list[int]] = {}
    for i in torch.randperm(len(source), generator=g).tolist():
        by_class.setdefault(labels[i], []).append(i)
    train_idx, held_idx = [], []
    for members in by_class.values():
        k = max(1, round(len(members) * HELDOUT_FRACTION)) if len(members) > 1 else 0
        held_idx += members[:k]
        train_idx += members[k:]
    if not held_idx or not train_idx:
        raise BadInputError(f"--data {data}: too few images to hold some out ({len(source)} in all)")
    return SubsetSource(source, sorted(train_idx), f"{source.name}:train"), \
        SubsetSource(source, sorted(held_idx), f"{source.name}:held-out")


@dataclass(frozen=True)
class _Resize:
    """What :func:`vizcnn.io.sources.loader` needs to resize/crop to the preset's size and feed
    grey images as 3 equal channels, leaving values in [0, 1]."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)


class SourceStream:
    """Labelled images from files or Fashion-MNIST (upscaled), decoded in DataLoader
    workers. Seed i fixes the order (one permutation of the training images per epoch);
    the held-out images are never in a training batch."""

    def __init__(self, preset: Recipe, data: str, *, seed: int, device: torch.device):
        self.preset, self.seed, self.device, self.data = preset, seed, device, data
        self.train_source, self.heldout_source = labelled_split(data)
        self.classes = list(self.train_source.classes)
        self.name = data
        self.grey = data.partition(":")[0] == "fashion-mnist"  # grey images fed as 3 equal channels
        self.spec = _Resize((3, preset.size, preset.size))
        self.train_labels = torch.tensor([self.train_source.label(i) for i in range(len(self.train_source))])
        self._held = None
        self.mean = float(self.probe().mean())  # the data's average intensity, from images no step trains on

    def describe(self) -> str:
        return (f"{self.data} ({len(self.classes)} classes; {len(self.train_source)} training images, "
                f"{len(self.heldout_source)} held out; resized/cropped to {self.preset.size}px, grey as 3 channels)")

    def batches(self, start_step: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        b = self.preset.batch
        indices = _order(self.seed, len(self.train_source), start_step * b, (self.preset.steps - start_step) * b)
        batches = loader(self.train_source, self.spec, indices=indices, batch_size=b,
                         num_workers=self.preset.workers, pin_memory=self.device.type == "cuda")
        for step, batch in zip(range(start_step + 1, self.preset.steps + 1), batches):
            if batch.x is None:
                continue  # every image of this batch was unreadable (counted in the data pass's warnings)
            x = self.prepare(batch.x.to(self.device, non_blocking=True))
            yield step, x, self.train_labels[batch.index].to(self.device)

    def _held_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every held-out image in [0, 1] (at most ``eval_images`` when the preset caps it), and labels."""
        if self._held is None:
            cap = self.preset.eval_images
            n = len(self.heldout_source) if cap is None else min(max(cap, self.preset.probe_images),
                                                                  len(self.heldout_source))
            xs, ys = [], []
            for batch in loader(self.heldout_source, self.spec, indices=range(n), batch_size=256,
                                num_workers=self.preset.workers):
                if batch.x is not None:
                    xs.append(batch.x)
                    ys.append(torch.tensor([self.heldout_source.label(int(i)) for i in batch.index]))
            if not xs:
                raise BadInputError(f"--data {self.data}: no readable held-out images")
            self._held = torch.cat(xs).to(self.device), torch.cat(ys).to(self.device)
        return self._held

    def heldout(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._held_set()
        return (x, y) if limit is None else (x[:limit], y[:limit])

    def probe(self) -> torch.Tensor:
        """The first ``probe_images`` held-out images, in [0, 1]."""
        return self._held_set()[0][:self.preset.probe_images]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) * PIXEL_SCALE


DATA_NAMES = ("fashion-mnist-canvas", "fractals", "fashion-mnist")


def open_stream(preset: Recipe, data: str | None, *, seed: int, device: torch.device,
                source_seed: int | None = None, cache: dict | None = None):
    """The study's data for DATA (the preset's own when None): ``fashion-mnist-canvas``,
    ``fractals`` (rendered on ``device``; ``source_seed`` draws its classes; ``cache``
    keeps the rendered set across seeds), or a labelled collection in the dataset passes'
    grammar (``fashion-mnist``, a class-folder tree). Returns a stream whose ``classes``
    fix the number of outputs."""
    data = preset.data if data is None else data
    if data == "fractals":
        return FractalStream(preset, seed=seed, device=device, source_seed=source_seed, cache=cache)
    if data == "fashion-mnist-canvas":
        if cache is not None and "canvas" in cache:  # the decoded images once, a stream per seed
            out = copy.copy(cache["canvas"])
            out.seed, out.preset, out.device = seed, preset, device
            return out
        stream = CanvasStream(preset, seed=seed, device=device)
        if cache is not None:
            cache["canvas"] = stream
        return stream
    return SourceStream(preset, data, seed=seed, device=device)


__all__ = ["PIXEL_SCALE", "DATA_NAMES", "TensorStream", "CanvasStream", "FractalStream", "SourceStream",
           "SubsetSource", "labelled_split", "open_stream"]
