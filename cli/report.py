"""``vizcnn report MODEL IMAGE [--data DATA]``: every analysis in one folder, with index.html."""
from __future__ import annotations

import os
from pathlib import Path

import click

from vizcnn.core.progress import Progress

from .main import cli
from .options import (default_weights, device_option, echo_summary, force_option, image_argument, json_option,
                      model_argument, out_option, output_folder, policy_fields, projection_options, seed_option,
                      weights_option, wrote)


def _Progress(quiet: bool) -> Progress:
    """The report's steps on stderr, redrawn in place, on a terminal only (like every other
    command's progress: a log or a pipe gets the result and the warnings, not step lines);
    nothing with --quiet."""
    return Progress(quiet, label="vizcnn report")


@cli.command()
@model_argument
@image_argument
@click.option("--data", default=None, metavar="DATA",
              help="Also the dataset top-k grids and dead-filter statistics over DATA: a folder of images, a list "
                   "file, `samples` or `fashion-mnist[:test|:train]` (as for `vizcnn topk`).")
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="Layer for the deconv and dataset grids (repeatable); default every conv layer. "
                   "See `vizcnn layers MODEL`.")
@click.option("--top", default=9, show_default=True, type=click.IntRange(1, 1000),
              help="Activations per layer (deconv) and winners per unit (dataset); 1 to 1000.")
@click.option("--units", default=8, show_default=True, type=click.IntRange(1, 4096),
              help="Units per layer drawn in the dataset grids (summary.json has every unit's winners).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Use only the first N images of DATA.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0, os.cpu_count() or 1),
              help="DataLoader worker processes decoding DATA's images (0: in the main process; at most the CPUs).")
@click.option("--steps", default=16, show_default=True, type=click.IntRange(1, 1000),
              help="Integrated-gradients steps and SmoothGrad samples (1 to 1000).")
@click.option("--dpi", default=100, show_default=True, type=click.IntRange(10, 600),
              help="Resolution of every figure (10 to 600 dots per inch).")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png", show_default=True,
              help="File format of every figure (index.html shows png and svg; it links pdf).")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@weights_option
@seed_option
@device_option
@out_option
@force_option
@json_option
@projection_options
def report(model, image, data, layers, top, units, limit, workers, steps, dpi, fmt, quiet, weights, seed, device, out,
           force, as_json):
    """Every analysis of IMAGE in one folder, with an index.html to open or send.

    \b
    The model card (kernel, stride, receptive field and parameters per conv
    layer; FLOPs), the first layer's filters and spectra, the deconvnet top
    activations of each layer, the saliency maps of every method side by side,
    the sanity check (cascading randomization: gradient, guided backprop,
    Grad-CAM), the occlusion sensitivity (Zeiler & Fergus Fig. 7), the
    invariance to translation, scale and rotation (Fig. 5) and, with --data,
    the dataset top-k grids (Fig. 2) and dead-filter statistics.
    Each step writes into its own subfolder; index.html (static, no scripts)
    shows the figures with captions and the key numbers, summary.json holds
    every number.
    """
    from vizcnn.core.errors import BadArgumentError
    from vizcnn.core.layers import check_finite, resolve_layer
    from vizcnn.core.state import resolve_device
    from vizcnn.io.inputs import load_input
    from vizcnn.models import class_names, get_spec, load_model
    from vizcnn.writers.report import write_report

    if limit is not None and data is None:
        raise BadArgumentError("--limit applies to --data; give a DATA folder or list")
    from vizcnn.io.output import check_target

    check_target(out or Path("vizcnn-out") / f"report-{model}-{Path(image).stem}")  # before any work
    weights = default_weights(model, weights)
    spec = get_spec(model, weights)
    dev = resolve_device(device)
    shown, x = load_input(image, spec)  # a bad image, DATA, weights or layer fails before any work or folder
    source = None
    if data is not None:
        from vizcnn.io.sources import open_data

        source = open_data(data, limit=limit)
    net = load_model(model, weights, seed=seed, device=dev)
    for name in layers:
        resolve_layer(net, name)
    check_finite(net, x[None].to(dev) if x.dim() == 3 else x.to(dev))  # before any folder or figure
    folder = output_folder(out or Path("vizcnn-out") / f"report-{model}-{Path(image).stem}", "report", force=force)
    extra = {"weights": str(weights), "seed": seed, "image": str(image), "device": str(dev), "out": str(folder.final),
             **policy_fields()}
    if data is not None:
        extra["data"] = str(data)
    progress = _Progress(quiet or as_json)
    try:
        summary = write_report(folder, net, model, shown, x.to(dev), spec=spec, layers=list(layers) or None, top=top,
                               data=source, names=class_names(model, weights=weights), fmt=fmt, dpi=dpi, steps=steps,
                               data_units=units, num_workers=workers, extra=extra, progress=progress)
    finally:
        progress.close()
    for step, message in summary["errors"].items():
        click.echo(f"warning: step {step} failed: {message}", err=True)
    echo_summary(summary, as_json, f"{wrote(summary, folder)} in {summary['timings_s']['total']:.1f} s; "
                                   f"open {folder.root / 'index.html'}", folder)
