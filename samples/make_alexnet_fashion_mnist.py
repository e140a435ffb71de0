"""Trains the learned AlexNet shipped as ``vizcnn/models/weights/alexnet-fashion-mnist.pt``
(``--weights fashion-mnist`` for ``alexnet``), so that every ImageNet-family command shows
learned features offline.

The network is torchvision's own AlexNet definition (``vizcnn.load_model("alexnet")``:
11×11/4 conv1, 64-192-384-256-256 channels, adaptive 6×6 pool), with two changes that
size demands: a 96 px input instead of 224, and fc6/fc7 256 wide instead of 4096 (the
classifier would otherwise be 58M parameters; the convolutional features, which is what
vizcnn visualises, are unchanged). Data: Fashion-MNIST (Xiao et al. 2017, MIT licence)
from Debian's ``dataset-fashion-mnist`` package; 28×28 grey images resized to 96×96
(bilinear) and fed as 3 equal channels, normalised with the training set's mean/std.
Recipe: AdamW 5e-4 with a one-cycle schedule, batch 64, dropout as defined, seed 0; conv1
starts from N(0, 1e-3²) as in the ZFNet study (torchvision's default init is large enough
that one epoch leaves conv1 looking like its initial noise; from a small start, what
conv1 shows is what it learned).
Trained on grey images, conv1 learns only the sum of each filter over its colour channels;
the per-channel differences stay at their random initialisation and would show up as
colour noise in every projection. Before saving, each conv1 filter's channels are set to
their mean (:func:`grey_conv1`): every output on a grey image is unchanged, and a colour
image is seen through its channel average. The weights are stored in float16 (half the
size; loaded as float32) with a JSON card beside them saying what was trained on what,
and what it reached. Run from the
repository root (523 s for the shipped weights, on 2 CPU cores that other jobs shared):

    python samples/make_alexnet_fashion_mnist.py [--epochs 1.0]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vizcnn.io.sources import FASHION_MNIST_CLASSES, fashion_mnist_arrays
from vizcnn.models import build_model
from vizcnn.models.registry import shrink_classifier
from vizcnn.models.shipped import WEIGHTS_DIR

SIZE, HIDDEN, BATCH = 96, 256, 64


def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fashion_mnist_arrays(split)
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def prepare(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(N, 28, 28) uint8 → (N, 3, SIZE, SIZE) normalised."""
    x = images.float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return ((x - mean) / std).expand(-1, 3, -1, -1)


def grey_conv1(state: dict, key: str) -> dict:
    """conv1's filters averaged over their input channels: the same function on grey
    (equal-channel) inputs, without the untrained colour differences."""
    w = state[key]
    return {**state, key: w.mean(dim=1, keepdim=True).expand_as(w).contiguous()}


def evaluate(model, images, labels, mean, std) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), 500):
            correct += int((model(prepare(images[i:i + 500], mean, std)).argmax(1) == labels[i:i + 500]).sum())
    return correct / len(images)


def main(epochs: float = 1.0, seed: int = 0, out: Path = WEIGHTS_DIR) -> None:
    torch.manual_seed(seed)
    xtr, ytr = tensors("train")
    xte, yte = tensors("test")
    pixels = xtr.float().div(255)
    mean, std = float(pixels.mean()), float(pixels.std())
    model = shrink_classifier(build_model("alexnet", num_classes=10, seed=seed), HIDDEN, seed=seed)
    with torch.no_grad():
        model.features[0].weight.normal_(0, 1e-3, generator=torch.Generator().manual_seed(seed))
    steps = int(epochs * len(xtr) / BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-4, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(xtr), generator=g) for _ in range(int(epochs) + 1)])
    start = time.time()
    model.train()
    for step in range(steps):
        idx = order[step * BATCH:(step + 1) * BATCH]
        loss = F.cross_entropy(model(prepare(xtr[idx], mean, std)), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{steps}: loss {loss.item():.3f}, {time.time() - start:.0f} s", flush=True)
    seconds = time.time() - start
    model.load_state_dict(grey_conv1(model.state_dict(), "features.0.weight"))
    accuracy = evaluate(model, xte, yte, mean, std)
    print(f"test accuracy {accuracy:.4f} after {seconds:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
               out / "alexnet-fashion-mnist.pt")
    card = {"model": "alexnet", "weights": "fashion-mnist", "input_size": [3, SIZE, SIZE],
            "mean": [mean] * 3, "std": [std] * 3, "num_classes": 10, "classes": list(FASHION_MNIST_CLASSES),
            "classifier_hidden": HIDDEN, "conv1": "channels averaged (trained on grey images)",
            "data": f"Fashion-MNIST train split (60,000 images), 28 px grey resized to {SIZE} px, 3 equal channels",
            "accuracy": {"split": "Fashion-MNIST test (10,000 images)", "top1": round(accuracy, 4)},
            "training": {"epochs": epochs, "steps": steps, "batch": BATCH, "optimizer": "AdamW 5e-4, one-cycle",
                         "seconds": round(seconds), "seed": seed, "threads": torch.get_num_threads(),
                         "script": "samples/make_alexnet_fashion_mnist.py"}}
    (out / "alexnet-fashion-mnist.json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the weights and card")
    args = parser.parse_args()
    main(args.epochs, out=args.out)
