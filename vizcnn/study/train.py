"""The ZFNet first-layer study (Zeiler & Fergus 2014, §4.1, Fig. 6): the presets, the
networks and the recipe.

The first-layer designs — AlexNet's 11×11 stride 4, ZFNet's 7×7 stride 2, and the two
other corners of the 2×2 factorial (11×11/2, 7×7/4) that separate kernel size from
stride — are trained on the same data, with the same recipe, seed, order of examples and
budget, so that any difference in their first layers comes from the design alone. The
networks are ZFNet's (Fig. 3) with the first layer swapped; conv2's stride follows
conv1's so that layer 2's map size matches the published ones (1 after a stride-4 conv1,
as in AlexNet; 2 after a stride-2 conv1, as in ZFNet). At the ``gpu`` preset's full width
the 7×7/2 design *is* the registry's ``zfnet``.

The recipe is the paper's (§3): SGD with momentum 0.9, weight decay 5e-4, conv1 drawn
from N(0, 1e-2) with biases 0, inputs on the raw-pixel scale (image − mean) · 255, and
every conv filter whose RMS exceeds 0.1 renormalised back to 0.1 after each step, with
the number of rescaled filters logged. Two things are added so that it trains at CPU
scale, neither of which depends on the design: the body (conv2 … fc8) is drawn from
He-normal, since the paper's N(0, 1e-2) vanishes through narrow layers, and the learning
rate warms up linearly over the first ``warmup`` of the steps (the gpu preset also clips
the global gradient norm). fc8 keeps the paper's N(0, 1e-2), so the logits start small. Every layer is drawn from its own generator, seeded by the seed
and the layer's name, so one seed gives bit-identical initial weights to every
identically shaped layer of every design.

The data streams are ``vizcnn.study.data``; the checkpoints ``vizcnn.study.checkpoint``;
the measurements ``vizcnn.study.measure``; the run ``vizcnn.study.run``.
"""
from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import BadArgumentError, VizcnnError
from ..models.zfnet import ZFNet, conv2_stride_for, zfnet, zfnet_map_sizes

from .presets import DESIGN_NAMES, FACTORIAL, PRESETS, RENORM_RMS, Preset, design_name  # noqa: F401 (re-exported)


def parse_designs(text: str, size: int | None = None) -> list[tuple[int, int]]:
    """``"11/4,7/2"`` → [(11, 4), (7, 2)]; with ``size``, each design must leave every
    stage of the network a map at that input size."""
    designs = []
    for part in text.split(","):
        try:
            k, s = (int(v) for v in part.strip().split("/"))
        except ValueError:
            raise BadArgumentError(f"--conv1 {part.strip()!r}: expected KERNEL/STRIDE such as 11/4") from None
        if k < 1 or s < 1 or s > k:
            raise BadArgumentError(f"--conv1 {k}/{s}: kernel and stride must be positive, stride ≤ kernel")
        if size is not None:
            if k > size:
                raise BadArgumentError(f"--conv1 {k}/{s}: a {k}×{k} kernel is larger than the {size}px input")
            zfnet_map_sizes((k, s), size, conv2_stride_for(s))  # a one-line error when a stage has no map left
        designs.append((k, s))
    if len(set(designs)) != len(designs):
        raise BadArgumentError(f"--conv1 {text!r} names a design twice")
    return designs


def layer_seed(seed: int, name: str) -> int:
    """The seed of one layer's initial weights: the run's seed and the layer's name, so
    that identically shaped layers of different designs start bit-identical."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63)


def build(preset: Preset, conv1: tuple[int, int], *, seed: int) -> ZFNet:
    """The study network for one first-layer design, seeded layer by layer (see the
    module docstring): conv1 from N(0, conv1_init_std²), the body He-normal, biases 0."""
    model = zfnet(num_classes=preset.classes, conv1=conv1, channels=preset.channels, widths=preset.widths,
                  hidden=preset.hidden, input_size=preset.size, conv2_stride=conv2_stride_for(conv1[1]))
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                g = torch.Generator().manual_seed(layer_seed(seed, name))
                std = math.sqrt(2 / m.weight[0].numel())
                if name == "features.conv1":
                    std = preset.conv1_init_std
                elif isinstance(m, nn.Conv2d) and preset.conv_init == "paper":
                    std = 1e-2
                elif name == "classifier.fc8" and preset.head_init_std is not None:
                    std = preset.head_init_std
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                m.bias.zero_()
    return model


@torch.no_grad()
def renormalize_(model: nn.Module, max_rms: float = RENORM_RMS, per_layer: dict[str, int] | None = None) -> int:
    """Scales every conv filter whose RMS exceeds ``max_rms`` back to ``max_rms`` (ZF §3).
    Returns how many filters were rescaled; ``per_layer`` (when given) gets each conv's
    count by module path."""
    count = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            rms = m.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
            over = rms > max_rms
            n = int(over.sum())
            if n:
                m.weight[over] *= (max_rms / rms[over]).view(-1, 1, 1, 1)
                count += n
            if per_layer is not None:
                per_layer[name] = per_layer.get(name, 0) + n
    return count


class TrainingDiverged(VizcnnError):
    """The loss or the weights became NaN or infinite."""


@dataclass
class Curves:
    """What training logged: per logged step the loss, the batch's top-1, the throughput,
    the learning rate and how many conv filters renormalisation rescaled since the last
    logged step; ``rescaled_total`` over the whole run."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    train_top1: list[float] = field(default_factory=list)
    images_per_s: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    rescaled: list[int] = field(default_factory=list)
    rescaled_conv1: list[int] = field(default_factory=list)
    rescaled_total: int = 0
    seconds: float = 0.0  # training time over every call that trained this network


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """Held-out top-1 and top-5 accuracy (fractions); ``prepare`` maps each batch of ``x``
    to the model's input (so held-out sets can stay in [0, 1] until they are used)."""
    was = model.training
    model.eval()
    top1 = top5 = 0
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            logits = model((xb if prepare is None else prepare(xb)).to(dtype))
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += int((best[:, 0] == y[i:i + batch_size]).sum())
            top5 += int((best == y[i:i + batch_size, None]).any(1).sum())
    model.train(was)
    return top1 / len(x), top5 / len(x)


