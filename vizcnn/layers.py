"""Layers by name: friendly names, module paths, and each layer's geometry.

A layer is addressed by a friendly name (``conv1``…``conv5``, ``fc6``… in the
AlexNet family and ZFNet, ``conv3_2`` in VGG) or by its module path
(``features.3``, ``layer3.1``, ``inception4e``). A module that runs more than once
in one forward (torchvision ResNet's ``BasicBlock.relu``) is addressed per call
as ``path:k`` (k = 0, 1, …; plain ``path`` means the first call).

Friendly conv/fc names point at the *rectified* output of that layer (the ReLU that
follows it), which is what Zeiler & Fergus call the layer's feature map.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import BadArgumentError, UnknownNameError


def friendly_names(model: nn.Module) -> dict[str, str]:
    """Maps friendly names to module paths for AlexNet/ZFNet/VGG-style models
    (a ``features`` stack of convolutions and a ``classifier`` stack); {} otherwise."""
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if not isinstance(features, nn.Sequential):
        return {}
    convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    vgg_style = len(convs) > 5
    names: dict[str, str] = {}

    def rectified(seq: nn.Sequential, prefix: str, i: int) -> str:
        keys = list(seq._modules)
        follows_relu = i + 1 < len(seq) and isinstance(seq[i + 1], nn.ReLU)
        return f"{prefix}.{keys[i + 1] if follows_relu else keys[i]}"

    block, index, n = 1, 0, 0
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            n, index = n + 1, index + 1
            names[f"conv{block}_{index}" if vgg_style else f"conv{n}"] = rectified(features, "features", i)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and index:
            block, index = block + 1, 0
    if isinstance(classifier, nn.Sequential):
        fc = (block if vgg_style else n + 1)
        for i, m in enumerate(classifier):
            if isinstance(m, nn.Linear):
                names[f"fc{fc}"] = rectified(classifier, "classifier", i)
                fc += 1
    return names


def resolve_layer(model: nn.Module, name: str) -> tuple[str, int]:
    """Returns (module path, call index) for a friendly name, a module path or ``path:k``."""
    if not isinstance(name, str) or not name:
        raise BadArgumentError(f"layer name must be a non-empty string, got {name!r}")
    friendly = friendly_names(model)
    path, _, call = name.partition(":")
    path = friendly.get(path, path)
    modules = dict(model.named_modules())
    if path not in modules or path == "":
        raise UnknownNameError("layer", name, [*friendly, *(p for p in modules if p)])
    if call and not call.isdigit():
        raise BadArgumentError(f"layer {name!r}: the call index after ':' must be a non-negative integer")
    return path, int(call or 0)


@dataclass(frozen=True)
class LayerInfo:
    """Geometry of one layer's output on a given input size.

    ``rf``: receptive field in input pixels (height, width); ``jump``: distance in
    input pixels between neighbouring units; ``start``: input coordinate of the
    centre of unit (0, 0)'s receptive field. ``kernel``/``stride`` are the module's
    own (None for non-spatial modules).
    """

    name: str
    path: str
    kind: str
    shape: tuple[int, ...]  # output shape without the batch dimension
    kernel: tuple[int, int] | None
    stride: tuple[int, int] | None
    rf: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]

    def box(self, y: int, x: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The receptive field of unit (y, x) clipped to the image: (top, bottom, left, right),
        bottom and right exclusive."""
        def span(c: int, d: int, size: int) -> tuple[int, int]:
            centre = self.start[d] + c * self.jump[d]
            half = (self.rf[d] - 1) / 2
            return max(0, int(round(centre - half))), min(size, int(round(centre + half)) + 1)

        top, bottom = span(y, 0, height)
        left, right = span(x, 1, width)
        return top, bottom, left, right


@dataclass(frozen=True)
class _Geometry:
    rf: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


_SPATIAL = {"conv2d", "max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d"}


