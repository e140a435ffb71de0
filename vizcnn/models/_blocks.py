"""Builder pieces shared by the ImageNet-era models (AlexNet-2012 and ZFNet).

Both papers use the same local response normalisation, the same
dropout-4096-4096 classifier and Gaussian weight init, so these live here once.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

import torch.nn as nn

from vizcnn.core.errors import BadArgumentError

#: Width of fc6 and fc7 in both papers.
HIDDEN_FEATURES = 4096


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise :class:`BadArgumentError`."""
    # bool is an int subclass; True as a class count is always a caller mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadArgumentError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_dropout(value: object) -> float:
    """Return ``value`` as a float if it is a probability in [0, 1), else raise."""
    # p = 1 would zero every activation in training; the NaN check is `not (0 <= p < 1)`.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise BadArgumentError(f"dropout must be a probability in [0, 1), got {value!r}")
    return float(value)


def paper_lrn() -> nn.LocalResponseNorm:
    """Local response normalisation as published: n=5, alpha=1e-4, beta=0.75, k=2.

    The papers write ``b = a / (k + alpha * sum(a**2)) ** beta``; PyTorch divides
    ``alpha`` by ``size``, so the paper's alpha is passed as ``5 * 1e-4``.
    Input and output shape ``(N, C, H, W)``.
    """
    return nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)


def classifier(in_features: int, num_classes: int, dropout: float, *, hidden: int = HIDDEN_FEATURES) -> nn.Sequential:
    """The shared head ``drop6, fc6, relu6, drop7, fc7, relu7, fc8``.

    Maps ``(N, in_features)`` to ``(N, num_classes)`` logits. Dropout sits before
    fc6 and fc7, where both papers apply it.
    """
    return nn.Sequential(
        OrderedDict(
            drop6=nn.Dropout(dropout),
            fc6=nn.Linear(in_features, hidden),
            relu6=nn.ReLU(inplace=False),
            drop7=nn.Dropout(dropout),
            fc7=nn.Linear(hidden, hidden),
            relu7=nn.ReLU(inplace=False),
            fc8=nn.Linear(hidden, num_classes),
        )
    )


def init_gaussian_(model: nn.Module, *, std: float, bias_one: Collection[str] = ()) -> None:
    """Draw every conv/linear weight from N(0, std**2); biases 1 in ``bias_one``, else 0.

    ``bias_one`` holds short layer names (``"conv2"``, ``"fc6"``), matched against
    the last component of each module's qualified name.
    """
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                short = name.rsplit(".", 1)[-1]
                nn.init.constant_(module.bias, 1.0 if short in bias_one else 0.0)
