"""``python -m benchmarks``: every benchmark side by side with its reference, in one process;
the table goes to BENCHMARKS.md (one section per device)."""
from __future__ import annotations

import argparse
import importlib
import re
import warnings
from datetime import date
from pathlib import Path

import torch

from .common import describe_machine, matmul_flops_per_second

SUITES = ["deconv", "saliency", "occlusion", "dataset", "atlas"]


def table(rows) -> str:
    lines = ["| benchmark | case | vizcnn ms | reference | reference ms | speed-up | target | note |",
             "|---|---|---:|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.bench} | {r.case} | {r.vizcnn_ms:.1f} | {r.reference} | {r.reference_ms:.1f} | "
                     f"{r.speedup:.1f}× | {r.target} | {r.note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", default=",".join(SUITES), help="comma-separated suites: " + ", ".join(SUITES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer cases, for a smoke run")
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    warnings.filterwarnings("ignore")
    flops = matmul_flops_per_second(device)
    rows = []
    for suite in args.only.split(","):
        module = importlib.import_module(f".{suite}", __package__)
        print(f"running {suite} on {device} ...", flush=True)
        rows += module.run(device, flops, quick=args.quick)
        print(table(rows), flush=True)
    section = (f"## {device.type.upper()}: {describe_machine(device)}\n\n"
               f"Measured {date.today()}, `python -m benchmarks{' --quick' if args.quick else ''}`; "
               f"dense float32 matmul {flops / 1e9:.0f} GFLOP/s. Times are medians after a warm-up; "
               f"speed-up = reference / vizcnn.\n\n{table(rows)}\n")
    path = Path(args.out)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    heading = f"## {device.type.upper()}:"
    pattern = re.compile(rf"^{re.escape(heading)}.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
