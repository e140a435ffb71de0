"""The ZFNet first-layer study (Zeiler & Fergus 2014, §4.1, Fig. 6): training.

Two (or more) first-layer designs — AlexNet's 11×11 stride 4, ZFNet's 7×7 stride 2 —
trained on the same data, with the same recipe, seed, order of examples and budget,
so that any difference in their first layers comes from the design alone. The
networks are ZFNet's (Fig. 3) with the first layer swapped; conv2's stride follows
conv1's so that layer 2's map size matches the published ones (1 after a stride-4
conv1, as in AlexNet; 2 after a stride-2 conv1, as in ZFNet). At the ``gpu`` preset's
full width the 7×7/2 design *is* the registry's ``zfnet``.

Analysis of the trained models is in ``vizcnn.study_report``.
"""
from __future__ import annotations

import json
import math
from collections import Counter
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageSource, loader, open_data
from .errors import BadArgumentError, BadInputError
from .fractals import FractalSource
from .models.zfnet import ZFNet, conv2_stride_for, zfnet

#: Zeiler & Fergus renormalise "each filter in the convolutional layers whose RMS value
#: exceeds a fixed radius of 1e-1" back to that radius, on inputs "roughly in [-128, 128]".
RENORM_RMS = 0.1
PIXEL_SCALE = 255.0  # inputs are (image - mean) · 255, the paper's raw-pixel scale


@dataclass(frozen=True)
class Preset:
    """Everything that sets the budget and the recipe of one study run."""

    name: str
    size: int  # input side, px
    classes: int
    channels: tuple[int, int]  # conv1, conv2
    widths: tuple[int, int, int]  # conv3-5
    hidden: int  # fc6, fc7
    steps: int
    batch: int
    optimizer: str  # "sgd" (the paper's recipe) or "adam"
    lr: float
    weight_decay: float = 5e-4
    momentum: float = 0.9
    conv1_init_std: float = 1e-2  # the paper's "weights initialized to 1e-2"
    renorm: bool = True
    eval_images: int = 1000
    probe_images: int = 256  # images the analysis (top-9, dead filters) runs over
    evolution: tuple[int, ...] = ()  # steps at which Fig. 4 snapshots are taken
    checkpoint_every: int = 200
    amp: bool = False
    data: str = "fractals"  # DATA when --data is not given: fractals, fashion-mnist or a class-folder tree
    workers: int = 1  # DataLoader workers decoding files (fractals are rendered in-process)


PRESETS = {
    # The whole pipeline in seconds, for tests: tiny nets, a few steps.
    "ci": Preset("ci", size=64, classes=10, channels=(16, 24), widths=(32, 32, 24), hidden=64, steps=12, batch=16,
                 optimizer="adam", lr=1e-3, conv1_init_std=1e-3, eval_images=40, probe_images=24,
                 evolution=(1, 6, 12), checkpoint_every=5),
    # Real data on two CPU cores: Fashion-MNIST upscaled to 64 px, both designs × 3 seeds
    # within 45 minutes. Measured on 2 cores: 0.08 s (11×11/4) and 0.17 s (7×7/2) per
    # step of 64 images, so 2000 steps × 2 designs × 3 seeds ≈ 25 min of training plus the
    # analysis. The plain recipe (SGD 1e-2 from N(0, 1e-2)) leaves conv1 near its
    # initialisation in CPU minutes; Adam from a small conv1 init grows structured filters
    # within a few hundred steps. lr 3e-4, not 1e-3: at 300 steps both reach 77.7% held-out
    # top-1, but 1e-3 leaves 101/128 (11×11/4) and 114/128 (7×7/2) conv2 units dead, 3e-4
    # 29 and 74 (docs/study/README.md).
    "cpu": Preset("cpu", size=64, classes=10, channels=(96, 128), widths=(192, 192, 128), hidden=512,
                  steps=2000, batch=64, optimizer="adam", lr=3e-4, conv1_init_std=1e-3, eval_images=2000,
                  probe_images=256, evolution=(25, 100, 500, 2000), checkpoint_every=250, data="fashion-mnist"),
    # Paper scale on one GPU: 224², full ZFNet widths, the paper's SGD recipe, bf16 autocast, channels-last.
    "gpu": Preset("gpu", size=224, classes=1000, channels=(96, 256), widths=(384, 384, 256), hidden=4096,
                  steps=6000, batch=128, optimizer="sgd", lr=1e-2, eval_images=5000, probe_images=2048,
                  evolution=(100, 500, 2000, 6000), checkpoint_every=1000, amp=True),
}

