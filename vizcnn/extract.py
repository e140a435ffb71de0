"""Recording layer outputs (and max-pool switches) with forward hooks."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BadInputError
from .layers import resolve_layer
from .state import preserved_model


class StopForward(Exception):
    """Raised from a forward hook to end a forward pass once the layers needed have run."""


def run_until_stopped(model: nn.Module, x: torch.Tensor) -> None:
    """Calls ``model(x)``; a ``StopForward`` from a hook ends it quietly, and a
    RuntimeError (an input the model cannot take: wrong size, channels, dtype) becomes
    a one-line ``BadInputError``."""
    try:
        model(x)
    except StopForward:
        pass
    except RuntimeError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BadInputError(f"{type(model).__name__} cannot run on an input of shape {tuple(x.shape)}: "
                            f"{reason}") from None


class Extractor:
    """Records the outputs of named layers while the model runs.

    >>> with Extractor(model, ["conv1", "conv5"]) as ex:
    ...     logits = model(x)
    >>> ex["conv5"].shape   # (N, C, H, W), detached, on the model's device

    Layers are friendly names, module paths, or ``path:k`` for the k-th call of a
    module that runs more than once. Outputs are copied when recorded, so an in-place
    op later in the forward (torchvision's ``ReLU(inplace=True)``) cannot change them.
    With ``switches=True`` every ``nn.MaxPool2d`` also records its argmax indices
    (``ex.switches[path]``, one entry per call) for an explicit unpooling.

    On exit, normal or not, every hook is removed and the model's train/eval mode and
    requires_grad flags are as they were on entry.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], *, switches: bool = False, detach: bool = True):
        if isinstance(layers, str):
            layers = [layers]
        self.model = model
        self.layers = list(layers)
        self.targets = {name: resolve_layer(model, name) for name in self.layers}
        self.record_switches = switches
        self.detach = detach
        self.outputs: dict[str, torch.Tensor] = {}
        self.switches: dict[str, list[torch.Tensor]] = {}
        self._handles: list = []
        self._guard = None
        self._stop_early = False

    def __enter__(self) -> "Extractor":
        self._guard = preserved_model(self.model)
        self._guard.__enter__()
        try:
            modules = dict(self.model.named_modules())
            by_path: dict[str, list[tuple[str, int]]] = {}
            for name, (path, call) in self.targets.items():
                by_path.setdefault(path, []).append((name, call))
            if self.record_switches:  # before the recorders, which may end the forward
                for path, m in modules.items():
                    if isinstance(m, nn.MaxPool2d):
                        self._handles.append(m.register_forward_hook(self._switch_recorder(path, m)))
            for path, wanted in by_path.items():
                self._handles.append(modules[path].register_forward_hook(self._recorder(wanted)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._guard is not None:
            guard, self._guard = self._guard, None
            guard.__exit__(*exc)

    def _recorder(self, wanted: list[tuple[str, int]]):
        calls = [0]

        def record(_m, _inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            for name, call in wanted:
                if call == calls[0] and isinstance(t, torch.Tensor):
                    self.outputs[name] = (t.detach() if self.detach else t).clone()
            calls[0] += 1
            if self._stop_early and len(self.outputs) == len(self.layers):
                raise StopForward

        def reset_calls(*_):
            calls[0] = 0

        self._handles.append(self.model.register_forward_pre_hook(reset_calls))
        return record

    def _switch_recorder(self, path: str, m: nn.MaxPool2d):
        def record(_m, inp, _out):
            with torch.no_grad():
                _, idx = F.max_pool2d(inp[0], m.kernel_size, m.stride, m.padding, m.dilation,
                                      ceil_mode=m.ceil_mode, return_indices=True)
            self.switches.setdefault(path, []).append(idx)
        return record

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.outputs:
            if name in self.targets:
                raise KeyError(f"layer {name!r} has not run yet (call the model inside the with block)")
            raise KeyError(f"layer {name!r} is not recorded; recorded layers: {', '.join(self.layers)}")
        return self.outputs[name]

    def run(self, x: torch.Tensor, *, stop: bool = True) -> dict[str, torch.Tensor]:
        """Runs the model on x without gradients and returns the recorded outputs.

        With ``stop`` (the default) the forward ends as soon as every recorded layer has
        run: nothing above the deepest one is computed.
        """
        self.outputs.clear()
        self.switches.clear()
        self._stop_early = stop
        try:
            with torch.no_grad():
                run_until_stopped(self.model, x)
        finally:
            self._stop_early = False
        return dict(self.outputs)
