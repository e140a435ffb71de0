"""The model zoo: one registry for the classic CNN lineage.

``load_model(name, weights=...)`` returns an ``nn.Module`` in eval mode. Our own
faithful definitions (LeNet-5, AlexNet-2012, ZFNet) live one file each; the
torchvision members are built by torchvision, so users' torchvision checkpoints
load unchanged.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..core.errors import BadArgumentError, BadInputError, UnknownNameError
from ..io.sources import FASHION_MNIST_CLASSES
from .shipped import WEIGHTS_DIR, shipped_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture.

    ``published_params`` is the figure quoted in the literature (or torchvision's
    documentation); ``params`` in ``vizcnn models`` is always computed.
    Accuracies are ImageNet-1k validation top-1 / top-5 in percent (``None`` where
    the model is not an ImageNet model).
    """

    name: str
    build: Callable[[int], nn.Module]
    family: str  # lenet | alexnet | vgg | googlenet | resnet: picks the friendly layer names
    input_size: tuple[int, int, int]  # C, H, W
    num_classes: int
    published_params: int
    top1: float | None
    top5: float | None
    source: str
    tv_name: str | None = None  # torchvision builder whose IMAGENET1K_V1 weights apply
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def _tv(name: str, **kwargs) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    return build


def _lenet5(num_classes: int) -> nn.Module:
    from .lenet5 import lenet5

    return lenet5(num_classes=num_classes)


def _alexnet2012(groups: int) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from .alexnet2012 import alexnet2012

        return alexnet2012(num_classes=num_classes, groups=groups)

    return build


def _zfnet(widths: tuple[int, int, int]) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from .zfnet import zfnet

        return zfnet(num_classes=num_classes, widths=widths)

    return build


_TV_ACC = {  # torchvision IMAGENET1K_V1 documentation: params, acc@1, acc@5
    "alexnet": (61_100_840, 56.522, 79.066),
    "vgg11": (132_863_336, 69.02, 88.628),
    "vgg13": (133_047_848, 69.928, 89.246),
    "vgg16": (138_357_544, 71.592, 90.382),
    "vgg19": (143_667_240, 72.376, 90.876),
    "googlenet": (6_624_904, 69.778, 89.53),
    "resnet18": (11_689_512, 69.758, 89.078),
    "resnet34": (21_797_672, 73.314, 91.42),
    "resnet50": (25_557_032, 76.13, 92.862),
    "resnet101": (44_549_160, 77.374, 93.546),
    "resnet152": (60_192_808, 78.312, 94.046),
}


def _tv_spec(name: str, family: str, **kwargs) -> ModelSpec:
    params, top1, top5 = _TV_ACC[name]
    return ModelSpec(name, _tv(name, **kwargs), family, (3, 224, 224), 1000, params, top1, top5,
                     f"torchvision {name} (IMAGENET1K_V1)", tv_name=name)


MODELS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("lenet5", _lenet5, "lenet", (1, 32, 32), 10, 60_000, None, None,
              "LeCun et al. 1998 (RBF output; 0.95% MNIST test error)",
              mean=(0.5,), std=(0.5,)),
    _tv_spec("alexnet", "alexnet"),
    ModelSpec("alexnet-2012", _alexnet2012(1), "alexnet", (3, 224, 224), 1000, 62_378_344, 59.3, 81.8,
              "Krizhevsky et al. 2012, ungrouped (one net: 40.7/18.2% error)"),
    ModelSpec("alexnet-2012-2gpu", _alexnet2012(2), "alexnet", (3, 224, 224), 1000, 60_965_224, 59.3, 81.8,
              "Krizhevsky et al. 2012, two-GPU grouping"),
    ModelSpec("zfnet", _zfnet((384, 384, 256)), "alexnet", (3, 224, 224), 1000, 62_357_608, 61.6, 83.5,
              "Zeiler & Fergus 2014 Fig. 3 (one net: 38.4/16.5% error)"),
    ModelSpec("zfnet-512", _zfnet((512, 1024, 512)), "alexnet", (3, 224, 224), 1000, 107_627_624, 62.5, 84.0,
              "Zeiler & Fergus 2014 Table 2, conv3-5 512/1024/512 (37.5/16.0% error)"),
    *[_tv_spec(n, "vgg") for n in ("vgg11", "vgg13", "vgg16", "vgg19")],
    _tv_spec("googlenet", "googlenet", aux_logits=False, init_weights=True),
    *[_tv_spec(n, "resnet") for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")],
]}


def list_models() -> list[str]:
    return list(MODELS)


