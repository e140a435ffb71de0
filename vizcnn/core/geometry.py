"""Receptive-field geometry traced through a forward pass, and which layers are *local*.

A layer is **local** when every op on every path from the input to it is known to
read a bounded, translation-equivariant neighbourhood: then a unit depends on nothing
outside its receptive field, and projecting it through a crop of the image is exact
(``vizcnn.methods.deconv``'s fast path). Known local, by name of the torch function the
forward calls:

- convolutions and pools (``conv2d``, ``max_pool2d``, ``avg_pool2d``): the standard
  receptive-field recurrence, per axis (a 1×3 kernel grows the width only);
- element-wise ops (activations, dropout, eval-mode ``batch_norm``, arithmetic) and
  local response normalization (across channels only); an operand that broadcasts is
  allowed only when it is constant over space (a parameter or buffer whose last two
  sizes are 1, a Python number);
- channel-wise layout ops that keep the last two (spatial) dimensions where they are
  (``cat``/``chunk``/``split`` along channels, ``view``/``reshape``/``transpose``/
  ``permute`` that leave H and W last: ShuffleNet's channel shuffle), channel slicing,
  reductions and softmax over the channel dimension;
- ``adaptive_*_pool2d`` to the size it already has (an identity).

Where branches meet (``cat``, ``add``), the geometries merge per axis: the union of the
branches' receptive fields along y and along x separately.

Everything else is **not local** and makes every later layer non-local: GroupNorm,
InstanceNorm, LayerNorm (it normalises over the last dimension, which is space in NCHW),
batch norm with batch statistics, global pooling (and so squeeze-and-excitation's
multiply), attention, ``interpolate``, padding modes other than zeros (``F.pad``),
spatial slicing or flipping, a tensor the trace did not make (neither the input nor a
parameter or buffer), and any function not listed here. A non-local layer's receptive
field is the whole image.

The probe runs the user's model *in place*, never a copy: its forward hooks are
silenced, and on the meta device (the default) every parameter and buffer an op reads
is replaced by a data-free meta tensor of its shape, so no weight is read or written and
no arithmetic is done. Parameters, buffers and hooks are restored on exit, normal or not.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map


@dataclass(frozen=True)
class Geometry:
    """rf: receptive field (height, width) in input pixels; jump: input pixels between
    neighbouring units; start: input coordinate of unit (0, 0)'s receptive-field centre;
    local: every op from the input here is known local (else rf is the whole image)."""

    rf: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]
    local: bool = True


#: a tensor that does not depend on the input (a parameter, a buffer, a constant)
CONST = "const"

_CONV = {"conv2d"}
_POOL = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d"}
_ADAPTIVE = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices",
             "_adaptive_max_pool2d"}

#: one tensor in, each position on its own (parameters per channel allowed)
_POINTWISE = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "threshold", "threshold_",
    "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "elu", "elu_",
    "selu", "selu_", "celu", "celu_", "gelu", "silu", "mish", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish",
    "hardsigmoid", "softplus", "prelu", "rrelu", "rrelu_", "logsigmoid", "softsign", "tanhshrink", "hardshrink",
    "softshrink", "glu", "abs", "abs_", "neg", "neg_", "__neg__", "exp", "exp_", "log", "log_", "sqrt", "sqrt_",
    "rsqrt", "rsqrt_", "square", "sign", "reciprocal", "__abs__",
    "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "feature_dropout", "alpha_dropout",
    "feature_alpha_dropout", "local_response_norm",
    "clone", "contiguous", "detach", "detach_", "to", "float", "double", "half", "bfloat16", "type", "type_as",
    "requires_grad_", "cpu", "cuda", "copy_",
}
#: several tensors in, element by element with broadcasting
_BROADCAST = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "pow", "pow_", "maximum",
    "minimum", "lerp", "addcmul", "addcdiv",
    "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__",
    "__truediv__", "__rtruediv__", "__itruediv__", "__pow__", "__rpow__", "__ipow__", "rsub",
}
#: ops that act on each position on its own (the walk to Grad-CAM's layer passes them)
ELEMENTWISE_OPS = frozenset(_POINTWISE | _BROADCAST | {"batch_norm"})
#: layout ops checked by where the last two dimensions go
_LAYOUT = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as", "transpose", "transpose_",
           "permute", "swapaxes", "movedim", "squeeze", "unsqueeze", "cat", "concat", "concatenate", "stack",
           "chunk", "split", "tensor_split", "unbind", "__getitem__", "narrow", "select", "expand", "expand_as"}
#: where the ``dim`` argument of a layout op sits (Tensor methods: self is argument 0)
_DIM_ARG = {"cat": 1, "concat": 1, "concatenate": 1, "stack": 1, "chunk": 2, "split": 2, "tensor_split": 2,
            "unbind": 1, "narrow": 1, "select": 1, "squeeze": 1, "unsqueeze": 1, "unflatten": 1}
#: ops whose second tensor argument only lends its shape, dtype or device
_SELF_ONLY = {"view_as", "reshape_as", "expand_as", "type_as", "to", "new_tensor"}
#: ops whose result depends on their input's shape and dtype only
_SHAPE_ONLY = {"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty",
               "new_full", "new_tensor"}
#: reductions and normalisations over the dimension given by ``dim``
_OVER_DIM = {"sum", "mean", "amax", "amin", "max", "min", "std", "var", "prod", "norm", "logsumexp",
             "softmax", "log_softmax", "_softmax", "cumsum", "argmax", "argmin"}


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in an argument list, one level into lists and tuples (``cat``'s)."""
    out = []
    for v in value:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(t for t in v if isinstance(t, torch.Tensor))
    return out


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _arg(args, kwargs, i: int, key: str, default):
    return args[i] if len(args) > i else kwargs.get(key, default)


