"""``vizcnn deconv MODEL IMAGE``: the top activations of each layer projected to pixels."""
from __future__ import annotations

import click

from .main import cli
from .options import (ImageRun, echo_summary, image_argument, model_argument, progress, projection_options, run_options,
                      wrote)


@cli.command()
@model_argument
@image_argument
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="Layer to show (repeatable); default every conv layer. See `vizcnn layers MODEL`.")
@click.option("--top", default=9, show_default=True, type=click.IntRange(1, 1000),
              help="Activations per layer (1 to 1000; a layer with fewer channels shows them all).")
@click.option("--channel", type=click.IntRange(min=0), default=None,
              help="Project this channel's strongest activation instead of the top ones.")
@click.option("--method", type=click.Choice(["deconvnet", "guided", "gradient"]), default="deconvnet",
              show_default=True, help="Reverse rule at each ReLU.")
@run_options
@projection_options
def deconv(model, image, layers, top, channel, method, weights, seed, device, out, force, as_json):
    """Project each layer's strongest activations in IMAGE back to pixel space.

    Writes one PNG per layer in the style of Zeiler & Fergus Fig. 2 (each projection
    beside its receptive-field patch of the image) and summary.json.
    """
    from vizcnn.writers.deconv import write_deconv

    run = ImageRun("deconv", model, image, weights, seed, device, out, force)
    with progress(as_json) as p:
        summary = write_deconv(run.out, run.model, model, run.shown, run.x, layers=layers or None, top=top,
                               channel=channel, method=method, extra=run.extra, progress=p)
    echo_summary(summary, as_json, wrote(summary, run.out), run.out)
