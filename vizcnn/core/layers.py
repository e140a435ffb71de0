"""Layers by name: friendly names, module paths, and each layer's geometry.

A layer is addressed by a friendly name (``conv1``…``conv5``, ``fc6``… in the
AlexNet family and ZFNet, ``conv3_2`` in VGG) or by its module path
(``features.3``, ``layer3.1``, ``inception4e``). A module that runs more than once
in one forward (torchvision ResNet's ``BasicBlock.relu``) is addressed per call
as ``path:k`` (k = 0, 1, …; plain ``path`` means the first call).

Friendly conv/fc names point at the *rectified* output of that layer (the ReLU that
follows it), which is what Zeiler & Fergus call the layer's feature map.

This module owns what vizcnn knows about layers, once: :class:`LayerTap`, the one way
to capture a layer's output (it counts the ``path:k`` calls); :func:`is_conv`;
:func:`feeding_layer` (the convolution that makes a layer's channels); the element-wise
set :data:`ELEMENTWISE`; the default layers (:func:`default_layers`,
:func:`last_conv_layer`); :func:`meta_copy`; and :func:`check_runnable`, the one-line
errors for models vizcnn cannot run. ``vizcnn.core.state`` holds the model's device and dtype.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .errors import BadArgumentError, BadInputError, UnknownNameError
from .geometry import ELEMENTWISE_OPS, Geometry, GeometryMode, silenced
from .state import model_device, model_dtype, preserved_model


def friendly_names(model: nn.Module) -> dict[str, str]:
    """Maps friendly names to module paths for AlexNet/ZFNet/VGG-style models
    (a ``features`` stack of convolutions and a ``classifier`` stack); {} otherwise.
    Each name points at the layer's rectified output: the ReLU after the conv or linear
    layer (after its batch norm in VGG-BN), the layer itself where no rectifier follows.
    Every command means the same module by a name; those that need the filters find the
    conv feeding it (:func:`feeding_layer`)."""
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if not isinstance(features, nn.Sequential) or \
            not all(is_conv(m) or isinstance(m, (*ELEMENTWISE, nn.MaxPool2d, nn.AvgPool2d)) for m in features):
        return {}  # blocks in the stack (DenseNet, SqueezeNet's Fire, MobileNet): module paths name them
    convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    vgg_style = len(convs) > 5
    names: dict[str, str] = {}

    def rectified(seq: nn.Sequential, prefix: str, i: int) -> str:
        # the rectifier after the layer, past any batch norm between (VGG-BN: conv, bn, relu)
        keys = list(seq._modules)
        for j in range(i + 1, len(seq)):
            if isinstance(seq[j], RECTIFIERS):
                return f"{prefix}.{keys[j]}"
            if not isinstance(seq[j], nn.modules.batchnorm._BatchNorm):
                break
        return f"{prefix}.{keys[i]}"

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
    own (None for non-spatial modules). ``local``: every op from the input to here is
    known to be local (``vizcnn.core.geometry``), so a unit depends on nothing outside
    its receptive field; where it is False the receptive field is the whole image.
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
    local: bool = True

    def box(self, y: int, x: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The receptive field of unit (y, x) clipped to the image: (top, bottom, left, right),
        bottom and right exclusive; the whole image where the layer is not local."""
        if not self.local:
            return 0, height, 0, width

        def span(c: int, d: int, size: int) -> tuple[int, int]:
            centre = self.start[d] + c * self.jump[d]
            half = (self.rf[d] - 1) / 2
            return max(0, int(round(centre - half))), min(size, int(round(centre + half)) + 1)

        top, bottom = span(y, 0, height)
        left, right = span(x, 1, width)
        return top, bottom, left, right


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass
class _Trace:
    """One probe forward: each module's LayerInfo (``path`` or ``path:k``), which module
    keys output each traced tensor (in the order they finished), the dataflow
    (``mode.producer``), the tensors by id, and the model's output."""

    records: dict[str, LayerInfo]
    owners: dict[int, list[str]]
    mode: GeometryMode
    tensors: dict[int, torch.Tensor]
    output: torch.Tensor | None
    error: str | None


