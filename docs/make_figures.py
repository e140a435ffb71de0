"""Regenerates the README's figures in docs/img/ by running vizcnn's own commands on samples/.

    python docs/make_figures.py                      # docs/img/*.png and docs/img/figures.json
    python docs/make_figures.py --out DIR --fast     # the same commands doing less work (the tests)

Each figure is one ``vizcnn`` command, run in this process exactly as it would run from
the shell, whose output folder holds the file kept. ``figures.json`` records, per figure,
the command line (with paths relative to the repository), the caption and the image
size, so the README can print the command next to the picture. Every figure comes from
learned weights: AlexNet with the weights shipped with vizcnn (``--weights fashion-mnist``, trained on
Fashion-MNIST by ``samples/make_alexnet_fashion_mnist.py``), because no ImageNet weights
can be downloaded here.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "img"
#: The README shows figures at 100 % zoom; above this a PNG is too heavy for a README.
MAX_BYTES = 300_000


@dataclass(frozen=True)
class Figure:
    """One command and the files of its output folder kept: {name in docs/img: (file, caption)}."""

    args: tuple[str, ...]           # the vizcnn command line; samples/... paths are relative to the repository
    keep: dict[str, tuple[str, str]]
    fast: tuple[str, ...] = ()      # added with --fast: the same command doing less work


def _without(args: list[str], options) -> list[str]:
    """``args`` less each of ``options`` and the value after it."""
    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in options:
            skip = True
        else:
            kept.append(a)
    return kept


FIGURES = (
    Figure(("deconv", "alexnet", "samples/cat.jpg", "--weights", "fashion-mnist"), {
        "quickstart-deconv.png": (
            "deconv_conv2.png",
            "The quick start's output for conv2 (one of the five PNGs it writes): the 9 strongest conv2 activations "
            "in the cat image, each projected back to pixels with the deconvnet (left of each pair) beside the "
            "image patch under the unit's receptive field (right). AlexNet (torchvision's definition) with the "
            "learned weights shipped with vizcnn: trained on Fashion-MNIST at 96 px, so its units respond to "
            "edges, bars and blobs of grey level.")},
        fast=("--layer", "conv2", "--top", "3")),
    Figure(("topk", "alexnet", "samples", "--weights", "fashion-mnist", "--layer", "conv3", "--units", "0-7"), {
        "dataset-topk.png": (
            "topk_conv3_p1.png",
            "A Fig. 2-style grid from one pass over the sample images: for AlexNet's conv3 units 0-7 (rows), the 9 "
            "strongest activations over the whole set, best first, each as its deconvnet projection beside the "
            "image patch it came from, with the activation value and image name above. AlexNet with the shipped "
            "Fashion-MNIST weights.")},
        fast=("--units", "0-1", "--top", "3")),
    Figure(("saliency", "alexnet", "samples/fashion-bag.png", "--weights", "fashion-mnist", "--method", "all"), {
        "saliency-panel.png": (
            "panel.png",
            "Seven saliency methods side by side for the class AlexNet predicts for the bag, each overlaid on the "
            "image and scaled to its own 99.5th percentile: gradient, deconvnet, guided backprop, integrated "
            "gradients, SmoothGrad, Grad-CAM and occlusion. With ReLUs, the deconvnet and guided backprop differ "
            "from the gradient. AlexNet with the shipped Fashion-MNIST weights.")},
        fast=("--steps", "2")),
    Figure(("occlusion", "alexnet", "samples/fashion-bag.png", "--weights", "fashion-mnist"), {
        "occlusion.png": (
            "occlusion.png",
            "Zeiler & Fergus Fig. 7 for AlexNet (shipped Fashion-MNIST weights) and the bag: (a) the image with the "
            "grey square where it hurts most, (b) the total activation of the strongest conv5 map per square "
            "position, (c) that map's deconvnet projection, (d) the probability of the predicted class, (e) the "
            "most probable class per position.")},
        fast=("--stride", "16")),
    Figure(("filters", "alexnet", "--weights", "fashion-mnist"), {
        "conv1-filters.png": (
            "filters.png",
            "AlexNet's 64 conv1 filters (11×11×3, stride 4) after training on Fashion-MNIST (the shipped "
            "weights), each scaled to its own range: grey edge and blob detectors (the input is grey, fed as 3 "
            "equal channels, so only the sum over colours is learned; the colour differences are the "
            "initialisation's)."),
        "conv1-spectra.png": (
            "spectra_summary.png",
            "The same filters' spectra: (a) dominant frequencies by band, (b) each filter's aliasing fraction, the "
            "share of its energy beyond the stride-4 Nyquist limit that the strided convolution folds back (white "
            "noise: 1 - 1/16), (c) spatial structure. Learned weights.")}),
)


def make_figures(out: Path | str = DEFAULT_OUT, *, fast: bool = False, dpi: int = 100,
                 work: Path | str | None = None, echo=print) -> list[dict]:
    """Runs each figure's command and copies the file it keeps to ``out``; writes
    ``out/figures.json``; returns its entries. ``fast``: the same commands doing less work
    (smaller sweeps, fewer units), for the tests. ``work``: where the commands write
    their folders (default a temporary folder, removed afterwards)."""
    from click.testing import CliRunner

    from cli.main import cli
    from vizcnn.io.imageio import figure_dpi

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    with tempfile.TemporaryDirectory(prefix="vizcnn-figures-") as tmp:
        work = Path(work) if work is not None else Path(tmp)
        for fig in FIGURES:
            folder = work / fig.args[0]
            args = [str(ROOT / a) if a.startswith("samples/") else a for a in fig.args]
            if fast:  # --fast's options replace the command's own (an option given twice is an error)
                args = _without(args, fig.fast[::2]) + list(fig.fast)
            args += ["--out", str(folder), "--force"]
            shown = "vizcnn " + " ".join(fig.args)
            echo(f"{shown}{'  (fast)' if fast else ''}")
            start = time.perf_counter()
            with figure_dpi(dpi):
                result = CliRunner().invoke(cli, args, catch_exceptions=False)
            if result.exit_code != 0:
                raise RuntimeError(f"{shown} failed (exit {result.exit_code}): {result.output.strip()}")
            seconds = round(time.perf_counter() - start, 2)
            for name, (kept, caption) in fig.keep.items():
                source = folder / kept
                if not source.is_file():
                    raise RuntimeError(f"{shown} did not write {kept}")
                target = out / name
                shutil.copyfile(source, target)
                size = target.stat().st_size
                if size > MAX_BYTES:
                    echo(f"  warning: {name} is {size / 1000:.0f} kB (> {MAX_BYTES / 1000:.0f} kB)")
                entries.append({"file": name, "command": shown, "kept": kept, "caption": caption, "bytes": size,
                                "pixels": list(_png_size(target)), "dpi": dpi, "fast": fast})
            echo(f"  {', '.join(fig.keep)} in {seconds} s")
    (out / "figures.json").write_text(json.dumps(entries, indent=2) + "\n")
    return entries


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG header."""
    import struct

    data = path.read_bytes()[:24]
    return struct.unpack(">II", data[16:24])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default docs/img)")
    parser.add_argument("--fast", action="store_true", help="the same commands doing less work (tests)")
    parser.add_argument("--dpi", type=int, default=100, help="figure resolution (default 100)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    entries = make_figures(args.out, fast=args.fast, dpi=args.dpi)
    for e in entries:
        print(f"  {e['file']}: {e['pixels'][0]}×{e['pixels'][1]} px, {e['bytes'] / 1000:.0f} kB")
    print(f"wrote {len(entries)} figures and figures.json to {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from anywhere, installed or not
    sys.exit(main())
