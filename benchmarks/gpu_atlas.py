"""The atlas GPU row: VGG16 at 224 px over 50,000 images on one GPU (written for an H200).

    python -m benchmarks.gpu_atlas [--data FOLDER] [--images 50000] [--optimize-steps 0] [--out DIR]

With no ``--data``, the images are generated (seeded smooth colour noise: a sum of random
low-frequency waves per channel, made as they are read, so nothing is written to disk and
no download is needed). Every conv unit of VGG16 (13 layers, 4,224 units) gets its top-9,
projections and pages; ``--optimize-steps N`` adds optimised stimuli. Prints one JSON line
per stage (seconds, and the throughput of the pass) and writes the atlas to ``--out``
(default a temporary folder, removed after). The weights are torchvision's ImageNet ones
when cached, else seeded random (said in the output).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np


class GeneratedImages:
    """``n`` seeded 224×224 colour images, each a sum of 6 random plane waves per channel."""

    def __init__(self, n: int, size: int = 224):
        from vizcnn.io.sources import ImageSource

        class Source(ImageSource):
            name = f"generated:{n}"
            classes = None

            def __len__(self):
                return n

            def describe(self, i):
                return f"generated#{i}"

            def label(self, i):
                return None

            def read(self, i, *, gray=False):
                rng = np.random.default_rng(i)
                yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
                image = np.zeros((size, size, 3), np.float32)
                for c in range(3):
                    for _ in range(6):
                        fy, fx = rng.uniform(-6, 6, 2)
                        image[:, :, c] += np.cos(2 * math.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * math.pi))
                image = 1 / (1 + np.exp(-image))
                return image.mean(axis=2, keepdims=True) if gray else image

        self.source = Source()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_atlas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="DATA as for vizcnn topk (default: generated images)")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--optimize-steps", type=int, default=0, help="0: no optimised stimuli")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from vizcnn.io.sources import open_data
    from vizcnn.models import get_spec, load_model
    from vizcnn.writers.atlas import atlas

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, weights = load_model("vgg16", "imagenet", device=device), "imagenet"
    except Exception:  # noqa: BLE001 — offline without cached weights
        model, weights = load_model("vgg16", "random", device=device), "random"
    spec = get_spec("vgg16")
    source = open_data(args.data, limit=args.images) if args.data else GeneratedImages(args.images).source
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "atlas"
        start = time.perf_counter()
        summary = atlas(model, source, out, spec=spec, optimize=args.optimize_steps > 0,
                        optimize_steps=max(args.optimize_steps, 1), batch_size=args.batch_size,
                        num_workers=args.workers, log=lambda msg: print(msg, flush=True))
        total = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and "state" not in p.parts)
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "weights": weights, "images": summary["images"],
                      "units": sum(len(e["units"]) for e in summary["layers"]), "seconds": summary["seconds"],
                      "total_seconds": round(total, 1),
                      "pass_images_per_second": round(summary["images"] / summary["seconds"]["pass"], 1),
                      "site_mb": round(size / 2 ** 20, 1)}))


if __name__ == "__main__":
    main()
