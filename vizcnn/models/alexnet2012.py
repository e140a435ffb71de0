"""AlexNet as published (Krizhevsky, Sutskever & Hinton 2012), not torchvision's variant.

Layers on a ``(N, 3, 224, 224)`` input (map side after each stage)::

    conv1  96 @ 11x11 /4 pad 2 -> relu1 -> norm1 -> pool1 3x3/2     55 -> 27
    conv2 256 @  5x5    pad 2 -> relu2 -> norm2 -> pool2 3x3/2     27 -> 13
    conv3 384 @  3x3    pad 1 -> relu3                             13
    conv4 384 @  3x3    pad 1 -> relu4                             13
    conv5 256 @  3x3    pad 1 -> relu5 -> pool5 3x3/2              13 -> 6
    flatten 9216 -> drop6 -> fc6 4096 -> relu6 -> drop7 -> fc7 4096 -> relu7 -> fc8

The paper's 224 input only gives 55 with padding 2 (or a 227 input); padding 2 is
what torchvision uses. ``groups=2`` restores the two-GPU split of conv2, conv4 and
conv5 (each half sees only its own GPU's maps).

Trainable parameters with 1000 classes: 62,378,344 with ``groups=1``,
60,965,224 with ``groups=2`` (the published network).

Compared with torchvision's ``alexnet``: 96/256/384/384/256 filters instead of
64/192/384/256/256, LRN kept, fixed 6x6 flatten instead of adaptive pooling.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from vizcnn.core.errors import BadArgumentError
from vizcnn.models._blocks import check_dropout, check_positive_int, classifier, init_gaussian_, paper_lrn

__all__ = ["AlexNet2012", "alexnet2012"]

_GROUP_CHOICES = (1, 2)
# "second, fourth, and fifth convolutional layers, as well as the fully-connected
# hidden layers" (sec. 5); fc8 is the output layer, not a hidden one.
_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")


class AlexNet2012(nn.Module):
    """The 2012 AlexNet; ``forward`` maps ``(N, 3, 224, 224)`` images to ``(N, num_classes)`` logits."""

    def __init__(self, *, num_classes: int = 1000, groups: int = 1, dropout: float = 0.5) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups not in _GROUP_CHOICES:
            raise BadArgumentError(f"groups must be one of {_GROUP_CHOICES}, got {groups!r}")
        dropout = check_dropout(dropout)
        self.groups = groups

        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2),
                relu1=nn.ReLU(inplace=False),
                norm1=paper_lrn(),
                pool1=nn.MaxPool2d(kernel_size=3, stride=2),
                conv2=nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups),
                relu2=nn.ReLU(inplace=False),
                norm2=paper_lrn(),
                pool2=nn.MaxPool2d(kernel_size=3, stride=2),
                # conv3 is the one layer that crossed GPUs in the paper, hence never grouped.
                conv3=nn.Conv2d(256, 384, kernel_size=3, padding=1),
                relu3=nn.ReLU(inplace=False),
                conv4=nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups),
                relu4=nn.ReLU(inplace=False),
                conv5=nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups),
                relu5=nn.ReLU(inplace=False),
                pool5=nn.MaxPool2d(kernel_size=3, stride=2),
            )
        )
        self.classifier = classifier(256 * 6 * 6, num_classes, dropout)
        init_gaussian_(self, std=0.01, bias_one=_BIAS_ONE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 224, 224)`` images -> ``(N, num_classes)`` logits."""
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def alexnet2012(*, num_classes: int = 1000, groups: int = 1, dropout: float = 0.5) -> AlexNet2012:
    """Build the 2012 AlexNet with the paper's init; ``groups=2`` is the two-GPU variant.

    Raises :class:`~vizcnn.core.errors.BadArgumentError` for a non-positive
    ``num_classes``, ``groups`` outside (1, 2), or ``dropout`` outside [0, 1).
    """
    return AlexNet2012(num_classes=num_classes, groups=groups, dropout=dropout)