def schedule(preset: Preset) -> Callable[[int], float]:
    """The learning-rate factor after ``step`` optimizer steps: a linear warm-up over the
    first ``warmup`` of the budget, then constant, then ×0.1 for the last quarter (the
    paper anneals by hand)."""
    warm = max(1, round(preset.warmup * preset.steps)) if preset.warmup else 0
    anneal = math.ceil(preset.steps * 0.75)

    def factor(step: int) -> float:
        f = min(1.0, (step + 1) / warm) if warm else 1.0
        return f * (0.1 if step >= anneal else 1.0)
    return factor


def optimizer_for(preset: Preset, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    if preset.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=preset.momentum,
                              weight_decay=preset.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule(preset))


def train(preset: Preset, conv1: tuple[int, int], stream, folder: Path, *, seed: int,
          on_snapshot: Callable[[int, nn.Module], None] | None = None,
          log: Callable[[str], None] = print, tag: str | None = None) -> tuple[nn.Module, Curves, float]:
    """Trains one design on ``stream`` (seeded with ``seed``), checkpointing to
    ``folder`` every ``preset.checkpoint_every`` steps (``vizcnn.study.checkpoint``) and
    resuming from there. Raises :class:`TrainingDiverged` the step the loss or a weight
    stops being finite. Returns (model in eval mode, training curves, seconds spent
    training in this call)."""
    from .checkpoint import checkpoint_path, read_checkpoint, write_checkpoint

    device = stream.device
    label = tag or design_name(conv1)
    model = build(preset, conv1, seed=seed).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt, sched = optimizer_for(preset, model)
    curves, start_step = Curves(), 0
    ckpt = checkpoint_path(folder, conv1, seed)
    if ckpt.exists() or ckpt.is_symlink():
        state = read_checkpoint(ckpt, model)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sched.lr_lambdas = [schedule(preset)]  # the budget is this run's, so a resumed run with a new --steps
        curves = Curves(**state["curves"])      # is the run that budget would have been from the start
        start_step = int(state["step"])
        log(f"{label}: resuming at step {start_step}/{preset.steps}")
    config = {"preset": asdict(preset), "conv1": list(conv1), "seed": seed, "mean": stream.mean,
              "classes": list(stream.classes), "data": stream.name}
    model.train()
    t0, seen, spent, rescaled, rescaled1 = time.time(), 0, 0.0, 0, 0
    every = max(1, preset.steps // 40)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for step, x, y in stream.batches(start_step):
            torch.manual_seed(seed * 1_000_003 + step)  # dropout's own seed per step: a resumed run is the same run
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=preset.amp and device.type == "cuda"):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{label}: the loss became {float(loss)} at step {step} (lr "
                                       f"{sched.get_last_lr()[0]:.2g}): the recipe diverged")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if preset.clip:
                nn.utils.clip_grad_norm_(model.parameters(), preset.clip)
            opt.step()
            lr = sched.get_last_lr()[0]
            sched.step()
            if preset.renorm:
                per_layer: dict[str, int] = {}
                rescaled += renormalize_(model, per_layer=per_layer)
                rescaled1 += per_layer.get("features.conv1", 0)
            seen += len(x)
            if step % every == 0 or step == preset.steps:
                curves.step.append(step)
                curves.loss.append(float(loss.detach()))
                curves.train_top1.append(float((logits.argmax(1) == y).float().mean()))
                curves.images_per_s.append(seen / max(time.time() - t0, 1e-9))
                curves.lr.append(lr)
                curves.rescaled.append(rescaled)
                curves.rescaled_conv1.append(rescaled1)
                curves.rescaled_total += rescaled
                log(f"{label} step {step}/{preset.steps}: loss {curves.loss[-1]:.3f}, "
                    f"train top-1 {curves.train_top1[-1]:.2f}, {rescaled} filters renormalised "
                    f"({rescaled1} in conv1), {curves.images_per_s[-1]:.0f} images/s")
                rescaled = rescaled1 = 0
            if on_snapshot is not None and step in preset.evolution:
                model.eval()
                on_snapshot(step, model)
                model.train()
            if step % preset.checkpoint_every == 0 or step == preset.steps:
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    raise TrainingDiverged(f"{label}: a weight became NaN or infinite by step {step}")
                spent += time.time() - t0
                curves.seconds += time.time() - t0
                write_checkpoint(ckpt, model, opt, sched, asdict(curves), step, config)
                t0, seen = time.time(), 0
    return model.eval(), curves, spent


__all__ = ["PRESETS", "Preset", "Curves", "FACTORIAL", "TrainingDiverged", "build", "layer_seed", "renormalize_",
           "train", "evaluate", "schedule", "parse_designs", "design_name"]
