"""``vizcnn topk MODEL DATA`` and ``vizcnn dead-filters MODEL DATA``: one pass over a dataset.

Both run unchanged under ``torchrun --nproc_per_node N`` (each rank reads a shard, the
results are merged exactly, rank 0 writes).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import click

from .main import cli
from .options import (default_weights, echo_summary, model_argument, output_folder, policy_fields, progress,
                      projection_options, run_options, wrote)

data_argument = click.argument("data", metavar="DATA")
batch_option = click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 1024),
                            help="Images per forward pass (1 to 1024).")
workers_option = click.option("--workers", default=None, type=click.IntRange(0, os.cpu_count() or 1),
                              help="DataLoader worker processes decoding images (default min(4, CPUs); "
                                   "0 decodes in the main process; at most the number of CPUs).")
limit_option = click.option("--limit", default=None, type=click.IntRange(min=1),
                            help="Use only the first N images of DATA.")
min_firing_option = click.option("--min-firing", default=1e-3, show_default=True, type=click.FloatRange(0, 1),
                                 help="Dead if the filter fires (> 0) on fewer than this fraction of positions.")
min_max_option = click.option("--min-max", default=1e-6, show_default=True, type=click.FloatRange(0, 1),
                              help="Dead if the filter's max activation is at most this times its layer's largest.")


def _data_stem(data: str) -> str:
    from vizcnn.io.imageio import safe_filename

    path = Path(data)
    return safe_filename(path.stem if path.suffix else (path.name or data))


@contextmanager
def _session(model, data, weights, seed, device, limit, out, command, force):
    """Joins torchrun's process group when there is one, opens DATA, the output folder
    (rank 0 only) and the model; yields (spec, model, source, OutputDir or None, extra)."""
    from vizcnn.core.state import resolve_device
    from vizcnn.io.sources import open_data
    from vizcnn.methods.scan import distributed
    from vizcnn.models import get_spec, load_model

    weights = default_weights(model, weights)
    spec = get_spec(model, weights)
    source = open_data(data, limit=limit)
    with distributed(resolve_device(device)) as (rank, _world, dev):
        folder = None
        if rank == 0:
            folder = output_folder(out or Path("vizcnn-out") / f"{command}-{model}-{_data_stem(data)}", command,
                                   force=force)
        net = load_model(model, weights, seed=seed, device=dev)
        yield spec, net, source, folder, {"weights": str(weights), "device": str(dev),
                                          "out": str(folder.final) if folder is not None else None,
                                          **policy_fields()}


def _line(summary: dict, folder) -> str:
    return (f"{summary['images']} images ({summary['skipped']} skipped) at {summary['images_per_second']} images/s "
            f"on {summary['world_size']} process(es); {wrote(summary, folder)}")


def pass_options(command):
    """The dataset-pass options both commands share: thresholds, batching, workers, limit."""
    for option in reversed((min_firing_option, min_max_option, batch_option, workers_option, limit_option)):
        command = option(command)
    return command


@cli.command()
@model_argument
@data_argument
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="Layer (repeatable); default the last conv layer. See `vizcnn layers MODEL`.")
@click.option("--top", default=9, show_default=True, type=click.IntRange(1, 1000),
              help="Winners per unit (1 to 1000).")
@click.option("--distinct-images", is_flag=True, help="At most one winner per image per unit (its strongest position).")
@click.option("--units", default=None, metavar="LIST",
              help="Units to project and draw: e.g. 0-31, 3,7,9 or all (default: the first 16, one page; "
                   "each projection is a backward pass, slow on a CPU). summary.json lists every unit's winners.")
@click.option("--method", type=click.Choice(["deconvnet", "guided", "gradient"]), default="deconvnet",
              show_default=True, help="Reverse rule at each ReLU for the projections.")
@click.option("--dead-filters", "dead_filters", is_flag=True,
              help="Also compute the dead-filter statistics of these layers, in the same pass.")
@pass_options
@run_options
@projection_options
def topk(model, data, layers, top, distinct_images, units, method, dead_filters, min_firing, min_max, batch_size,
         workers, limit, weights, seed, device, out, force, as_json):
    """Top-k activations of every unit over DATA, projected to pixels (Zeiler & Fergus Fig. 2).

    One pass over the images keeps each unit's k strongest activations (ties: earlier
    image, then earlier position); then each winner is projected with the deconvnet and
    shown beside its receptive-field patch. Writes topk_LAYER_pN.png (16 units a page)
    and summary.json (every unit's winners: image, position, value, box).

    \b
    DATA: a folder of images (any depth; first-level subfolders are classes), a list
    file (one path per line, optional integer label), an image, `samples` (shipped
    with vizcnn) or `fashion-mnist[:test|:train]` (Debian's dataset-fashion-mnist or
    $VIZCNN_FASHION_MNIST). Unreadable images are skipped and counted.
    Runs under `torchrun --nproc_per_node N` as it is: each rank reads a shard.
    """
    from vizcnn.core.layers import conv_layers
    from vizcnn.writers.dataset import write_topk

    with _session(model, data, weights, seed, device, limit, out, "topk", force) as (spec, net, source, folder,
                                                                                    extra), progress(as_json) as p:
        summary = write_topk(folder, net, model, source, spec, layers=list(layers) or conv_layers(net)[-1:], top=top,
                             distinct_images=distinct_images, units=units, method=method, dead_filters=dead_filters,
                             min_firing=min_firing, min_max=min_max, batch_size=batch_size, num_workers=workers,
                             extra=extra, progress=p)
    if summary is not None:
        echo_summary(summary, as_json, _line(summary, folder), folder)


@cli.command("dead-filters")
@model_argument
@data_argument
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="Layer (repeatable); default every conv layer. See `vizcnn layers MODEL`.")
@pass_options
@run_options
def dead_filters(model, data, layers, min_firing, min_max, batch_size, workers, limit, weights, seed, device, out,
                 force, as_json):
    """Per-filter firing statistics over DATA, and which filters are dead.

    For each filter: the fraction of positions where it fires (> 0), its mean and max
    activation and its weight norm; dead (never fire) when it fires on fewer than
    --min-firing of the positions or its max is at most --min-max times its layer's
    largest. For the first convolution also the dead filters in Zeiler & Fergus's sense,
    from the weights alone: near-zero (norm under 0.1 x the layer's median) or without
    spatial structure, as `vizcnn filters` counts them, with the rate a white-noise layer
    would get. Writes dead_filters.png (firing histograms) and summary.json.

    \b
    DATA: as for `vizcnn topk` (a folder, a list file, an image, `samples`,
    `fashion-mnist[:test|:train]`). Runs under `torchrun --nproc_per_node N` as it is.
    """
    from vizcnn.core.layers import conv_layers
    from vizcnn.methods.spectra import grey_weights
    from vizcnn.writers.dataset import write_dead_filters

    with _session(model, data, weights, seed, device, limit, out, "dead-filters", force) as (spec, net, source,
                                                                                            folder, extra), \
            progress(as_json) as p:
        summary = write_dead_filters(folder, net, model, source, spec, layers=list(layers) or conv_layers(net),
                                     min_firing=min_firing, min_max=min_max, batch_size=batch_size,
                                     num_workers=workers, grey=grey_weights(model, extra["weights"]), extra=extra,
                                     progress=p)
    if summary is not None:
        lines = [f"{e['layer']}: {e['dead']} of {e['filters']} dead (never fire)"
                 + (f"; {w['dead']} dead filters (near-zero or structureless weights"
                    + (f": {', '.join(map(str, w['dead_filters'][:12]))}{', ...' if w['dead'] > 12 else ''}"
                       if w["dead"] else "") + f"; a white-noise layer: {w['noise_rate']:.0%})"
                    if (w := e["dead_weights"]) is not None else "")
                 for e in summary["layers"]]
        echo_summary(summary, as_json, "\n".join([*lines, _line(summary, folder)]), folder)