DESIGN_NAMES = {(11, 4): "alexnet-2012", (7, 2): "zfnet"}


def design_name(conv1: tuple[int, int]) -> str:
    k, s = conv1
    return DESIGN_NAMES.get((k, s), f"conv1-{k}x{k}s{s}")


def parse_designs(text: str) -> list[tuple[int, int]]:
    """``"11/4,7/2"`` → [(11, 4), (7, 2)]."""
    designs = []
    for part in text.split(","):
        try:
            k, s = (int(v) for v in part.strip().split("/"))
        except ValueError:
            raise BadArgumentError(f"--conv1 {part.strip()!r}: expected KERNEL/STRIDE such as 11/4") from None
        if k < 1 or s < 1 or s > k:
            raise BadArgumentError(f"--conv1 {k}/{s}: kernel and stride must be positive, stride ≤ kernel")
        designs.append((k, s))
    if len(set(designs)) != len(designs):
        raise BadArgumentError(f"--conv1 {text!r} names a design twice")
    return designs


def build(preset: Preset, conv1: tuple[int, int], *, seed: int) -> ZFNet:
    """The study network for one first-layer design, seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = zfnet(num_classes=preset.classes, conv1=conv1, channels=preset.channels, widths=preset.widths,
                      hidden=preset.hidden, input_size=preset.size, conv2_stride=conv2_stride_for(conv1[1]))
        # The paper's N(0, 1e-2) everywhere vanishes through narrow layers (each layer
        # scales the signal by about 1e-2·sqrt(fan-in)); the body gets He init instead, and
        # conv1 — the layer under study — its own small Gaussian.
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(model.features.conv1.weight, std=preset.conv1_init_std)
    return model


@torch.no_grad()
def renormalize_(model: nn.Module, max_rms: float = RENORM_RMS) -> int:
    """Scales every conv filter whose RMS exceeds ``max_rms`` back to ``max_rms`` (ZF §3).
    Returns how many filters were rescaled."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            rms = m.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
            over = rms > max_rms
            if over.any():
                m.weight[over] *= (max_rms / rms[over]).view(-1, 1, 1, 1)
                count += int(over.sum())
    return count


