"""Trains the LeNet-5 checkpoint shipped as vizcnn/models/weights/lenet5-fashion-mnist.pt.

Data: Fashion-MNIST (Xiao et al. 2017, MIT licence) from Debian's dataset-fashion-mnist
package (/usr/share/datasets/fashion-mnist). 28×28 images padded to LeNet-5's 32×32,
normalised with mean 0.5 / std 0.5 as the registry's spec says. The RBF output's negative
squared distances serve as logits for a cross-entropy loss. Run from the repository root:

    python samples/make_lenet5_fashion_mnist.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from vizcnn.io.sources import fashion_mnist_arrays
from vizcnn.models import build_model


def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fashion_mnist_arrays(split)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    x = F.pad(x, (2, 2, 2, 2))
    return (x - 0.5) / 0.5, torch.from_numpy(labels).long()


def main(epochs: int = 4, seed: int = 0) -> None:
    torch.manual_seed(seed)
    xtr, ytr = tensors("train")
    xte, yte = tensors("test")
    model = build_model("lenet5", seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * (len(xtr) // 128))
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xtr))
        for i in range(len(xtr) // 128):
            idx = order[i * 128:(i + 1) * 128]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {acc:.4f}, {time.time() - start:.0f} s")
    torch.save(model.state_dict(), "vizcnn/models/weights/lenet5-fashion-mnist.pt")


if __name__ == "__main__":
    main()
