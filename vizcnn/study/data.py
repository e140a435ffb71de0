"""The ZFNet study's data streams: labelled training batches identical for every design
(same seed → same images in the same order), and fixed held-out and probe sets, from
rendered fractals (:class:`FractalStream`) or an image collection (:class:`SourceStream`).
``vizcnn.methods.study.train`` consumes them."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..core.errors import BadInputError
from .fractals import FractalSource
from ..io.sources import ImageSource, loader, open_data


class Recipe(Protocol):
    """What a stream needs of the study's recipe (``vizcnn.methods.study.Preset`` has it)."""

    data: str
    size: int
    classes: int
    batch: int
    steps: int
    workers: int
    eval_images: int
    probe_images: int


PIXEL_SCALE = 255.0  # inputs are (image - mean) · 255, the paper's raw-pixel scale


class FractalStream:
    """The study's built-in data: labelled fractal batches, identical for every design
    (same seed → same images in the same order), and fixed held-out and probe sets."""

    MEAN = 0.25  # the fractal images' average intensity, subtracted before scaling
    name = "fractals"

    def __init__(self, preset: Recipe, *, seed: int, device: torch.device, source_seed: int | None = None):
        # ``source_seed`` draws the classes (the IFS systems); ``seed`` the images and their order
        self.preset, self.seed, self.device = preset, seed, device
        self.mean = self.MEAN
        self.classes = [f"IFS {i}" for i in range(preset.classes)]
        self.source = FractalSource(preset.classes, preset.size, seed=seed if source_seed is None else source_seed,
                                    device=device)

    def describe(self) -> str:
        p = self.preset
        return f"fractals (FractalDB-style IFS, {p.classes} classes, {p.size}px, rendered per step)"

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device if self.device.type == "cuda" else "cpu").manual_seed(seed)

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = self._generator(self.seed * 1_000_003 + step)
        labels = torch.randint(self.preset.classes, (self.preset.batch,), generator=g, device=g.device)
        return self.prepare(self.source.batch(labels, g)), labels.to(self.device)

    def batches(self, start_step: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(step, prepared images, labels) for steps start_step + 1 … preset.steps."""
        for step in range(start_step + 1, self.preset.steps + 1):
            yield (step, *self.train_batch(step))

    def fixed_set(self, n: int, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n images in [0, 1] with balanced labels, from a seed no training batch uses."""
        labels = torch.arange(n) % self.preset.classes
        images = torch.cat([self.source.batch(labels[i:i + 256], self._generator(-(salt + i + 1) % 2**62))
                            for i in range(0, n, 256)])
        return images, labels.to(self.device)

    def heldout(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fixed_set(self.preset.eval_images, salt=1)

    def probe(self) -> torch.Tensor:
        return self.fixed_set(self.preset.probe_images, salt=2)[0]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) * PIXEL_SCALE


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


SPLIT_SEED = 20140101


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
                            f"with one subfolder per class (ImageFolder layout), fashion-mnist, or fractals")
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
    """Labelled images from files or Fashion-MNIST, decoded in DataLoader workers. Seed i
    fixes the order (one permutation of the training images per epoch), so every design
    trained with seed i sees the same images in the same order; the held-out images are
    never in a training batch."""

    def __init__(self, preset: Recipe, data: str, *, seed: int, device: torch.device):
        self.preset, self.seed, self.device, self.data = preset, seed, device, data
        self.train_source, self.heldout_source = labelled_split(data)
        self.classes = list(self.train_source.classes)
        self.name = data
        self.spec = _Resize((3, preset.size, preset.size))
        self.train_labels = torch.tensor([self.train_source.label(i) for i in range(len(self.train_source))])
        self._held = None
        self.mean = float(self.probe().mean())  # the data's average intensity, from images no step trains on

    def describe(self) -> str:
        return (f"{self.data} ({len(self.classes)} classes; {len(self.train_source)} training images, "
                f"{len(self.heldout_source)} held out; resized/cropped to {self.preset.size}px, grey as 3 channels)")

    def _order(self, first: int, count: int) -> list[int]:
        """Positions first … first + count − 1 of this seed's endless epoch order."""
        n, order, epoch = len(self.train_source), [], first // len(self.train_source)
        offset = first - epoch * n
        while len(order) < count:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order += torch.randperm(n, generator=g)[offset:].tolist()
            epoch, offset = epoch + 1, 0
        return order[:count]

    def batches(self, start_step: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        b = self.preset.batch
        indices = self._order(start_step * b, (self.preset.steps - start_step) * b)
        batches = loader(self.train_source, self.spec, indices=indices, batch_size=b,
                         num_workers=self.preset.workers, pin_memory=self.device.type == "cuda")
        for step, batch in zip(range(start_step + 1, self.preset.steps + 1), batches):
            if batch.x is None:
                continue  # every image of this batch was unreadable (counted in the data pass's warnings)
            x = self.prepare(batch.x.to(self.device, non_blocking=True))
            yield step, x, self.train_labels[batch.index].to(self.device)

    def _held_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first max(eval_images, probe_images) held-out images in [0, 1], and labels."""
        if self._held is None:
            n = min(max(self.preset.eval_images, self.preset.probe_images), len(self.heldout_source))
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

    def heldout(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._held_set()
        return x[:self.preset.eval_images], y[:self.preset.eval_images]

    def probe(self) -> torch.Tensor:
        """The first ``probe_images`` held-out images, in [0, 1]."""
        return self._held_set()[0][:self.preset.probe_images]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) * PIXEL_SCALE


def open_stream(preset: Recipe, data: str | None, *, seed: int, device: torch.device,
                source_seed: int | None = None):
    """The study's data for DATA (the preset's own when None): ``fractals`` (rendered on
    ``device``; ``source_seed`` draws its classes), ``fashion-mnist``, or a labelled
    collection in the dataset passes' grammar. Returns a stream whose ``classes`` fix the
    number of outputs."""
    data = preset.data if data is None else data
    if data == "fractals":
        return FractalStream(preset, seed=seed, device=device, source_seed=source_seed)
    return SourceStream(preset, data, seed=seed, device=device)


__all__ = ["PIXEL_SCALE", "FractalStream", "SourceStream", "SubsetSource", "labelled_split", "open_stream"]