class FractalStream:
    """The study's built-in data: labelled fractal batches, identical for every design
    (same seed → same images in the same order), and fixed held-out and probe sets."""

    MEAN = 0.25  # the fractal images' average intensity, subtracted before scaling
    name = "fractals"

    def __init__(self, preset: Preset, *, seed: int, device: torch.device, source_seed: int | None = None):
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
    """What :func:`vizcnn.data.loader` needs to resize/crop to the preset's size and feed
    grey images as 3 equal channels, leaving values in [0, 1]."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)


class SourceStream:
    """Labelled images from files or Fashion-MNIST, decoded in DataLoader workers. Seed i
    fixes the order (one permutation of the training images per epoch), so every design
    trained with seed i sees the same images in the same order; the held-out images are
    never in a training batch."""

    def __init__(self, preset: Preset, data: str, *, seed: int, device: torch.device):
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


def open_stream(preset: Preset, data: str | None, *, seed: int, device: torch.device,
                source_seed: int | None = None):
    """The study's data for DATA (the preset's own when None): ``fractals`` (rendered on
    ``device``; ``source_seed`` draws its classes), ``fashion-mnist``, or a labelled
    collection in the dataset passes' grammar. Returns a stream whose ``classes`` fix the
    number of outputs."""
    data = preset.data if data is None else data
    if data == "fractals":
        return FractalStream(preset, seed=seed, device=device, source_seed=source_seed)
    return SourceStream(preset, data, seed=seed, device=device)


@dataclass
class Curves:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    train_top1: list[float] = field(default_factory=list)
    images_per_s: list[float] = field(default_factory=list)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> tuple[float, float]:
    """Held-out top-1 and top-5 accuracy (fractions)."""
    was = model.training
    model.eval()
    top1 = top5 = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch])
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += int((best[:, 0] == y[i:i + batch]).sum())
            top5 += int((best == y[i:i + batch, None]).any(1).sum())
    model.train(was)
    return top1 / len(x), top5 / len(x)


def checkpoint_path(folder: Path, conv1: tuple[int, int], seed: int | None = None) -> Path:
    return folder / f"{design_name(conv1)}{'' if seed is None else f'-seed{seed}'}.pt"


def train(preset: Preset, conv1: tuple[int, int], stream, folder: Path, *, seed: int,
          on_snapshot: Callable[[int, nn.Module], None] | None = None,
          log: Callable[[str], None] = print, tag: str | None = None) -> tuple[nn.Module, Curves, float]:
    """Trains one design on ``stream`` (a :class:`FractalStream` or :class:`SourceStream`
    seeded with ``seed``), checkpointing to ``folder/<design>[-seedN].pt`` every
    ``preset.checkpoint_every`` steps and resuming from there. Returns (model in eval
    mode, training curves, seconds spent training in this call)."""
    device = stream.device
    label = tag or design_name(conv1)
    model = build(preset, conv1, seed=seed).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if preset.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=preset.momentum,
                              weight_decay=preset.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    # Annealed as the paper does by hand: ×0.1 for the last quarter of the budget.
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [math.ceil(preset.steps * 0.75)], gamma=0.1)
    curves, start_step = Curves(), 0
    ckpt = checkpoint_path(folder, conv1, None if tag is None else seed)
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        # the annealing point follows this run's budget, so a resumed run with a new --steps
        # is the run that budget would have been from the start (up to the checkpoint)
        sched.milestones = Counter([math.ceil(preset.steps * 0.75)])
        curves = Curves(**{k: list(v) for k, v in json.loads(state["curves"]).items()})
        start_step = int(state["step"])
        log(f"{label}: resuming at step {start_step}/{preset.steps}")
    config = json.dumps({"preset": asdict(preset), "conv1": list(conv1), "seed": seed, "mean": stream.mean,
                         "classes": list(stream.classes), "data": stream.name})
    model.train()
    t0, seen = time.time(), 0
    spent = 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for step, x, y in stream.batches(start_step):
            torch.manual_seed(seed * 1_000_003 + step)  # dropout's own seed per step: a resumed run is the same run
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=preset.amp and device.type == "cuda"):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if preset.renorm:
                renormalize_(model)
            seen += len(x)
            if step % max(1, preset.steps // 40) == 0 or step == preset.steps:
                curves.step.append(step)
                curves.loss.append(float(loss.detach()))
                curves.train_top1.append(float((logits.argmax(1) == y).float().mean()))
                curves.images_per_s.append(seen / max(time.time() - t0, 1e-9))
                log(f"{label} step {step}/{preset.steps}: loss {curves.loss[-1]:.3f}, "
                    f"train top-1 {curves.train_top1[-1]:.2f}, {curves.images_per_s[-1]:.0f} images/s")
            if on_snapshot is not None and step in preset.evolution:
                model.eval()
                on_snapshot(step, model)
                model.train()
            if step % preset.checkpoint_every == 0 or step == preset.steps:
                spent += time.time() - t0
                _save(ckpt, model, opt, sched, curves, step, config)
                t0, seen = time.time(), 0
    return model.eval(), curves, spent


def _save(path: Path, model, opt, sched, curves: Curves, step: int, config: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "curves": json.dumps(asdict(curves)), "step": step, "study": config}, tmp)
    os.replace(tmp, path)


__all__ = ["PRESETS", "Preset", "FractalStream", "SourceStream", "open_stream", "labelled_split", "Curves",
           "checkpoint_path", "build", "renormalize_", "train", "evaluate",
           "parse_designs", "design_name"]
