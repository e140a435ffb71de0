"""What a dataset pass consumes: batches of model inputs with their global image
indices, and the images that could not be used. ``vizcnn.io.sources`` makes them,
``vizcnn.methods.scan`` reads them."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Skipped:
    """An image that could not be used: its global index, path and the reason."""

    index: int
    path: str
    reason: str


@dataclass
class Batch:
    """Images of one batch: global indices (N,), the tensor (N, C, H, W) or None when
    every image of the batch was skipped, and the skipped ones."""

    index: torch.Tensor
    x: torch.Tensor | None
    skipped: list[Skipped]

    def pin_memory(self) -> "Batch":  # DataLoader(pin_memory=True) calls this
        return Batch(self.index.pin_memory(), None if self.x is None else self.x.pin_memory(), self.skipped)

    def __len__(self) -> int:
        return len(self.index)


__all__ = ["Batch", "Skipped"]
