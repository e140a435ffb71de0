"""ZFNet (Zeiler & Fergus 2014, Fig. 3): AlexNet with a 7x7 stride-2 first layer, dense.

Layers on a ``(N, 3, 224, 224)`` input (map side after each stage)::

    conv1  96 @ 7x7 /2 pad 1 -> relu1 -> pool1 3x3/2 -> norm1      110 -> 55
    conv2 256 @ 5x5 /2 pad 0 -> relu2 -> pool2 3x3/2 -> norm2       26 -> 13
    conv3 384 @ 3x3    pad 1 -> relu3                               13
    conv4 384 @ 3x3    pad 1 -> relu4                               13
    conv5 256 @ 3x3    pad 1 -> relu5 -> pool5 3x3/2                13 -> 6
    flatten 9216 -> drop6 -> fc6 4096 -> relu6 -> drop7 -> fc7 4096 -> relu7 -> fc8

Fig. 3's caption orders layers 1 and 2 as rectify, pool, then contrast-normalise,
so the normalisation follows the pool here (AlexNet normalises before pooling).
The sizes 110/55/26/13/6 come out only with conv1 padding 1 and ceil-mode pooling;
floor mode would leave conv5's pool at 5x5. The paper's contrast normalisation is
taken to be AlexNet's LRN (its parameters are not given).

Trainable parameters with 1000 classes: 62,357,608 with ``widths=(384, 384, 256)``;
107,627,624 with the paper's wider ``widths=(512, 1024, 512)`` variant.

Not built in: the paper renormalises any conv filter whose RMS exceeds 0.1 back to
0.1 after each update; that belongs to the training loop.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from vizcnn.core.errors import BadArgumentError
from vizcnn.models._blocks import check_dropout, check_positive_int, classifier, init_gaussian_, paper_lrn

__all__ = ["ZFNet", "zfnet", "zfnet_map_sizes"]

#: The side of the square crop the paper trains on; the classifier is sized for it.
INPUT_SIZE = 224
_POOL = {"kernel_size": 3, "stride": 2, "ceil_mode": True}


def conv1_padding(kernel: int, stride: int) -> int:
    """Padding for a first layer of ``kernel`` x ``kernel`` at ``stride``.

    ``max(0, (kernel - stride) // 2 - 1)`` reproduces both published first layers:
    1 for ZFNet's (7, 2) and 2 for AlexNet's (11, 4) on a 224 input.
    """
    return max(0, (kernel - stride) // 2 - 1)


def _out_size(size: int, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> int:
    # Mirrors PyTorch's conv/pool output arithmetic, including ceil mode's rule that
    # the last window must start inside the (left-padded) input.
    span = size + 2 * padding - kernel
    if span < 0:
        return 0
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def conv2_stride_for(conv1_stride: int) -> int:
    """conv2's stride that keeps layer 2's map near the published 13² after pooling:
    ZFNet's conv2 is strided (2) because its conv1 stride is only 2; AlexNet's
    stride-4 conv1 needs none (1)."""
    return 1 if conv1_stride >= 4 else 2


def zfnet_map_sizes(conv1: tuple[int, int] = (7, 2), input_size: int = INPUT_SIZE,
                    conv2_stride: int = 2) -> dict[str, int]:
    """Side of each stage's square output map for a ``conv1=(kernel, stride)`` design.

    Keys ``conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5`` (pixels).
    Raises :class:`BadArgumentError` if some stage would get a map smaller than
    its window.
    """
    kernel, stride = _check_conv1(conv1)
    sizes: dict[str, int] = {}
    stages = (
        ("conv1", kernel, stride, conv1_padding(kernel, stride), False),
        ("pool1", 3, 2, 0, True),
        ("conv2", 5, conv2_stride, 2 if conv2_stride == 1 else 0, False),
        ("pool2", 3, 2, 0, True),
        ("conv3", 3, 1, 1, False),
        ("conv4", 3, 1, 1, False),
        ("conv5", 3, 1, 1, False),
        ("pool5", 3, 2, 0, True),
    )
    size = input_size
    for name, k, s, p, ceil_mode in stages:
        if size + 2 * p < k:
            raise BadArgumentError(
                f"conv1={tuple(conv1)!r} leaves a {size}x{size} map before {name}, "
                f"smaller than its {k}x{k} window (input {input_size}x{input_size})"
            )
        size = _out_size(size, k, s, p, ceil_mode)
        sizes[name] = size
    return sizes


def _check_conv1(conv1: object) -> tuple[int, int]:
    if not isinstance(conv1, (tuple, list)) or len(conv1) != 2:
        raise BadArgumentError(f"conv1 must be a (kernel, stride) pair, got {conv1!r}")
    kernel, stride = conv1
    check_positive_int("conv1 kernel", kernel)
    check_positive_int("conv1 stride", stride)
    return kernel, stride


def _check_widths(widths: object) -> tuple[int, int, int]:
    if not isinstance(widths, (tuple, list)) or len(widths) != 3:
        raise BadArgumentError(f"widths must be three channel counts (conv3, conv4, conv5), got {widths!r}")
    for name, width in zip(("conv3", "conv4", "conv5"), widths):
        check_positive_int(f"widths {name}", width)
    return tuple(widths)  # type: ignore[return-value]


class ZFNet(nn.Module):
    """ZFNet; ``forward`` maps ``(N, 3, 224, 224)`` images to ``(N, num_classes)`` logits.

    ``map_sizes`` holds each stage's map side for a 224 input (see
    :func:`zfnet_map_sizes`); ``widths`` the conv3-5 channel counts.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        widths: tuple[int, int, int] = (384, 384, 256),
        conv1: tuple[int, int] = (7, 2),
        dropout: float = 0.5,
        channels: tuple[int, int] = (96, 256),
        hidden: int = 4096,
        input_size: int = INPUT_SIZE,
        conv2_stride: int = 2,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        w3, w4, w5 = _check_widths(widths)
        kernel, stride = _check_conv1(conv1)
        dropout = check_dropout(dropout)
        self.widths = (w3, w4, w5)
        c1, c2 = (check_positive_int(f"conv{i + 1} channels", c) for i, c in enumerate(channels))
        self.map_sizes = zfnet_map_sizes((kernel, stride), input_size, conv2_stride)

        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, c1, kernel_size=kernel, stride=stride, padding=conv1_padding(kernel, stride)),
                relu1=nn.ReLU(inplace=False),
                pool1=nn.MaxPool2d(**_POOL),
                norm1=paper_lrn(),
                conv2=nn.Conv2d(c1, c2, kernel_size=5, stride=conv2_stride, padding=2 if conv2_stride == 1 else 0),
                relu2=nn.ReLU(inplace=False),
                pool2=nn.MaxPool2d(**_POOL),
                norm2=paper_lrn(),
                conv3=nn.Conv2d(c2, w3, kernel_size=3, padding=1),
                relu3=nn.ReLU(inplace=False),
                conv4=nn.Conv2d(w3, w4, kernel_size=3, padding=1),
                relu4=nn.ReLU(inplace=False),
                conv5=nn.Conv2d(w4, w5, kernel_size=3, padding=1),
                relu5=nn.ReLU(inplace=False),
                pool5=nn.MaxPool2d(**_POOL),
            )
        )
        in_features = w5 * self.map_sizes["pool5"] ** 2
        self.classifier = classifier(in_features, num_classes, dropout, hidden=hidden)
        # "weights initialized to 1e-2 and biases set to 0" (sec. 3).
        init_gaussian_(self, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 224, 224)`` images -> ``(N, num_classes)`` logits."""
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def zfnet(**kwargs) -> ZFNet:
    """Build ZFNet with the paper's init; the keyword arguments are :class:`ZFNet`'s.

    ``widths=(512, 1024, 512)`` is the paper's wider variant. ``conv1=(kernel, stride)``
    swaps the first layer's design (padding from :func:`conv1_padding`); the
    classifier's input size follows from :func:`zfnet_map_sizes`.
    ``channels`` (conv1, conv2), ``hidden`` (fc6/fc7), ``input_size`` and ``conv2_stride``
    let the first-layer study train narrower, smaller versions of the same design.
    Raises :class:`~vizcnn.core.errors.BadArgumentError` for bad values, including a
    ``conv1`` that shrinks the input below some layer's window.
    """
    return ZFNet(**kwargs)
