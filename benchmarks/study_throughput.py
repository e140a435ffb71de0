"""Training throughput of the study's designs at a preset, and the step budget that fits.

``python -m benchmarks.study_throughput --preset gpu --budget 300 --seeds 3`` times a few
training steps of each conv1 design (the preset's, the 2×2 factorial) and prints one JSON
line: images/s per design and ``steps``, the most steps (at most the preset's) with which
every design × ``--seeds`` seeds, plus the one network without renormalisation, train
within ``--budget`` seconds in all, one after another at the measured rates (running them
as concurrent jobs only makes it faster). The device script uses it to size the run from
a measurement on the machine it runs on.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from vizcnn.core.state import resolve_device
from vizcnn.study.data import open_stream
from vizcnn.study.train import PRESETS, build, design_name, parse_designs


def images_per_second(preset, conv1, device, steps: int, warmup: int = 3) -> float:
    stream = open_stream(replace(preset, steps=warmup + steps, train_images=min(preset.train_images or 4096, 4096)),
                         None, seed=0, device=device)  # enough batches; a small rendered set is as fast per step
    model = build(preset, conv1, seed=0).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=preset.momentum)
    batches = stream.batches(0)
    t0, seen = None, 0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, seen = time.perf_counter(), 0
        _, x, y = next(batches)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=preset.amp and device.type == "cuda"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.study_throughput", description=__doc__)
    parser.add_argument("--preset", default="gpu", choices=sorted(PRESETS))
    parser.add_argument("--conv1", default=None, help="designs (default: the preset's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds allowed for every network")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per design (default: the preset's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per design")
    args = parser.parse_args()
    device = resolve_device(args.device)
    preset = PRESETS[args.preset]
    designs = parse_designs(args.conv1) if args.conv1 else list(preset.designs)
    seeds = args.seeds or preset.seeds
    rates = {design_name(c): images_per_second(preset, c, device, args.steps) for c in designs}
    # seconds per step of every network: each design × seeds, and the 7×7/2 network without renormalisation
    per_step = preset.batch * (seeds * sum(1 / r for r in rates.values())
                               + (1 / rates["zfnet"] if "zfnet" in rates else 0))
    fit = int(args.budget / per_step)
    print(json.dumps({"device": str(device), "preset": args.preset, "batch": preset.batch, "seeds": seeds,
                      "images_per_second": {k: round(v, 1) for k, v in rates.items()},
                      "steps": max(1, min(preset.steps, fit))}))


if __name__ == "__main__":
    main()