def _spatial_dims(ndim: int, dims) -> set[int]:
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    return {d % ndim for d in dims if isinstance(d, int)}


class GeometryMode(TorchFunctionMode):
    """Traces geometry through every torch function a forward runs (see the module
    docstring); ``geo[id(t)]`` is each traced tensor's :class:`Geometry` or :data:`CONST`.

    ``constants``: the model's parameters and buffers. ``meta``: run every op on meta
    tensors (the model's own tensors are swapped for data-free ones as they are read).
    ``producer[id(t)]``: (function name, ids of the traced tensors it read) of the op
    that made ``t`` (an in-place op keeps the maker), for walking the dataflow back.
    """

    def __init__(self, height: int, width: int, constants: set[int], *, meta: bool):
        super().__init__()
        self.size = (height, width)
        self.constants = constants
        self.meta = meta
        self.geo: dict[int, Geometry | str] = {}
        self.producer: dict[int, tuple[str, list[int]]] = {}
        self.keep: list[torch.Tensor] = []  # ids stay unique while the tensors live
        self._meta: dict[int, torch.Tensor] = {}
        self._views: dict[int, list[torch.Tensor]] = {}

    # ----------------------------------------------------------------------- bookkeeping

    def seed(self, x: torch.Tensor) -> None:
        """Marks ``x`` as the input image: receptive field 1×1 at each pixel."""
        self._set(x, Geometry((1, 1), (1, 1), (0.0, 0.0)))

    def whole(self, jump: tuple[int, int] = (1, 1)) -> Geometry:
        h, w = self.size
        return Geometry((h, w), jump, ((h - 1) / 2, (w - 1) / 2), local=False)

    def of(self, t: torch.Tensor) -> Geometry | str:
        if id(t) in self.geo:
            return self.geo[id(t)]
        if id(t) in self.constants:
            return CONST
        return self.whole()  # made outside the trace: nothing is known about it

    def _set(self, t: torch.Tensor, g: Geometry | str) -> None:
        self.geo[id(t)] = g
        self.keep.append(t)
        base = t._base
        if base is not None:
            self._views.setdefault(id(base), []).append(t)

    def _to_meta(self, a):
        if not isinstance(a, torch.Tensor) or a.device.type == "meta":
            return a
        if id(a) not in self._meta:
            self._meta[id(a)] = torch.empty_like(a, device="meta")
            self.keep.append(a)
        return self._meta[id(a)]

    # ----------------------------------------------------------------------- the trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        run_args, run_kwargs = (tree_map(self._to_meta, args), tree_map(self._to_meta, kwargs)) if self.meta \
            else (args, kwargs)
        out = func(*run_args, **run_kwargs)
        name = getattr(func, "__name__", "")
        ins = _tensors([*args, *kwargs.values()])
        if name in _SELF_ONLY:  # the other tensor gives a shape or dtype, not data
            ins = ins[:1]
        if name == "__setitem__" and ins:
            self._inplace(ins[0], self._setitem(args, ins))
            return out
        outs = [out] if isinstance(out, torch.Tensor) else \
            [t for t in out if isinstance(t, torch.Tensor)] if isinstance(out, (tuple, list)) else []
        if not outs:
            return out
        g = CONST if name in _SHAPE_ONLY else self._rule(name, args, kwargs, ins, outs[0])
        traced = [id(t) for t in ins if self.of(t) is not CONST]
        for t in outs:
            if any(t is a for a in ins):  # written in place (relu_, add_, +=, out=): it returned its argument
                self._inplace(t, g)
                self.producer.setdefault(id(t), (name, [i for i in traced if i != id(t)]))
            else:
                self._set(t, g)
                self.producer[id(t)] = (name, traced)
        return out

    def _inplace(self, t: torch.Tensor, g: Geometry | str) -> None:
        """An in-place write: the tensor gets ``g``; its base and the base's other views,
        which share its memory, merge ``g`` into theirs."""
        self.geo[id(t)] = g
        root = t._base if t._base is not None else t
        for v in (root, *self._views.get(id(root), [])):
            if v is not t:
                self.geo[id(v)] = self._merge([self.of(v), g], None)

    # ----------------------------------------------------------------------- the rules

    def _rule(self, name: str, args, kwargs, ins: list[torch.Tensor], out: torch.Tensor) -> Geometry | str:
        geos = [self.of(t) for t in ins]
        traced = [(t, g) for t, g in zip(ins, geos) if g is not CONST]
        if not traced:
            return CONST
        if name in _CONV or name in _POOL:
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if first is None or any(t is not first for t, _ in traced):  # weights made from the data
                return self._nonlocal(out, traced)
            return self._spatial(name, args, kwargs, self.of(first))
        if out.dim() < 2 or any(t.dim() < 2 or t.shape[-2:] != out.shape[-2:] for t, _ in traced):
            return self._nonlocal(out, traced)
        if name in _ADAPTIVE:
            return self._merge([g for _, g in traced], out)  # same size in and out: an identity
        if name in _POINTWISE or name == "batch_norm" and not _arg(args, kwargs, 5, "training", False):
            return self._merge([g for _, g in traced], out)
        if name in _BROADCAST:
            consts = [t for t, g in zip(ins, geos) if g is CONST]
            if any(t.dim() >= 1 and any(s != 1 for s in t.shape[-2:]) for t in consts):
                return self._nonlocal(out, traced)  # a pattern over space: position-dependent
            return self._merge([g for _, g in traced], out)
        if name in _LAYOUT and self._keeps_space(name, args, kwargs, traced[0][0], out):
            return self._merge([g for _, g in traced], out)
        if name in _OVER_DIM:
            dim = _arg(args, kwargs, 1, "dim", None)
            src = traced[0][0]
            if dim is not None and not _spatial_dims(src.dim(), dim) & {src.dim() - 1, src.dim() - 2}:
                return self._merge([g for _, g in traced], out)
        return self._nonlocal(out, traced)

    @staticmethod
    def _keeps_space(name: str, args, kwargs, src: torch.Tensor, out: torch.Tensor) -> bool:
        """A layout op leaves the last two (spatial) dimensions last and untouched (the
        caller has checked that the output's last two sizes are the input's)."""
        n = src.dim()
        space = {n - 1, n - 2}
        if name in ("transpose", "transpose_", "swapaxes"):
            return not _spatial_dims(n, [_arg(args, kwargs, 1, "dim0", 0), _arg(args, kwargs, 2, "dim1", 0)]) & space
        if name == "permute":
            order = list(args[1:]) if len(args) > 1 and isinstance(args[1], int) else \
                list(_arg(args, kwargs, 1, "dims", ()))
            return len(order) == n and [d % n for d in order][-2:] == [n - 2, n - 1]
        if name == "movedim":
            return not (_spatial_dims(n, _arg(args, kwargs, 1, "source", ())) |
                        _spatial_dims(n, _arg(args, kwargs, 2, "destination", ()))) & space
        if name == "flatten":
            return _arg(args, kwargs, 2, "end_dim", -1) % n < n - 2
        if name in _DIM_ARG:
            dim = _arg(args, kwargs, _DIM_ARG[name], "dim", 0 if name != "squeeze" else None)
            if dim is None:  # squeeze every size-1 dimension: space stays if it has none
                return src.shape[-1] > 1 and src.shape[-2] > 1
            grows = name in ("stack", "unsqueeze")  # the new dimension counts
            return not _spatial_dims(n + grows, dim) & ({n, n - 1} if grows else space)
        if name == "__getitem__":
            key = args[1] if len(args) > 1 else None
            key = key if isinstance(key, tuple) else (key,)
            return len(key) <= n - 2 and all(isinstance(k, (int, slice)) for k in key)
        return True  # view, reshape, expand (row-major: H, W last keeps every pixel's place)

    def _setitem(self, args, ins: list[torch.Tensor]) -> Geometry | str:
        target = ins[0]
        key = args[1] if len(args) > 1 else None
        key = key if isinstance(key, tuple) else (key,)
        value = args[2] if len(args) > 2 else None
        leading = not any(k is Ellipsis or k is None or isinstance(k, torch.Tensor) for k in key) and \
            len(key) <= target.dim() - 2
        vg = self.of(value) if isinstance(value, torch.Tensor) else CONST
        if not leading:
            return self.whole(self._jump(target))
        if vg is CONST:
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and any(s != 1 for s in value.shape[-2:]):
                return self.whole(self._jump(target))
            return self.of(target)
        if value.dim() < 2 or value.shape[-2:] != target.shape[-2:]:
            return self.whole(self._jump(target))
        return self._merge([self.of(target), vg], target)

    def _jump(self, t: torch.Tensor) -> tuple[int, int]:
        g = self.geo.get(id(t))
        if isinstance(g, Geometry):
            return g.jump
        if t.dim() >= 2 and t.shape[-1] > 0 and t.shape[-2] > 0:
            return max(1, round(self.size[0] / t.shape[-2])), max(1, round(self.size[1] / t.shape[-1]))
        return self.size

    def _nonlocal(self, out: torch.Tensor, traced) -> Geometry:
        same = [g for t, g in traced if isinstance(g, Geometry) and t.dim() >= 2 and out.dim() >= 2
                and t.shape[-2:] == out.shape[-2:]]
        if same:
            return self.whole(same[0].jump)
        h, w = self.size
        if out.dim() >= 2 and out.shape[-1] > 0 and out.shape[-2] > 0:
            return self.whole((max(1, round(h / out.shape[-2])), max(1, round(w / out.shape[-1]))))
        return self.whole((h, w))

    def _merge(self, geos: list, out: torch.Tensor | None) -> Geometry | str:
        """Per axis, the union of the receptive fields of the branches that meet here."""
        geos = [g for g in geos if g is not CONST]
        if not geos:
            return CONST
        if len(geos) == 1:
            return geos[0]
        jump = geos[0].jump
        if not all(g.local for g in geos) or any(g.jump != jump for g in geos):
            return self.whole(max((g.jump for g in geos), key=lambda j: j[0] * j[1]))
        rf, start = [], []
        for d in range(2):
            lo = min(g.start[d] - (g.rf[d] - 1) / 2 for g in geos)
            hi = max(g.start[d] + (g.rf[d] - 1) / 2 for g in geos)
            rf.append(int(math.ceil(hi - lo + 1 - 1e-9)))
            start.append((lo + hi) / 2)
        return Geometry(tuple(rf), jump, tuple(start))

    def _spatial(self, name: str, args, kwargs, g: Geometry | str) -> Geometry | str:
        if g is CONST:
            return CONST
        if name in _CONV:
            k = tuple(_arg(args, kwargs, 1, "weight", None).shape[-2:])
            stride, dilation = _pair(_arg(args, kwargs, 3, "stride", 1)), _pair(_arg(args, kwargs, 5, "dilation", 1))
            padding = _arg(args, kwargs, 4, "padding", 0)
            if isinstance(padding, str):  # 'same' keeps the centre, 'valid' pads nothing
                padding = tuple((d * (kk - 1)) // 2 for kk, d in zip(k, dilation)) if padding == "same" else (0, 0)
        else:
            k = _pair(_arg(args, kwargs, 1, "kernel_size", None))
            stride = _pair(_arg(args, kwargs, 2, "stride", None) or k)
            padding = _arg(args, kwargs, 3, "padding", 0)
            dilation = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else (1, 1)
        padding = _pair(padding)
        keff = [d * (kk - 1) + 1 for kk, d in zip(k, dilation)]
        jump = tuple(g.jump[i] * stride[i] for i in range(2))
        if not g.local:
            return self.whole(jump)
        return Geometry(
            tuple(g.rf[i] + (keff[i] - 1) * g.jump[i] for i in range(2)), jump,
            tuple(g.start[i] + ((keff[i] - 1) / 2 - padding[i]) * g.jump[i] for i in range(2)),
        )


@contextmanager
def silenced(model: nn.Module) -> Iterator[None]:
    """The user's forward (and backward) hooks off for a probe forward, and every
    parameter and buffer entry put back afterwards (a forward that reassigns one, say
    ``self.count += 1``, leaves the user's tensor in place), normal exit or not."""
    saved = []
    for m in model.modules():
        if isinstance(m, torch.jit.ScriptModule):  # takes no hooks, and its forward cannot reassign
            continue
        saved.append((m, {k: m.__dict__[k] for k in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                     "_backward_pre_hooks") if k in m.__dict__},
                      dict(m._parameters), dict(m._buffers)))
        for k in saved[-1][1]:
            m.__dict__[k] = OrderedDict()
    try:
        yield
    finally:
        for m, hooks, params, buffers in saved:
            m.__dict__.update(hooks)
            for now, then in ((m._parameters, params), (m._buffers, buffers)):
                if now.keys() != then.keys() or any(now[k] is not v for k, v in then.items()):
                    now.clear()
                    now.update(then)


__all__ = ["Geometry", "GeometryMode", "CONST", "ELEMENTWISE_OPS", "silenced"]