def get_spec(name: str, weights: str | os.PathLike | None = None) -> ModelSpec:
    """The registry's entry for ``name``; with the name of shipped ``weights``, the input
    size, normalisation and class count those weights were trained with."""
    try:
        spec = MODELS[name]
    except KeyError:
        raise UnknownNameError("model", name, MODELS) from None
    card = shipped_weights(name).get(str(weights)) if weights is not None else None
    if card is None:
        return spec
    return replace(spec, input_size=tuple(card["input_size"]), mean=tuple(card["mean"]), std=tuple(card["std"]),
                   num_classes=card["num_classes"])


def shrink_classifier(model: nn.Module, hidden: int, *, seed: int = 0) -> nn.Module:
    """torchvision's AlexNet/VGG with fc6/fc7 ``hidden`` wide instead of 4096 (the size the
    shipped small-input weights need); the convolutional features are unchanged."""
    linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for j, i in enumerate(linears):
            old = model.classifier[i]
            model.classifier[i] = nn.Linear(old.in_features if j == 0 else hidden,
                                            old.out_features if j == len(linears) - 1 else hidden)
    return model


def _build_for_card(name: str, card: dict, seed: int) -> nn.Module:
    if "zfnet" in card:  # the study's reduced ZFNet: its own widths and input size
        from .zfnet import zfnet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in card["zfnet"].items()}
            return zfnet(num_classes=card["num_classes"], **kwargs)
    model = build_model(name, card["num_classes"], seed=seed)
    return shrink_classifier(model, card["classifier_hidden"], seed=seed) if "classifier_hidden" in card else model


