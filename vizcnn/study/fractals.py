"""Formula-driven training data: fractal images whose IFS parameters are the labels.

Kataoka et al. 2020 ("Pre-training without Natural Images", FractalDB) showed that a
CNN trained to tell iterated function systems (IFS) apart learns natural-image-like
first-layer filters. Here each class is one IFS — 2 to 4 contractive affine maps —
and each image is a fresh instance: the class's parameters jittered, the attractor
rendered by the parallel chaos game in a random placement, colour and background.
Rendering is a few batched tensor ops, so it runs on the training device (GPU when
there is one) as fast as the model trains, and needs no download.
"""
from __future__ import annotations

import torch

_JITTER = 0.06  # per-instance relative perturbation of the IFS parameters
_ITERATIONS, _BURN_IN = 20, 6


class FractalSource:
    """``num_classes`` IFS categories drawn from ``seed``; ``batch(labels, generator)``
    renders one image per label as (B, 3, size, size) in [0, 1].

    A category is kept only if its attractor fills at least ``min_fill`` of its
    bounding box at 64×64 (Kataoka's filling-rate filter: it rejects degenerate,
    line-like systems).
    """

    def __init__(self, num_classes: int, size: int, *, seed: int = 0, points: int | None = None,
                 min_fill: float = 0.12, device: str | torch.device = "cpu"):
        # enough walkers to ink the attractor at this resolution (about 1.7 points per pixel)
        self.num_classes, self.size = num_classes, size
        self.points = points or max(128, size * size // 8)
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(seed)
        maps, probs = [], []
        while len(maps) < num_classes:
            a, b, p = _random_system(g)
            if _fill(a, b, p, g) >= min_fill:
                maps.append(torch.cat([a, b.unsqueeze(-1)], -1))
                probs.append(p)
        self.maps = torch.stack(maps).to(self.device)  # (K, 4, 2, 3): A | b, unused maps have p = 0
        self.probs = torch.stack(probs).to(self.device)  # (K, 4)

    def batch(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        labels = labels.to(self.device)
        b = len(labels)
        dev = self.device

        def rand(*shape):
            return torch.rand(*shape, generator=generator, device=generator.device).to(dev)

        maps = self.maps[labels] * (1 + _JITTER * (2 * rand(b, 4, 2, 3) - 1))
        points = _chaos_game(maps, self.probs[labels], self.points, generator)  # (B, P, 2), last map (B, P)
        xy, which = points
        # Random placement: the attractor's box scaled into 60-95% of the image, random offset.
        lo, hi = xy.amin(1, keepdim=True), xy.amax(1, keepdim=True)
        unit = (xy - lo) / (hi - lo).clamp_min(1e-6)
        extent = 0.6 + 0.35 * rand(b, 1, 1)
        offset = (1 - extent) * rand(b, 1, 2)
        flip = rand(b, 1, 2) < 0.5
        unit = torch.where(flip, 1 - unit, unit)
        pix = ((unit * extent + offset) * (self.size - 1)).round().long().clamp(0, self.size - 1)
        index = pix[..., 1] * self.size + pix[..., 0]  # (B, P)
        # Colour: each IFS map paints in its own random colour, over a random dark background.
        palette = rand(b, 4, 3) * 0.8 + 0.2
        colour = torch.gather(palette, 1, which.unsqueeze(-1).expand(-1, -1, 3))  # (B, P, 3)
        canvas = torch.zeros(b, 3, self.size * self.size, device=dev)
        count = torch.zeros(b, 1, self.size * self.size, device=dev)
        canvas.scatter_add_(2, index.unsqueeze(1).expand(-1, 3, -1), colour.transpose(1, 2))
        count.scatter_add_(2, index.unsqueeze(1), torch.ones(b, 1, index.shape[1], device=dev))
        ink = canvas / count.clamp_min(1)
        alpha = (count / 2).clamp(max=1)
        background = rand(b, 3, 1) * 0.5
        image = alpha * ink + (1 - alpha) * background
        return image.view(b, 3, self.size, self.size).clamp(0, 1)


def _random_system(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2–4 affine maps with parameters uniform in [-1, 1], rescaled to be contractive
    (spectral norm ≤ 0.85) so the attractor is bounded; map probabilities ∝ |det A|."""
    n = int(torch.randint(2, 5, (1,), generator=g))
    a = torch.zeros(4, 2, 2)
    b = torch.zeros(4, 2)
    p = torch.zeros(4)
    for i in range(n):
        m = torch.rand(2, 2, generator=g) * 2 - 1
        norm = torch.linalg.matrix_norm(m, ord=2)
        a[i] = m * min(1.0, 0.85 / float(norm))
        b[i] = torch.rand(2, generator=g) * 2 - 1
        p[i] = abs(float(torch.linalg.det(a[i]))) + 1e-3
    return a, b, p / p.sum()


def _chaos_game(maps: torch.Tensor, probs: torch.Tensor, points: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs ``points`` independent chaos-game walks per image and returns every position
    after the burn-in, with the map that produced it: ((B, N, 2), (B, N))."""
    b = maps.shape[0]
    dev = maps.device
    flat = maps.reshape(b, 4, 6)  # a00 a01 b0 a10 a11 b1 per map
    cumulative = probs.cumsum(1).contiguous()
    cumulative[:, -1] = 1.0  # guard against rounding: every draw finds a map

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=generator.device).to(dev)

    x = rand(b, points, 2) * 2 - 1
    kept, which = [], []
    for t in range(_ITERATIONS):
        choice = torch.searchsorted(cumulative, rand(b, points)).clamp_max(3)  # (B, N)
        m = torch.gather(flat, 1, choice.unsqueeze(-1).expand(-1, -1, 6))  # (B, N, 6)
        px, py = x[..., 0], x[..., 1]
        x = torch.stack([m[..., 0] * px + m[..., 1] * py + m[..., 2], m[..., 3] * px + m[..., 4] * py + m[..., 5]], -1)
        if t >= _BURN_IN:
            kept.append(x)
            which.append(choice)
    return torch.cat(kept, 1), torch.cat(which, 1)


def _fill(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor, g: torch.Generator) -> float:
    maps = torch.cat([a, b.unsqueeze(-1)], -1).unsqueeze(0)
    xy, _ = _chaos_game(maps, p.unsqueeze(0), 2000, g)
    lo, hi = xy.amin(1, keepdim=True), xy.amax(1, keepdim=True)
    if float((hi - lo).min()) < 1e-3:
        return 0.0
    pix = ((xy - lo) / (hi - lo) * 63).round().long()
    occupied = torch.zeros(64 * 64)
    occupied[pix[0, :, 1] * 64 + pix[0, :, 0]] = 1
    return float(occupied.mean())


__all__ = ["FractalSource"]