class _GeometryMode(TorchFunctionMode):
    """Propagates receptive-field geometry through every torch function the forward runs.

    Convolutions and pools apply the standard recurrence; ops that keep the spatial
    size (activations, batch-norm, concatenation, addition) take the widest of their
    inputs; anything else that changes or drops the spatial size sees the whole input.
    """

    def __init__(self, height: int, width: int):
        super().__init__()
        self.whole = _Geometry((height, width), (height, width), ((height - 1) / 2, (width - 1) / 2))
        self.geo: dict[int, _Geometry] = {}
        self.keep: list[torch.Tensor] = []  # ids stay unique while the tensors live

    def _of(self, t: torch.Tensor) -> _Geometry:
        return self.geo.get(id(t), _Geometry((1, 1), (1, 1), (0.0, 0.0)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) and out else out
        if not isinstance(first, torch.Tensor):
            return out
        inputs = [a for a in (*args, *(args[0] if args and isinstance(args[0], (list, tuple)) else ()))
                  if isinstance(a, torch.Tensor) and id(a) in self.geo]
        name = getattr(func, "__name__", "")
        if name in _SPATIAL and isinstance(args[0], torch.Tensor):
            geo = self._spatial(name, args, kwargs, self._of(args[0]))
        elif first.dim() == 4 and all(a.dim() == 4 and a.shape[-2:] == first.shape[-2:] for a in inputs):
            geos = [self.geo[id(a)] for a in inputs]
            geo = max(geos, key=lambda g: g.rf) if geos else None
        else:
            geo = self.whole
        if geo is not None:
            self.geo[id(first)] = geo
            self.keep.append(first)
        return out

    @staticmethod
    def _spatial(name: str, args, kwargs, g: _Geometry) -> _Geometry:
        def arg(i: int, key: str, default):
            return args[i] if len(args) > i else kwargs.get(key, default)

        if name == "conv2d":
            k = tuple(arg(1, "weight", None).shape[-2:])
            stride, padding, dilation = _pair(arg(3, "stride", 1)), arg(4, "padding", 0), _pair(arg(5, "dilation", 1))
            if isinstance(padding, str):  # 'same' keeps the centre, 'valid' pads nothing
                padding = tuple((d * (kk - 1)) // 2 for kk, d in zip(k, dilation)) if padding == "same" else (0, 0)
        else:
            k = _pair(arg(1, "kernel_size", None))
            stride = _pair(arg(2, "stride", None) or k)
            padding = arg(3, "padding", 0)
            dilation = _pair(arg(4, "dilation", 1)) if "max" in name else (1, 1)
        padding = _pair(padding)
        keff = [d * (kk - 1) + 1 for kk, d in zip(k, dilation)]
        return _Geometry(
            tuple(g.rf[i] + (keff[i] - 1) * g.jump[i] for i in range(2)),
            tuple(g.jump[i] * stride[i] for i in range(2)),
            tuple(g.start[i] + ((keff[i] - 1) / 2 - padding[i]) * g.jump[i] for i in range(2)),
        )


def layer_geometry(model: nn.Module, input_size: tuple[int, int, int], *,
                   device: str | torch.device = "meta") -> dict[str, LayerInfo]:
    """Runs one forward on a dummy input (on the meta device by default: no compute) and
    returns every executed module's output shape and receptive field, keyed by module path
    (``path:k`` for the k-th extra call of a reused module), plus the friendly names."""
    from .state import preserved_model

    c, h, w = input_size
    x = torch.zeros(1, c, h, w, device=device)
    records: dict[str, LayerInfo] = {}
    calls: dict[str, int] = {}
    mode = _GeometryMode(h, w)

    def hook(path: str, module: nn.Module):
        def record(_m, _inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(t, torch.Tensor):
                return
            k = calls.get(path, 0)
            calls[path] = k + 1
            g = mode.geo.get(id(t), mode.whole)
            kernel = getattr(module, "kernel_size", None)
            stride = getattr(module, "stride", None)
            key = path if k == 0 else f"{path}:{k}"
            records[key] = LayerInfo(key, key, type(module).__name__, tuple(t.shape[1:]),
                                     _pair(kernel) if kernel is not None else None,
                                     _pair(stride) if stride is not None else None, g.rf, g.jump, g.start)
        return record

    with preserved_model(model):
        model.eval()
        original = next(iter(model.parameters()), None)
        probe = model
        if device == "meta" and original is not None and original.device.type != "meta":
            probe = meta_copy(model)
        handles = [m.register_forward_hook(hook(p, m)) for p, m in probe.named_modules() if p]
        try:
            with torch.no_grad(), mode:
                probe(x)
        except RuntimeError:
            # A classifier with a fixed input size fails on other image sizes; the layers
            # that ran before it still have their geometry.
            if not records:
                raise
        finally:
            for h_ in handles:
                h_.remove()
    for friendly, path in friendly_names(model).items():
        if path in records:
            records[friendly] = LayerInfo(friendly, path, *list(vars(records[path]).values())[2:])
    return records


_GEOMETRY: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def cached_geometry(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, LayerInfo]:
    """:func:`layer_geometry`, remembered per model and input size while the model's
    modules keep their names, types and kernel/stride/padding/dilation (a model whose
    ``forward`` is replaced in place is not noticed: call ``layer_geometry`` then)."""
    fingerprint = tuple((name, type(m), *(getattr(m, a, None) for a in ("kernel_size", "stride", "padding",
                                                                        "dilation")))
                        for name, m in model.named_modules())
    key = (tuple(input_size), fingerprint)
    known = _GEOMETRY.setdefault(model, {})
    if key not in known:
        known.clear()
        known[key] = layer_geometry(model, input_size)
    return known[key]


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device: the
    structure without the weights, made without copying any weight data."""
    import copy

    memo = {id(t): (nn.Parameter(torch.empty_like(t, device="meta"), t.requires_grad)
                    if isinstance(t, nn.Parameter) else torch.empty_like(t, device="meta"))
            for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the layers a deconv figure shows by default: the friendly conv names where
    the model has them, else the paths of its Conv2d modules."""
    friendly = [n for n in friendly_names(model) if n.startswith("conv")]
    return friendly or [p for p, m in model.named_modules() if _is_conv(m)]


def _is_conv(m: nn.Module) -> bool:
    """nn.Conv2d, or a convolution of one's own (LeNet-5's C3): a kernel and a weight with
    spatial extent."""
    weight = getattr(m, "weight", None)
    return isinstance(m, nn.Conv2d) or (hasattr(m, "kernel_size") and isinstance(weight, torch.Tensor)
                                        and weight.dim() >= 3)


def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-add FLOPs (2 per MAC, torch.utils.flop_counter's convention) for one image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    return int(counter.get_total_flops())


__all__ = ["LayerInfo", "friendly_names", "resolve_layer", "layer_geometry", "conv_layers", "count_flops"]