def build_model(name: str, num_classes: int | None = None, *, seed: int = 0) -> nn.Module:
    """Builds ``name`` with seeded random weights, without touching the global RNG."""
    spec = get_spec(name)
    num_classes = spec.num_classes if num_classes is None else num_classes
    if not isinstance(num_classes, int) or num_classes < 1:
        raise BadArgumentError(f"num_classes must be a positive integer, got {num_classes!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build(num_classes)
    return model


def load_model(name: str, weights: str | os.PathLike | None = "random", *, num_classes: int | None = None,
               seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """Returns architecture ``name`` in eval mode on ``device``.

    ``weights``: ``"random"`` (or None: seeded by ``seed``, reproducible), ``"imagenet"``
    (torchvision's published weights through its weights API: downloaded once into
    torch's cache, then used offline), the name of learned weights shipped in the
    package (``vizcnn models`` lists them: ``"fashion-mnist"`` for lenet5, alexnet and
    zfnet), or a path to a state_dict / checkpoint file, always loaded with
    ``weights_only=True``.
    """
    spec = get_spec(name)
    weights = "random" if weights is None else weights
    shipped = shipped_weights(name)
    if weights == "imagenet":
        model = _imagenet_model(spec, num_classes)
    elif str(weights) in shipped:
        card = shipped[str(weights)]
        if num_classes not in (None, card["num_classes"]):
            raise BadArgumentError(f"{name} --weights {weights} has {card['num_classes']} classes, "
                                   f"not num_classes={num_classes}")
        model = _build_for_card(name, card, seed)
        load_checkpoint(model, WEIGHTS_DIR / card["file"])
    else:
        path = None
        if weights != "random":
            path = Path(weights)
            if not path.exists():
                named = ["random", "imagenet" if spec.tv_name else None, *shipped]
                raise BadInputError(f"weights {str(weights)!r} for {name}: no such file, and not one of "
                                    f"{', '.join(n for n in named if n)}")
        model = build_model(name, num_classes, seed=seed)
        if path is not None:
            load_checkpoint(model, path)
    return model.eval().to(device)


def imagenet_cache_file(name: str) -> Path | None:
    """Where torch keeps ``name``'s published ImageNet weights once downloaded (None: none
    are published for it)."""
    spec = get_spec(name)
    if spec.tv_name is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_imagenet_weights(spec).url)


def _imagenet_weights(spec: ModelSpec):
    """torchvision's IMAGENET1K_V1 weights entry for ``spec``."""
    import torchvision

    return torchvision.models.get_model_weights(spec.tv_name)["IMAGENET1K_V1"]


def default_weights(name: str) -> tuple[str, str | None]:
    """The weights a command uses for ``name`` when none are given, and a note saying why
    when the choice is not the obvious one. ImageNet's where they are published and
    cached; where they are published but not cached and vizcnn ships learned weights for
    the model, those (nothing is downloaded unasked: the note names ``--weights imagenet``
    for that); published but neither cached nor shipped, ImageNet's (downloaded once);
    else seeded random weights. Never touches the network."""
    spec = get_spec(name)
    shipped = shipped_weights(name)
    if spec.tv_name is None:
        return "random", None
    cached = imagenet_cache_file(name)
    if cached.is_file() or not shipped:
        return "imagenet", None
    chosen, card = next(iter(shipped.items()))
    size = "×".join(map(str, card["input_size"][1:]))
    return chosen, (f"no cached ImageNet weights for {name} ({cached}), so using the learned weights shipped with "
                    f"vizcnn: --weights {chosen} ({card['data'].split()[0]}'s {card['num_classes']} classes, "
                    f"{size} px input); --weights imagenet downloads ImageNet's")


def _imagenet_model(spec: ModelSpec, num_classes: int | None) -> nn.Module:
    if spec.tv_name is None:
        shipped = shipped_weights(spec.name)
        raise BadArgumentError(f"{spec.name} has no published ImageNet weights; use --weights random, "
                               f"a checkpoint file{', or ' + ', '.join(shipped) if shipped else ''}")
    if num_classes not in (None, 1000):
        raise BadArgumentError(f"ImageNet weights have 1000 classes, not num_classes={num_classes}")
    w = _imagenet_weights(spec)
    cached = imagenet_cache_file(spec.name)
    shipped = "".join(f"--weights {n} (learned weights shipped with vizcnn), " for n in shipped_weights(spec.name))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torch.hub prints "Downloading: ..." on stdout
            state = w.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # urllib / ssl / socket errors when offline, hash errors
        raise BadInputError(f"cannot get ImageNet weights for {spec.name}: no cached copy at {cached} and the "
                            f"download from {w.url} failed ({type(e).__name__}); connect once, copy the file "
                            f"there, or use {shipped}--weights random or a checkpoint file") from None
    model = build_model(spec.name)
    model.load_state_dict(state)
    return model


CHECKPOINT_SLACK = 64 << 20
"""Bytes a checkpoint may declare beyond 3× its model's state_dict (room for an
optimizer's state and the pickle)."""


def checkpoint_budget(model: nn.Module) -> int:
    """The most bytes a checkpoint for ``model`` may declare: 3× its state_dict (weights
    plus, say, Adam's two moments) and :data:`CHECKPOINT_SLACK`."""
    own = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 3 * own + CHECKPOINT_SLACK


def read_checkpoint(path: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Reads a state_dict or a checkpoint dict holding one, through the one bounded loader
    (:func:`vizcnn.models.checkpoint.load_bounded`: a regular file, one consistent zip, at
    most ``max_bytes`` unpacked, default 2 GiB, checked in torch's own reader before
    anything is inflated; ``weights_only=True``, so nothing in the file is ever executed).
    """
    from .checkpoint import load_bounded

    obj = load_bounded(path, max_bytes=max_bytes)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(f"cannot load weights {path}: not a state_dict (a dict of tensors)")
    return obj


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Loads ``path`` into ``model``; a key or shape mismatch lists the offending keys.
    A checkpoint declaring more than :func:`checkpoint_budget` bytes is refused unread."""
    state = read_checkpoint(path, max_bytes=checkpoint_budget(model))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                parts.append(f"{label} ({len(keys)}): {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}")
        raise BadInputError(f"weights {path} do not fit {type(model).__name__}: {'; '.join(parts)}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BadInputError(f"weights {path} hold NaN or Inf in {', '.join(bad[:6])}")
    model.load_state_dict(state)


def class_names(name: str, num_classes: int | None = None, weights: str | os.PathLike | None = None) -> list[str] | None:
    """Class names where they are known: the shipped weights' own (Fashion-MNIST's for
    ``--weights fashion-mnist``), ImageNet's (shipped with torchvision) for 1000-class
    ImageNet architectures."""
    card = shipped_weights(name).get(str(weights)) if weights is not None else None
    if card is not None:
        return list(card["classes"])
    spec = get_spec(name)
    n = spec.num_classes if num_classes is None else num_classes
    if n == 1000 and spec.input_size[0] == 3:
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return list(_IMAGENET_CATEGORIES)
    if spec.name == "lenet5" and n == 10:
        return list(FASHION_MNIST_CLASSES)
    return None


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "ModelSpec", "list_models", "get_spec", "build_model",
           "load_model", "default_weights", "imagenet_cache_file", "shrink_classifier", "class_names",
           "read_checkpoint", "load_checkpoint", "checkpoint_budget"]
