"""``vizcnn atlas MODEL DATA``: every unit of the model's conv layers in one static site.

DATA and the torchrun data-parallel pass are ``vizcnn topk``'s (:mod:`cli.dataset`)."""
from __future__ import annotations

import click

from .dataset import _line, _session, data_argument, pass_options
from .main import cli
from .options import echo_summary, projection_options, run_options


@cli.command()
@click.argument("model", metavar="MODEL")
@data_argument
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="Layer (repeatable); default every conv layer. See `vizcnn layers MODEL`.")
@click.option("--units", default=None, metavar="LIST",
              help="Units with pages, projections and stimuli: e.g. 0-31, 3,7,9 or all (default all). "
                   "The data pass covers every unit.")
@click.option("--top", default=9, show_default=True, type=click.IntRange(1, 64), help="Winners per unit.")
@click.option("--optimize-steps", default=128, show_default=True, type=click.IntRange(1, 10000),
              help="Gradient steps of each unit's optimised stimulus.")
@click.option("--no-optimize", "no_optimize", is_flag=True, help="Skip the optimised stimuli.")
@click.option("--method", type=click.Choice(["deconvnet", "guided", "gradient"]), default="deconvnet",
              show_default=True, help="Reverse rule at each ReLU for the projections.")
@pass_options
@run_options
@projection_options
def atlas(model, data, layers, units, top, optimize_steps, no_optimize, method, min_firing, min_max, batch_size,
          workers, limit, weights, seed, device, out, force, as_json):
    """A browsable atlas of every unit: one static site (open DIR/index.html, works offline).

    One pass over DATA finds each unit's top-k images, firing statistics, dead flag (as
    `vizcnn dead-filters`), top classes (when DATA has labels) and most similar units
    (correlation of per-image maxima); then each winner's projection, cropped to its
    receptive field, and an optimised stimulus per unit (regularised activation
    maximisation in a decorrelated Fourier basis). Pages: index.html (the model card,
    each layer a strip of thumbnails, a filter box), one per layer, one per unit.

    \b
    Resumable: the pass and each layer's projections and stimuli are saved in DIR/state
    as they complete; rerun the same command to continue. Progress goes to stderr.
    DATA: as for `vizcnn topk`. Runs under `torchrun --nproc_per_node N` as it is.
    """
    from vizcnn.core.layers import conv_layers
    from vizcnn.writers.atlas import write_atlas

    from .options import progress

    def log(msg: str) -> None:
        if not as_json:
            click.echo(msg, err=True)

    with _session(model, data, weights, seed, device, limit, out, "atlas", force) as (spec, net, source, folder,
                                                                                     extra), progress(as_json) as p:
        summary = write_atlas(folder, net, model, source, spec, layers=list(layers) or conv_layers(net), units=units,
                              top=top, optimize=not no_optimize, optimize_steps=optimize_steps, method=method,
                              seed=seed, batch_size=batch_size, num_workers=workers, min_firing=min_firing,
                              min_max=min_max, extra=extra, progress=p, log=log)
    if summary is not None:
        units_n = sum(len(e["units"]) for e in summary["layers"])
        text = f"atlas of {units_n} units in {len(summary['layers'])} layer(s): {folder.final}/index.html\n"
        echo_summary(summary, as_json, text + _line({**summary, "images_per_second": _rate(summary)}, folder), folder)


def _rate(summary: dict):
    seconds = summary.get("pass_seconds") or 0
    return round(summary["images"] / seconds, 2) if seconds > 0 else None
