"""The study's checkpoint: the one owner of its format.

A checkpoint is a ``torch.save`` dict of plain tensors and JSON text — ``model``,
``optimizer``, ``scheduler``, ``step``, ``curves`` (JSON) and ``study`` (JSON: the preset,
the design, the seed, the data's mean and class names) — so that it loads with
``weights_only=True``. Training writes one per design and seed (atomically: a temporary
file, then a rename) and resumes from it; ``--trained`` reads one back as a model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..core.errors import BadInputError
from ..models.checkpoint import load_bounded
from ..models.registry import checkpoint_budget
from .train import Preset, build, design_name


def checkpoint_path(folder: Path, conv1: tuple[int, int], seed: int) -> Path:
    return folder / f"{design_name(conv1)}-seed{seed}.pt"


def write_checkpoint(path: Path, model: nn.Module, opt, sched, curves: dict, step: int, config: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "curves": json.dumps(curves), "step": step, "study": json.dumps(config)}, tmp)
    os.replace(tmp, path)


def _read(path: Path, model: nn.Module | None) -> dict | None:
    """The raw dict of a study checkpoint at ``path``, or None for any other checkpoint;
    through the one bounded loader (regular files only, sizes checked before inflating)."""
    state = load_bounded(path, max_bytes=None if model is None else checkpoint_budget(model))
    if not (isinstance(state, dict) and "study" in state and "model" in state):
        return None
    return state


def read_checkpoint(path: Path, model: nn.Module) -> dict:
    """A checkpoint this study wrote, for resuming ``model``'s training: its weights are
    loaded into ``model``; returns the optimizer and scheduler states, the step and the
    curves. Anything else at ``path`` is a one-line error."""
    state = _read(path, model)
    if state is None:
        raise BadInputError(f"{path}: not a checkpoint of this study (remove it to start that network afresh)")
    try:
        model.load_state_dict(state["model"])
        curves = json.loads(state["curves"])
    except (RuntimeError, ValueError, TypeError) as e:
        raise BadInputError(f"{path}: a study checkpoint of another network or recipe ({str(e).splitlines()[0]})") \
            from None
    return {"optimizer": state["optimizer"], "scheduler": state["scheduler"], "step": int(state["step"]),
            "curves": curves}


def study_config(path: Path) -> dict | None:
    """The ``study`` record of a checkpoint this study wrote, or None for any other file."""
    state = _read(path, None)
    return None if state is None else json.loads(state["study"])


def load_study_model(path: Path, device: torch.device):
    """(model in eval mode, its preset, its config) for a checkpoint this study wrote, or None."""
    state = _read(path, None)
    if state is None:
        return None
    config = json.loads(state["study"])
    fields = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v)
              for k, v in config["preset"].items() if k in Preset.__dataclass_fields__}
    preset = Preset(**fields)
    model = build(preset, tuple(config["conv1"]), seed=0)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), preset, config


__all__ = ["checkpoint_path", "write_checkpoint", "read_checkpoint", "study_config", "load_study_model"]
