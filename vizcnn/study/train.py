"""The ZFNet first-layer study (Zeiler & Fergus 2014, §4.1, Fig. 6): training.

Two (or more) first-layer designs — AlexNet's 11×11 stride 4, ZFNet's 7×7 stride 2 —
trained on the same data, with the same recipe, seed, order of examples and budget,
so that any difference in their first layers comes from the design alone. The
networks are ZFNet's (Fig. 3) with the first layer swapped; conv2's stride follows
conv1's so that layer 2's map size matches the published ones (1 after a stride-4
conv1, as in AlexNet; 2 after a stride-2 conv1, as in ZFNet). At the ``gpu`` preset's
full width the 7×7/2 design *is* the registry's ``zfnet``.

The data streams are ``vizcnn.io.streams``; the measurements of the trained models
``vizcnn.methods.study_measure``; the report ``vizcnn.writers.study``.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import BadArgumentError
from ..models.zfnet import ZFNet, conv2_stride_for, zfnet

#: Zeiler & Fergus renormalise "each filter in the convolutional layers whose RMS value
#: exceeds a fixed radius of 1e-1" back to that radius, on inputs "roughly in [-128, 128]".
RENORM_RMS = 0.1


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


@dataclass
class Curves:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    train_top1: list[float] = field(default_factory=list)
    images_per_s: list[float] = field(default_factory=list)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """Held-out top-1 and top-5 accuracy (fractions)."""
    was = model.training
    model.eval()
    top1 = top5 = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size])
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += int((best[:, 0] == y[i:i + batch_size]).sum())
            top5 += int((best == y[i:i + batch_size, None]).any(1).sum())
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


__all__ = ["PRESETS", "Preset", "Curves", "checkpoint_path", "build", "renormalize_", "train", "evaluate",
           "parse_designs", "design_name"]
