"""Helpers for tests/test_dataset.py, and the worker its torchrun test launches.

The tiny model computes exactly: binary images (pixels 0 or 1, mean 0, std 1) times
weights that are multiples of 1/8 give sums that float32 represents without rounding,
so every activation is the same whatever the batch or the order of summation — the
merged result of several ranks can be compared bit for bit with one process's.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dataset_worker.py FOLDER OUT.pt

(the test starts the two ranks with torch.multiprocessing.spawn and torchrun's environment
variables, which is what torchrun does, without the seconds its launcher process costs).
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

SPEC = SimpleNamespace(name="tiny", input_size=(3, 16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
CONSTANT_UNIT = 5  # conv1 unit with zero weights and bias 1/2: the same value everywhere
LAYERS = ["conv1", "conv2"]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(8 * 8 * 8, 4))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def tiny_model() -> nn.Module:
    """Weights and biases in multiples of 1/8 (seeded); every conv1
    filter but the constant one has a positive bias, so it fires on black pixels."""
    g = torch.Generator().manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for conv in (model.features[0], model.features[3], model.classifier[0]):
            conv.weight.copy_(torch.randint(-3, 4, conv.weight.shape, generator=g) / 8)
            conv.bias.copy_(torch.randint(1, 4, conv.bias.shape, generator=g) / 8)
        model.features[0].weight[CONSTANT_UNIT] = 0
        model.features[0].bias[CONSTANT_UNIT] = 0.5
    return model.eval()


def write_images(folder: Path, n: int = 20, *, corrupt_after: int = 10) -> list[Path]:
    """n binary 16×16 PNGs (two of them identical, one all black) plus one corrupt
    file sorted after image ``corrupt_after``. Returns the good files in order."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        image = (rng.random((16, 16, 3)) < 0.4).astype(np.uint8) * 255
        if i == 7:
            image = cv2.imread(str(paths[2]))  # a duplicate: exact ties across images
        if i == 13:
            image[:] = 0
        path = folder / f"img_{i:02d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    (folder / f"img_{corrupt_after:02d}_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return paths


def main(folder: str, out: str) -> None:
    from vizcnn.api import scan
    from vizcnn.io.sources import open_data
    from vizcnn.methods.scan import distributed

    torch.set_num_threads(1)
    with distributed(torch.device("cpu")) as (rank, world, _):
        source = open_data(folder)
        results = {}
        for distinct in (False, True):
            r = scan(tiny_model(), source, SPEC, topk_layers=LAYERS, stats_layers=LAYERS, top=5,
                     distinct_images=distinct, batch_size=3, num_workers=0)
            results[distinct] = r
        if rank == 0:
            torch.save({"world": world, "results": {d: {
                "topk": {n: vars(t) for n, t in r.topk.items()},
                "stats": {n: {k: v for k, v in vars(s).items()} for n, s in r.stats.items()},
                "images": r.images, "skipped": [s.index for s in r.skipped], "world_size": r.world_size,
            } for d, r in results.items()}}, out)


def spawned(rank: int, world: int, port: int, folder: str, out: str) -> None:
    """Entry point for ``torch.multiprocessing.spawn``: the environment torchrun would
    give rank ``rank``, then :func:`main`."""
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    main(folder, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