def _trace(model: nn.Module, input_size: tuple[int, int, int], device: str | torch.device = "meta") -> _Trace:
    """Runs the user's model once, in place, on a zero input under :class:`GeometryMode`
    (see ``vizcnn.core.geometry``): on the meta device (no compute, no copy) unless
    ``device`` says otherwise, or where a data-dependent forward cannot run on meta
    (then once on the model's own device). The model comes back as it was: modes,
    flags, parameters, buffers and hooks."""
    c, h, w = input_size
    constants = {id(t) for t in (*model.parameters(), *model.buffers())}
    modules = dict(model.named_modules())
    real = any(t.device.type != "meta" for t in (*model.parameters(), *model.buffers()))
    attempts = [device, model_device(model)] if torch.device(device).type == "meta" and real else [device]
    trace = None
    for where in attempts:
        mode = GeometryMode(h, w, constants, meta=torch.device(where).type == "meta")
        records: dict[str, LayerInfo] = {}
        owners: dict[int, list[str]] = {}

        def record(key: str, t: torch.Tensor) -> None:
            module = modules[key.partition(":")[0]]
            g = mode.of(t)
            g = g if isinstance(g, Geometry) else mode.whole()
            kernel, stride = getattr(module, "kernel_size", None), getattr(module, "stride", None)
            records[key] = LayerInfo(key, key, type(module).__name__, tuple(t.shape[1:]),
                                     _pair(kernel) if kernel is not None else None,
                                     _pair(stride) if stride is not None else None, g.rf, g.jump, g.start, g.local)
            owners.setdefault(id(t), []).append(key)
            mode.keep.append(t)

        x = torch.zeros(1, c, h, w, device=where, dtype=model_dtype(model))
        mode.seed(x)
        out, error = None, None
        with preserved_model(model), silenced(model):
            model.eval()
            try:
                with LayerTap(model, None, record=record), torch.no_grad(), mode:
                    out = model(x)
            except Exception as e:  # noqa: BLE001 - the layers that ran before it keep their geometry
                error = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if isinstance(out, (tuple, list)):
            out = next((o for o in out if isinstance(o, torch.Tensor)), None)
        elif isinstance(out, dict):
            out = next((o for o in out.values() if isinstance(o, torch.Tensor)), None)
        trace = _Trace(records, owners, mode, {id(t): t for t in mode.keep}, out, error)
        if out is not None:
            break
    return trace


def layer_geometry(model: nn.Module, input_size: tuple[int, int, int], *,
                   device: str | torch.device = "meta") -> dict[str, LayerInfo]:
    """Every executed module's output shape and receptive field for one forward on a
    ``input_size`` input, keyed by module path (``path:k`` for the k-th extra call of a
    reused module), plus the friendly names. Traced in place on the meta device by
    default (no compute, no copy of the model, the user's hooks silenced; see
    ``vizcnn.core.geometry``); ``LayerInfo.local`` says whether the crop path is exact
    there. A classifier sized for another input still gives the layers before it."""
    trace = _trace(model, input_size, device)
    if not trace.records and trace.error is not None:
        shape = ", ".join(map(str, input_size))
        raise BadInputError(f"{type(model).__name__} cannot run on an input of shape (1, {shape}): "
                            f"{trace.error}")
    records = dict(trace.records)
    for friendly, path in friendly_names(model).items():
        if path in records:
            records[friendly] = replace(records[path], name=friendly)
    return records


def geometry_key(model: nn.Module, name: str) -> str:
    """The key of :func:`layer_geometry`'s result for any layer name (a friendly name,
    a module path, ``path:0`` or ``path:k``)."""
    if name in friendly_names(model):
        return name
    path, call = resolve_layer(model, name)
    return path if call == 0 else f"{path}:{call}"


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


# --------------------------------------------------------------------------- what a layer is

#: Activation modules (element-wise nonlinearities).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Threshold)

#: The rectifier modules a friendly name points at.
RECTIFIERS = (nn.ReLU, nn.ReLU6)

