"""Recording layer outputs (and max-pool switches) through the one layer tap."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerTap, check_runnable, run_until_stopped
from .state import model_device, model_dtype, preserved_model


class Extractor:
    """Records the outputs of named layers while the model runs.

    >>> with Extractor(model, ["conv1", "conv5"]) as ex:
    ...     feats = ex.run(x)          # eval mode, no gradients, stops after conv5
    >>> feats["conv5"].shape   # (N, C, H, W), detached, on the model's device

    Layers are friendly names, module paths, or ``path:k`` for the k-th call of a
    module that runs more than once. Outputs are copied when recorded, so an in-place
    op later in the forward (torchvision's ``ReLU(inplace=True)``) cannot change them.
    With ``switches=True`` every ``nn.MaxPool2d`` also records its argmax indices
    (``ex.switches[path]``, one entry per call) for an explicit unpooling.

    :meth:`run` reads the features every other entry point reads: the model in eval
    mode (BatchNorm with its running statistics, which it leaves unchanged; no dropout),
    the user's train/eval modes restored after. A forward you call yourself inside the
    ``with`` block runs in whatever mode the model is in. On exit, normal or not, every
    hook is removed and the model's train/eval mode and requires_grad flags are as they
    were on entry.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], *, switches: bool = False, detach: bool = True):
        if isinstance(layers, str):
            layers = [layers]
        self.model = model
        self.layers = list(layers)
        self.record_switches = switches
        self.detach = detach
        self.switches: dict[str, list[torch.Tensor]] = {}
        self._tap = LayerTap(model, self.layers, record=self._keep)
        self.targets = self._tap.targets
        self._pools: LayerTap | None = None
        self._guard = None

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        return self._tap.outputs

    def _keep(self, _name: str, t: torch.Tensor) -> torch.Tensor:
        return (t.detach() if self.detach else t).clone()

    def _switch(self, key: str, t: torch.Tensor) -> torch.Tensor:
        m = self._pools.module(key)
        with torch.no_grad():
            _, idx = F.max_pool2d(t, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode,
                                  return_indices=True)
        self.switches.setdefault(key.partition(":")[0], []).append(idx)
        return idx

    def __enter__(self) -> "Extractor":
        self._guard = preserved_model(self.model)
        self._guard.__enter__()
        try:
            if self.record_switches:  # before the recorders, which may end the forward
                self._pools = LayerTap(self.model, None, inputs=True, record=self._switch,
                                       where=lambda m: isinstance(m, nn.MaxPool2d)).__enter__()
            self._tap.__enter__()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._tap.__exit__(*exc)
        if self._pools is not None:
            self._pools.__exit__(*exc)
            self._pools = None
        if self._guard is not None:
            guard, self._guard = self._guard, None
            guard.__exit__(*exc)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.outputs:
            if name in self.targets:
                raise KeyError(f"layer {name!r} has not run yet (call the model inside the with block)")
            raise KeyError(f"layer {name!r} is not recorded; recorded layers: {', '.join(self.layers)}")
        return self.outputs[name]

    def run(self, x: torch.Tensor, *, stop: bool = True) -> dict[str, torch.Tensor]:
        """Runs the model on x in eval mode without gradients and returns the recorded
        outputs; the model's train/eval modes are restored after (see the class docstring).

        With ``stop`` (the default) the forward ends as soon as every recorded layer has
        run: nothing above the deepest one is computed.
        """
        check_runnable(self.model)
        self.switches.clear()
        self._tap.stop = stop
        x = x.to(model_device(self.model, x.device), model_dtype(self.model, x.dtype)) if x.is_floating_point() else x
        try:
            with preserved_model(self.model), torch.no_grad():
                self.model.eval()
                run_until_stopped(self.model, x)
        finally:
            self._tap.stop = False
        self._tap.check()
        return dict(self.outputs)


__all__ = ["Extractor"]
