"""Ships the ZFNet the committed CPU study trained (seed 0 of the 7×7/2 design) as
``vizcnn/models/weights/zfnet-fashion-mnist.pt`` (``--weights fashion-mnist`` for
``zfnet``), so no network is trained twice: the study's checkpoint is the zoo's own ZFNet
definition (Fig. 3) at the study's reduced input size and widths.

    python samples/ship_study_zfnet.py docs/study/cpu/checkpoints/zfnet-seed0.pt

conv1's filters are averaged over their colour channels, as for the shipped AlexNet
(``samples/make_alexnet_fashion_mnist.py``: trained on grey images, only the channel sum
is learned). The state_dict is stored in float16 (loaded as float32), with a card saying
what the weights need (64 px input, the study's normalisation, widths) and what they reached.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from vizcnn.io.sources import FASHION_MNIST_CLASSES
from vizcnn.models.shipped import WEIGHTS_DIR
from vizcnn.models.zfnet import conv2_stride_for


def main(checkpoint: str, summary: str | None = None) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = json.loads(state["study"])
    preset, conv1 = config["preset"], config["conv1"]
    if config["data"] != "fashion-mnist" or conv1 != [7, 2]:
        raise SystemExit(f"{checkpoint}: expected the 7×7/2 design trained on fashion-mnist, got {config['data']} "
                         f"{conv1}")
    top1 = None
    if summary:
        s = json.loads(Path(summary).read_text())
        zf = next(d for d in s["designs"] if d["conv1"] == [7, 2])
        top1 = next(r["top1"] for r in zf["per_seed"] if r["seed"] == config["seed"])
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    model = state["model"]
    w = model["features.conv1.weight"]
    model["features.conv1.weight"] = w.mean(dim=1, keepdim=True).expand_as(w).contiguous()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.items()},
               WEIGHTS_DIR / "zfnet-fashion-mnist.pt")
    card = {
        "model": "zfnet", "weights": "fashion-mnist", "input_size": [3, preset["size"], preset["size"]],
        "mean": [config["mean"]] * 3, "std": [1 / 255] * 3, "num_classes": len(config["classes"]),
        "classes": list(FASHION_MNIST_CLASSES), "conv1": "channels averaged (trained on grey images)",
        "zfnet": {"conv1": conv1, "channels": preset["channels"], "widths": preset["widths"],
                  "hidden": preset["hidden"], "input_size": preset["size"], "conv2_stride": conv2_stride_for(conv1[1])},
        "data": f"Fashion-MNIST train split (60,000 images), 28 px grey resized to {preset['size']} px, 3 equal "
                "channels; the committed CPU study's 7×7/2 design, seed " + str(config["seed"]),
        "accuracy": {"split": f"Fashion-MNIST test (first {preset['eval_images']} images)", "top1": top1},
        "training": {"steps": preset["steps"], "batch": preset["batch"], "optimizer": f"{preset['optimizer']} "
                     f"{preset['lr']}", "seed": config["seed"], "script": "vizcnn study zfnet --preset cpu --seeds 3"},
    }
    (WEIGHTS_DIR / "zfnet-fashion-mnist.json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
