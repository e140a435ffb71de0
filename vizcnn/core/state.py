"""Guarding the user's model: whatever vizcnn does, the model comes back as it was."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import BadArgumentError


@contextmanager
def preserved_model(model: nn.Module) -> Iterator[nn.Module]:
    """Restores every module's train/eval mode and every parameter's requires_grad flag
    on exit, normal or not (KeyboardInterrupt included).

    vizcnn never writes to parameters or buffers and removes its hooks in ``finally``
    blocks of its own; this guard covers the flags it has to change on the way.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


def model_device(model: nn.Module, default: torch.device | str | None = None) -> torch.device:
    """The device of the model's first parameter (else buffer), else ``default`` (the CPU
    when None): where vizcnn puts the inputs it runs the model on."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device(default if default is not None else "cpu")


def model_dtype(model: nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (else buffer), else
    ``default``: inputs are cast to it, so half and bfloat16 models run as they are."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return default


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise BadArgumentError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadArgumentError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    return torch.device(device)


__all__ = ["preserved_model", "model_device", "model_dtype", "resolve_device"]
