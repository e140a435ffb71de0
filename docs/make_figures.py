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
        fast=("--top", "3")),
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
            "most probable class per position.")}),
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


#: The summary.json fields, at any depth, that say how a figure was made (its parameters,
#: resolved by the code: an occlusion stride left to its default is recorded as the number
#: used). figures.json keeps them per figure; tests/test_figures_current.py reruns the
#: commands and calls :func:`stale` to find committed figures that the code would now
#: draw differently.
SETTING_KEYS = frozenset({
    "command", "model", "weights", "method", "top", "layer", "module", "input_size", "lrn", "strict", "display",
    "window", "stride", "positions", "fill", "engine", "steps", "baseline", "samples", "noise", "seed",
    "layer_shape", "receptive_field", "order", "distinct_images", "data_size", "figure_units", "kernel", "dilation",
    "groups", "fft_size", "nyquist", "edges", "filters", "weight_shape"})
#: Summary fields that hold results (units found, their boxes, maps, timings), never searched.
RESULT_KEYS = frozenset({"units", "winners", "per_filter", "maps", "top5", "top5_unoccluded", "min_probability",
                         "timings_s", "files", "activation_warnings", "skipped_images"})


def settings(summary, path: str = "") -> dict:
    """{dotted path: value} of every :data:`SETTING_KEYS` field in a summary: dicts are
    searched to any depth except :data:`RESULT_KEYS`, lists of at most 16 dicts item by
    item (per-layer entries)."""
    found = {}
    items = summary.items() if isinstance(summary, dict) else \
        enumerate(summary) if isinstance(summary, list) and len(summary) <= 16 else ()
    for key, value in items:
        where = f"{path}.{key}" if path else str(key)
        if key in RESULT_KEYS:
            continue
        if isinstance(value, (dict, list)) and not (isinstance(value, list) and all(
                isinstance(v, (int, float, str, bool)) or v is None for v in value)):
            found.update(settings(value, where))
        elif key in SETTING_KEYS:
            found[where] = value
    return found


def weights_digest(model: str, weights: str) -> str | None:
    """SHA-256 (first 16 hex digits) of the shipped weights file a figure was drawn with."""
    import hashlib

    from vizcnn.models.shipped import WEIGHTS_DIR, shipped_weights

    card = shipped_weights(model).get(weights)
    return hashlib.sha256((WEIGHTS_DIR / card["file"]).read_bytes()).hexdigest()[:16] if card else None


def stale(recorded: list[dict], fresh: list[dict]) -> list[str]:
    """What differs between the committed figures.json (``recorded``) and a rerun of the
    same commands (``fresh``, full or fast): one line per figure and field, [] when every
    committed figure is what the code draws now (same command, same options and resolved
    settings, same weights). A fast rerun is compared with the settings the fast run
    made alongside the committed figures."""
    old = {e["file"]: e for e in recorded}
    problems = []
    for e in fresh:
        r = old.get(e["file"])
        if r is None:
            problems.append(f"{e['file']}: not in figures.json (run python docs/make_figures.py)")
            continue
        for field in ("command", "kept", "weights_sha256"):
            if r.get(field) != e.get(field):
                problems.append(f"{e['file']}: {field} was {r.get(field)!r}, now {e.get(field)!r}")
        was_options, now_options = r.get("options", {}), e["options"]
        for key in sorted(set(was_options) | set(now_options)):
            if was_options.get(key) != now_options.get(key):
                problems.append(f"{e['file']}: option {key} was {was_options.get(key, '(absent)')!r}, "
                                f"now {now_options.get(key, '(absent)')!r}")
        was, now = r.get("fast_settings" if e["fast"] else "settings", {}), e["settings"]
        for key in sorted(set(was) | set(now)):
            if was.get(key) != now.get(key):
                problems.append(f"{e['file']}: {key} was {was.get(key, '(absent)')!r}, now {now.get(key, '(absent)')!r}")
    return problems


def options(args: tuple[str, ...]) -> dict:
    """The command's parameters as click resolves them from ``args``, defaults filled in
    (no run; the output options left out): a changed default of any option shows here."""
    from cli.main import cli

    command = cli.commands[args[0]]
    with command.make_context(args[0], list(args[1:]), resilient_parsing=True) as ctx:
        params = dict(ctx.params)
    return json.loads(json.dumps({k: v for k, v in params.items() if k not in ("out", "force", "as_json")},
                                 default=str))


def _run(fig: Figure, folder: Path, *, fast: bool, dpi: int, echo) -> dict:
    """Runs ``fig``'s command into ``folder`` in this process; returns its summary."""
    from click.testing import CliRunner

    from cli.main import cli
    from vizcnn.io.imageio import figure_dpi

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
    echo(f"  {', '.join(fig.keep)} in {time.perf_counter() - start:.2f} s")
    return json.loads((folder / "summary.json").read_text())


def make_figures(out: Path | str = DEFAULT_OUT, *, fast: bool = False, dpi: int = 100,
                 work: Path | str | None = None, echo=print, only: tuple[str, ...] | None = None) -> list[dict]:
    """Runs each figure's command and copies the file it keeps to ``out``; writes
    ``out/figures.json``; returns its entries. ``fast``: the same commands doing less work
    (fewer units, fewer integration steps), for the tests. ``work``: where the commands
    write their folders (default a temporary folder, removed afterwards). ``only``: the
    commands (first word, e.g. "saliency") to run, default all; a partial run writes no
    figures.json.

    Each entry records how its figure was made: ``options`` (the command's parameters,
    defaults filled in by click), ``settings`` (the parameters the code resolved, read
    from the run's summary.json, :func:`settings`), ``weights_sha256`` and, for a full
    run, ``fast_settings``: the same command's settings in fast mode, run alongside, so
    that a fast rerun (the tests) can tell whether the committed figures are current
    (:func:`stale`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    with tempfile.TemporaryDirectory(prefix="vizcnn-figures-") as tmp:
        work = Path(work) if work is not None else Path(tmp)
        for fig in FIGURES:
            if only is not None and fig.args[0] not in only:
                continue
            folder = work / fig.args[0]
            summary = _run(fig, folder, fast=fast, dpi=dpi, echo=echo)
            record = {"options": options(fig.args),
                      "weights_sha256": weights_digest(summary["model"], summary["weights"]),
                      "settings": settings(summary)}
            if not fast:
                record["fast_settings"] = settings(_run(fig, work / f"{fig.args[0]}-fast", fast=True, dpi=20,
                                                        echo=lambda *_: None))
            for name, (kept, caption) in fig.keep.items():
                source = folder / kept
                if not source.is_file():
                    raise RuntimeError(f"vizcnn {' '.join(fig.args)} did not write {kept}")
                target = out / name
                shutil.copyfile(source, target)
                size = target.stat().st_size
                if size > MAX_BYTES:
                    echo(f"  warning: {name} is {size / 1000:.0f} kB (> {MAX_BYTES / 1000:.0f} kB)")
                entries.append({"file": name, "command": "vizcnn " + " ".join(fig.args), "kept": kept,
                                "caption": caption, "bytes": size, "pixels": list(_png_size(target)), "dpi": dpi,
                                "fast": fast, **record})
    if only is None:  # a partial run leaves the record of the whole set alone
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
