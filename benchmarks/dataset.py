"""The dataset pass: top-9 + dead-filter statistics of every AlexNet conv layer over preloaded
images, against the bare forward pass of the same model over the same images; and the
projected time for ImageNet-train (1.28M images) at that rate."""
from __future__ import annotations

import torch

from vizcnn.io.sources import Batch
from vizcnn.methods.scan import scan_batches
from vizcnn.models import build_model

from .common import Row, median_seconds

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
IMAGENET_TRAIN = 1_281_167


def run(device: torch.device, flops_per_s: float, *, quick: bool = False) -> list[Row]:
    model = build_model("alexnet").to(device).eval()
    n, batch = (64, 32) if quick or device.type == "cpu" else (2048, 256)
    images = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    batches = [Batch(torch.arange(i, i + batch), images[i:i + batch], []) for i in range(0, n, batch)]

    def bare():
        with torch.no_grad():
            for b in batches:
                model(b.x)

    def scan():
        scan_batches(model, batches, (3, 224, 224), topk_layers=LAYERS, stats_layers=LAYERS, top=9)

    t_bare = median_seconds(bare, device, repeats=3)
    t_scan = median_seconds(scan, device, repeats=3)
    rate = n / t_scan
    hours = IMAGENET_TRAIN / rate / 3600
    return [Row("dataset pass", f"alexnet conv1-5 top-9 + stats, {n} images", t_scan * 1e3, "bare forward",
                t_bare * 1e3, "≤ 1.2× the bare forward",
                f"{t_scan / t_bare:.2f}× the forward; {rate:.0f} images/s → ImageNet-train top-9 of all units "
                f"in {hours:.1f} h (DeepVis: 40 h), decoding not included", {"images_per_s": rate})]