#: Layers that act on each spatial position on its own (they keep a map's channels and
#: reach no neighbouring pixel): activations, dropout, identity, batch norm (in eval
#: mode: a per-channel affine map) and local response normalization (it normalises
#: across channels only). The one element-wise set vizcnn uses.
ELEMENTWISE = ACTIVATIONS + (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
                             nn.LocalResponseNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def is_conv(m: nn.Module) -> bool:
    """A convolution: any ``nn.Conv*`` (transposed included), or one of one's own such as
    LeNet-5's connection-table C3 (a ``kernel_size`` and a weight with spatial extent)."""
    weight = getattr(m, "weight", None)
    return isinstance(m, nn.modules.conv._ConvNd) or (hasattr(m, "kernel_size") and isinstance(weight, torch.Tensor)
                                                     and weight.dim() >= 3)


def _has_weight(m: nn.Module) -> bool:
    """A convolution or a fully connected layer: filters that make output channels."""
    return is_conv(m) or isinstance(m, nn.Linear)


def feeding_layer(model: nn.Module, name: str) -> str | None:
    """The module path of the convolution or linear layer whose filters make ``name``'s
    channels: the layer itself when it is one, else, for an element-wise layer in an
    ``nn.Sequential`` (what friendly names point at: AlexNet's ``conv1`` is the ReLU
    after ``features.0``), the nearest such layer before it with only element-wise layers
    between; None when there is none."""
    path, _ = resolve_layer(model, name)
    modules = dict(model.named_modules())
    module = modules[path]
    if _has_weight(module):
        return path
    parent_path, _, leaf = path.rpartition(".")
    parent = modules[parent_path] if parent_path else model
    if isinstance(parent, nn.Sequential) and isinstance(module, ELEMENTWISE):
        keys = list(parent._modules)
        for key in reversed(keys[:keys.index(leaf)]):
            sibling = parent._modules[key]
            if _has_weight(sibling):
                return f"{parent_path}.{key}" if parent_path else key
            if not isinstance(sibling, ELEMENTWISE):
                break
    return None


def conv_layers(model: nn.Module) -> list[str]:
    """Every convolution's layer name: the friendly conv names where the model has them,
    else the paths of its convolutions (:func:`is_conv`)."""
    friendly = [n for n in friendly_names(model) if n.startswith("conv")]
    return friendly or [p for p, m in model.named_modules() if p and is_conv(m)]


#: At most this many layers by default for models without friendly conv names (ResNet-50
#: has 53 convolutions).
MAX_DEFAULT_LAYERS = 5


def default_layers(model: nn.Module) -> list[str]:
    """The layers a figure or report shows when none are named (``vizcnn deconv``,
    ``vizcnn report``, ``vizcnn topk``): :func:`conv_layers` (AlexNet conv1..conv5,
    LeNet-5's convolutions), at most ``MAX_DEFAULT_LAYERS`` of them spread evenly from
    the first to the last."""
    convs = conv_layers(model)
    if len(convs) <= MAX_DEFAULT_LAYERS:
        return convs
    picks = [round(i * (len(convs) - 1) / (MAX_DEFAULT_LAYERS - 1)) for i in range(MAX_DEFAULT_LAYERS)]
    return [convs[i] for i in dict.fromkeys(picks)]


def last_conv_layer(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> str:
    """The model's last conv feature map (Grad-CAM's layer, occlusion's panel (b)).

    The last friendly ``conv*`` name where the model has them (AlexNet ``conv5``, VGG
    ``conv5_4``: the rectified output, before the last max pool). Otherwise the last
    spatial (> 1×1) feature map that feeds the classifier, found by tracing the forward
    (in place on the meta device): the output of the last feature block after its
    rectifier, before global pooling, named by the outermost module that outputs it —
    ResNet ``layer4``, GoogLeNet ``inception5b``, Inception-v3 ``Mixed_7c``, DenseNet,
    SqueezeNet, EfficientNet, MobileNet and ConvNeXt ``features`` (SqueezeNet's 1×1 class
    conv belongs to its head), RegNet ``trunk_output``, LeNet-5 ``act3`` (before the s4
    subsampling, as AlexNet's conv5 is before pool5).
    """
    friendly = [n for n in friendly_names(model) if n.startswith("conv")]
    if friendly:
        return friendly[-1]
    # The probe forward costs ~0.1-0.5 s on big models: remember the answer per model,
    # input size and module structure.
    key = (tuple(input_size), tuple((p, type(m)) for p, m in model.named_modules()))
    cached = _LAST_CONV.setdefault(model, {})
    if key not in cached:
        cached[key] = _find_last_conv(model, input_size)
    return cached[key]


_LAST_CONV: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def output_shapes(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Each module's output shape (first call, batch dimension dropped), in the order the
    modules finish, from one probe forward on the meta device (in place, no copy)."""
    return {k: i.shape for k, i in _trace(model, tuple(input_size)).records.items() if ":" not in k}


def _spatial(t: torch.Tensor | None) -> bool:
    return t is not None and t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1


#: ops a feature map passes through on its way into the classifier that are not a block
#: of their own: Grad-CAM's layer is the map before them
_POOLS = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d",
          "adaptive_max_pool2d", "_adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}


def _find_last_conv(model: nn.Module, input_size: tuple[int, int, int]) -> str:
    """Walks the traced dataflow back from the model's output to the last spatial (> 1×1)
    map, then back out of the classifier head (a top-level block that holds the global
    pooling, as SqueezeNet's ``classifier`` with its 1×1 class conv) and off any pools
    in front of it, and names the outermost module that outputs that map."""
    tr = _trace(model, input_size)
    producer = tr.mode.producer

    def parent(i: int) -> int | None:
        ids = producer.get(i, ("", []))[1]
        shaped = [j for j in ids if j in tr.tensors]
        return next((j for j in shaped if _spatial(tr.tensors[j])), shaped[0] if shaped else None)

    def owner(i: int) -> str | None:
        keys = tr.owners.get(i)
        if not keys:
            return None
        fewest = min(k.count(".") for k in keys)
        return [k for k in keys if k.count(".") == fewest][-1]  # ties: the last to finish (the ReLU in place)

    cur = id(tr.output) if tr.output is not None else None
    consumer = None
    while cur is not None and not (_spatial(tr.tensors.get(cur)) and owner(cur) is not None):
        consumer, cur = cur, parent(cur)  # (a channels-last view inside a head is no feature map)
    if cur is None:
        raise BadArgumentError(f"{type(model).__name__} has no spatial feature map feeding its output on a "
                               f"{input_size[1]}×{input_size[2]} input; name a layer")
    head = owner(consumer) if consumer is not None else None

    def inside(i: int) -> bool:
        key = owner(i)
        return head is not None and key is not None and \
            (key.partition(":")[0] + ".").startswith(head.partition(":")[0] + ".")

    if inside(cur):  # the map came out of the block that pools (a head): back to the map entering it
        while inside(cur) or owner(cur) is None:
            nxt = parent(cur)
            if nxt is None or not _spatial(tr.tensors.get(nxt)):
                break
            cur = nxt
    while True:  # off the pools in front of the classifier (AlexNet's pool5, LeNet-5's s4 and its squash)
        back = cur
        while producer.get(back, ("", []))[0] in ELEMENTWISE_OPS and len(producer[back][1]) == 1:
            back = producer[back][1][0]
        name, ids = producer.get(back, ("", []))
        if name not in _POOLS or len(ids) != 1 or not _spatial(tr.tensors.get(ids[0])):
            break
        cur = ids[0]
    while owner(cur) is None:  # a functional op's output: the module output it was made from
        nxt = parent(cur)
        if nxt is None or not _spatial(tr.tensors.get(nxt)):
            raise BadArgumentError(f"{type(model).__name__}: the last feature map is not any module's output; "
                                   f"name a layer")
        cur = nxt
    return owner(cur)


def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-add FLOPs (2 per MAC, torch.utils.flop_counter's convention) for one image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_size, device=model_device(model), dtype=model_dtype(model)))
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- the layer tap

class StopForward(Exception):
    """Raised from a tap to end a forward pass once the layers needed have run."""


def _scripted(m: nn.Module) -> bool:
    return isinstance(m, torch.jit.ScriptModule)


def check_runnable(model: nn.Module, *, rules: bool = False) -> None:
    """A one-line error for a model vizcnn cannot run: not a module, no weights (the meta
    device), and under the reverse rules (``rules``) TorchScript submodules (the rules
    rewrite rectifiers in Python, which TorchScript hides) and activation checkpointing
    (``memory_efficient`` DenseNet: the backward recomputes the forward without the
    rules)."""
    if not isinstance(model, nn.Module):
        raise BadArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if any(p.device.type == "meta" for p in model.parameters()):
        raise BadArgumentError(f"{type(model).__name__} has its parameters on the meta device (no weights to run); "
                               f"load or initialise its weights first (e.g. model.to_empty(device=...) and a "
                               f"checkpoint)")
    if not rules:
        return
    for path, m in model.named_modules():
        if _scripted(m):
            where = f"submodule {path!r}" if path else "the model"
            raise BadArgumentError(f"{where} is a TorchScript module: the deconvnet and guided rules cannot see "
                                   f"the rectifiers inside it; use the eager (unscripted) module")
        if getattr(m, "memory_efficient", False) is True:
            raise BadArgumentError(f"{path or type(model).__name__} uses activation checkpointing "
                                   f"(memory_efficient=True): its backward recomputes the forward without the "
                                   f"deconvnet/guided rules; build the model with memory_efficient=False")


class LayerTap:
    """Captures named layers' outputs while the model runs: the one way vizcnn hooks a
    model to read a layer (the extractor, the deconvnet, saliency, occlusion, invariance,
    geometry and the sanity cascade all tap through it).

    >>> with LayerTap(model, ["conv5", "layer1.0.relu:1"]) as tap:
    ...     model(x)
    >>> tap["conv5"]

    ``layers``: names (friendly, module path, or ``path:k`` for the k-th call of a module
    that runs more than once; plain ``path`` is ``path:0``), or None for every submodule,
    each call kept under ``path`` (first call) or ``path:k``. ``where`` narrows None to
    the modules it accepts. The tap owns the call counting: counts restart at every
    forward of ``model``, as do the captured outputs.

    ``inputs``: capture each module's first input instead of its output. ``record(name,
    tensor)``: what to keep (default the tensor itself, graph and all); ``replace(name,
    kept)``: a tensor the rest of the network sees instead of the output (a clone, a
    fresh leaf). ``stop``: end the forward with :class:`StopForward` once every named
    layer has been captured (see :func:`run_until_stopped`). Hooks go on entry and come
    off on exit, normal or not.
    """

    def __init__(self, model: nn.Module, layers: str | Sequence[str] | None, *, inputs: bool = False,
                 record: Callable[[str, torch.Tensor], Any] | None = None,
                 replace: Callable[[str, Any], torch.Tensor | None] | None = None, stop: bool = False,
                 where: Callable[[nn.Module], bool] | None = None):
        self.model = model
        self.every = layers is None
        names = [] if layers is None else ([layers] if isinstance(layers, str) else list(layers))
        self.targets = {name: resolve_layer(model, name) for name in names}
        self.inputs, self.record, self.replace, self.stop, self.where = inputs, record, replace, stop, where
        self.outputs: dict[str, Any] = {}
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self._handles: list = []

    def module(self, name: str) -> nn.Module:
        """The module a name (or a ``path:k`` key) captured from."""
        path = self.targets[name][0] if name in self.targets else name.partition(":")[0]
        return self.model.get_submodule(path)

    def __enter__(self) -> "LayerTap":
        modules = dict(self.model.named_modules())
        if self.every:  # TorchScript modules take no hooks: their layers go unrecorded
            paths = [p for p, m in modules.items() if p and not _scripted(m) and (self.where is None or self.where(m))]
        else:
            paths = list(dict.fromkeys(path for path, _ in self.targets.values()))
            for name, (path, _) in self.targets.items():
                if _scripted(modules[path]):
                    raise BadArgumentError(f"layer {name!r} is a TorchScript module, which takes no hooks; "
                                           f"name an eager module (or use the unscripted model)")
        wanted: dict[str, list[tuple[str, int]]] = {p: [] for p in paths}
        for name, (path, call) in self.targets.items():
            wanted[path].append((name, call))
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._restart))
            for path in paths:
                m = modules[path]
                if self.inputs:
                    self._handles.append(m.register_forward_pre_hook(self._hook(path, wanted[path])))
                else:
                    self._handles.append(m.register_forward_hook(self._hook(path, wanted[path])))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _restart(self, *_) -> None:
        self.outputs, self.calls, self.order = {}, {}, []

    def _hook(self, path: str, wanted: list[tuple[str, int]]):
        def hook(_m, inp, out=None):
            value = inp if self.inputs else out
            t = value[0] if isinstance(value, (tuple, list)) and value else value
            k = self.calls.get(path, 0)
            self.calls[path] = k + 1
            names = [f"{path}:{k}" if k else path] if self.every else [n for n, c in wanted if c == k]
            if names and not isinstance(t, torch.Tensor):
                if self.every:
                    return None
                raise BadArgumentError(f"layer {names[0]!r} gives a {type(t).__name__}, not a tensor")
            for name in names:
                self.outputs[name] = self.record(name, t) if self.record is not None else t
                self.order.append(name)
            if self.stop and self.targets and len(self.outputs) == len(self.targets):
                raise StopForward
            replaced = None
            if self.replace is not None:
                for name in names:
                    replaced = self.replace(name, self.outputs[name])
            if replaced is None:
                return None
            if self.inputs:
                return (replaced, *value[1:]) if isinstance(value, tuple) else replaced
            return type(value)((replaced, *value[1:])) if isinstance(value, (tuple, list)) else replaced
        return hook

    def missing(self) -> list[str]:
        return [name for name in self.targets if name not in self.outputs]

    def check(self) -> None:
        """A one-line error for every named layer the last forward did not reach."""
        for name in self.missing():
            path, call = self.targets[name]
            ran = self.calls.get(path, 0)
            if ran == 0:
                raise BadArgumentError(f"layer {name!r} did not run in the forward pass")
            raise BadArgumentError(f"layer {name!r} ran {ran} time(s) in the forward pass; call index {call} "
                                   f"does not exist (use {path}:0..{path}:{ran - 1})")

    def __getitem__(self, name: str):
        return self.outputs[name]


def run_until_stopped(model: nn.Module, x: torch.Tensor):
    """Calls ``model(x)`` and returns its output; a :class:`StopForward` from a tap ends it
    quietly (returns None), and a RuntimeError (an input the model cannot take: wrong
    size, channels, dtype) becomes a one-line ``BadInputError``."""
    try:
        return model(x)
    except StopForward:
        return None
    except RuntimeError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BadInputError(f"{type(model).__name__} cannot run on an input of shape {tuple(x.shape)}: "
                            f"{reason}") from None


def check_finite(model: nn.Module, x: torch.Tensor) -> None:
    """One forward of ``x`` (no gradients, the model's mode kept): a ``BadInputError``
    naming the first layer whose output holds NaN or Inf (finite weights can still
    overflow float32), so a command stops before it draws or writes anything."""
    def finite(_name, out):
        return not isinstance(out, torch.Tensor) or not out.is_floating_point() or bool(torch.isfinite(out).all())

    with torch.no_grad(), LayerTap(model, None, record=finite) as tap:
        out = run_until_stopped(model, x)
    bad = [name for name in tap.order if tap.outputs.get(name) is False]
    if bad:
        raise BadInputError(f"{type(model).__name__}: layer {bad[0]} produces NaN or Inf on this input "
                            f"(activations overflow {str(x.dtype).replace('torch.', '')}); nothing was written")
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not torch.isfinite(out).all():
        raise BadInputError(f"{type(model).__name__}: the output holds NaN or Inf on this input; nothing was written")




def feeding_weight(model: nn.Module, layer: str) -> tuple[str, torch.Tensor] | tuple[None, None]:
    """(module path, (C_out, ...) weight) of the convolution or linear layer whose filters
    produce ``layer``'s channels (:func:`feeding_layer`), or (None, None)."""
    path = feeding_layer(model, layer)
    return (path, model.get_submodule(path).weight) if path is not None else (None, None)


__all__ = ["LayerInfo", "LayerTap", "StopForward", "run_until_stopped", "check_finite", "check_runnable",
           "friendly_names", "resolve_layer", "layer_geometry", "cached_geometry", "geometry_key", "conv_layers",
           "default_layers", "MAX_DEFAULT_LAYERS", "last_conv_layer", "output_shapes", "count_flops", "is_conv",
           "feeding_layer", "feeding_weight", "ELEMENTWISE", "ACTIVATIONS", "meta_copy"]
