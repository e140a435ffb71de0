"""LeNet-5 as published (LeCun, Bottou, Bengio & Haffner 1998), layer for layer.

Layers on a ``(N, 1, 32, 32)`` input, each of C1..F6 followed by the squashing
``f(a) = 1.7159 tanh(2a/3)`` (modules ``act1``..``act6``)::

    layer  maps / units                                        trainable params
    c1     6 @ 28x28, 5x5 conv                                    156
    s2     6 @ 14x14, 2x2 sum x coefficient + bias per map         12
    c3    16 @ 10x10, 5x5 conv over the partial table C3_TABLE  1,516
    s4    16 @ 5x5, as s2                                          32
    c5   120 @ 1x1, 5x5 conv (full)                            48,120
    f6    84 units                                             10,164
    out   num_classes Euclidean RBF units on fixed +-1 codes        0

Total 60,000 trainable parameters with ``output="rbf"`` (the paper's figure), and
60,850 with ``output="linear"`` (a plain 84 -> 10 ``nn.Linear`` head adds 850).

The paper's RBF codes are stylised 7x12 bitmaps of the characters; here they are
deterministic +-1 draws (``torch.Generator`` seeded 0), held as a buffer and never
trained. ``out`` returns the *negative* squared distance so that ``argmax`` is the
predicted class, as for logits. The paper's input scaling (background -0.1,
foreground 1.175) and its MAP loss are left to the caller.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vizcnn.core.errors import BadArgumentError
from vizcnn.models._blocks import check_positive_int

__all__ = ["C3_TABLE", "ConnectionTableConv2d", "EuclideanRBF", "LeNet5", "ScaledTanh", "Subsampling", "lenet5"]

#: Table I of the paper: which S2 maps feed each C3 map (row = C3 map).
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip

_OUTPUT_CHOICES = ("rbf", "linear")


def _uniform_fan_in_(tensor: torch.Tensor, fan_in: int | torch.Tensor) -> None:
    # Appendix C: uniform in +-2.4 / F_i, F_i the unit's fan-in, which keeps the
    # weighted sums inside the sigmoid's near-linear range at the start.
    with torch.no_grad():
        tensor.uniform_(-1.0, 1.0).mul_(2.4 / fan_in)


class ScaledTanh(nn.Module):
    """The paper's squashing ``1.7159 * tanh(2a / 3)``; any shape in, same shape out.

    The constants give ``f(+-1) = +-1`` with maximal second derivative there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class Subsampling(nn.Module):
    """S2/S4: each 2x2 block summed, times one trainable coefficient per map, plus one bias.

    ``(N, C, H, W)`` -> ``(N, C, H // 2, W // 2)``; ``2 * C`` parameters. The sum is a
    real pooling op so autograd's backward spreads the signal over the block.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        # Conv-like attributes so receptive-field code can treat it as a layer.
        self.kernel_size = (2, 2)
        self.stride = (2, 2)
        self.padding = (0, 0)
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_fan_in_(self.weight, 4)
        _uniform_fan_in_(self.bias, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = F.avg_pool2d(x, kernel_size=2, stride=2, divisor_override=1)
        return summed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size=2, stride=2"


class ConnectionTableConv2d(nn.Module):
    """A convolution where output map ``i`` sees only the input maps in ``table[i]``.

    Stores one ``k x k`` kernel per table entry (``weight``: ``(sum(len(row)), k, k)``)
    plus one bias per output map, and scatters them into a dense
    ``(out, in, k, k)`` weight (``full_weight``) before ``F.conv2d``, so the backward
    pass is the true transposed filter. ``(N, in, H, W)`` -> ``(N, out, H-k+1, W-k+1)``.
    """

    def __init__(self, table: Sequence[Sequence[int]], in_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = len(table)
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (1, 1)
        self.padding = (0, 0)
        connected = torch.zeros(self.out_channels, in_channels, dtype=torch.bool)
        for out_map, in_maps in enumerate(table):
            connected[out_map, list(in_maps)] = True
        # Row-major order of the mask fixes which stored kernel goes where.
        index = connected.flatten().nonzero().flatten()
        # Both follow from the table, so they stay out of the state dict.
        self.register_buffer("connections", connected, persistent=False)
        self.register_buffer("index", index, persistent=False)
        self.weight = nn.Parameter(torch.empty(len(index), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        area = self.kernel_size[0] * self.kernel_size[1]
        fan_in = self.connections.sum(dim=1) * area  # (out,)
        out_of_row = self.index // self.in_channels
        _uniform_fan_in_(self.weight, fan_in[out_of_row].view(-1, 1, 1).to(self.weight.dtype))
        _uniform_fan_in_(self.bias, fan_in.to(self.bias.dtype))

    @property
    def full_weight(self) -> torch.Tensor:
        """The dense ``(out, in, k, k)`` weight, zero where the table has no connection."""
        dense = self.weight.new_zeros(self.out_channels * self.in_channels, *self.kernel_size)
        dense = dense.index_copy(0, self.index, self.weight)
        return dense.view(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.full_weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"connections={int(self.connections.sum())}"
        )


class EuclideanRBF(nn.Module):
    """Output units ``-sum_j (x_j - code_ij)**2`` over fixed +-1 codes.

    ``(N, in_features)`` -> ``(N, num_classes)``. ``codes`` (``(num_classes,
    in_features)``) is a buffer: saved in the state dict, never trained.
    """

    def __init__(self, in_features: int, num_classes: int, *, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        bits = torch.randint(0, 2, (num_classes, in_features), generator=generator)
        self.register_buffer("codes", bits.float() * 2.0 - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Negated so the best match is the maximum, like a logit.
        return -(x.unsqueeze(1) - self.codes).pow(2).sum(dim=-1)

    def extra_repr(self) -> str:
        num_classes, in_features = self.codes.shape
        return f"in_features={in_features}, num_classes={num_classes}"


class LeNet5(nn.Module):
    """LeNet-5; ``forward`` maps ``(N, 1, 32, 32)`` to ``(N, num_classes)`` scores.

    With ``output="rbf"`` the scores are negative squared distances to the class
    codes; with ``output="linear"`` they are logits.
    """

    def __init__(self, *, num_classes: int = 10, output: str = "rbf") -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        if output not in _OUTPUT_CHOICES:
            raise BadArgumentError(f"output must be one of {', '.join(_OUTPUT_CHOICES)}, got {output!r}")
        self.output = output
        # One squashing module per layer, registered after it, so hooks and layer
        # listings see each application separately and in forward order.
        self.c1 = nn.Conv2d(1, 6, kernel_size=5)
        self.act1 = ScaledTanh()
        self.s2 = Subsampling(6)
        self.act2 = ScaledTanh()
        self.c3 = ConnectionTableConv2d(C3_TABLE, in_channels=6, kernel_size=5)
        self.act3 = ScaledTanh()
        self.s4 = Subsampling(16)
        self.act4 = ScaledTanh()
        self.c5 = nn.Conv2d(16, 120, kernel_size=5)
        self.act5 = ScaledTanh()
        self.f6 = nn.Linear(120, 84)
        self.act6 = ScaledTanh()
        self.out: nn.Module = EuclideanRBF(84, num_classes) if output == "rbf" else nn.Linear(84, num_classes)
        for layer in (self.c1, self.c5, self.f6, self.out):
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fan_in = layer.weight[0].numel()
                _uniform_fan_in_(layer.weight, fan_in)
                _uniform_fan_in_(layer.bias, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 32, 32)`` -> ``(N, num_classes)``; maps 28, 14, 10, 5, 1 on the way."""
        x = self.act1(self.c1(x))
        x = self.act2(self.s2(x))
        x = self.act3(self.c3(x))
        x = self.act4(self.s4(x))
        x = self.act5(self.c5(x))
        x = self.act6(self.f6(torch.flatten(x, 1)))
        return self.out(x)


def lenet5(*, num_classes: int = 10, output: str = "rbf") -> LeNet5:
    """Build LeNet-5 with the paper's init; ``output`` is ``"rbf"`` (paper) or ``"linear"``.

    Raises :class:`~vizcnn.core.errors.BadArgumentError` for a non-positive
    ``num_classes`` or an unknown ``output``.
    """
    return LeNet5(num_classes=num_classes, output=output)
