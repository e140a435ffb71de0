"""``vizcnn deconv MODEL IMAGE``: the top activations of each layer projected to pixels."""
from __future__ import annotations

from pathlib import Path

import click

from .main import cli
from .options import (default_weights, device_option, echo_summary, force_option, image_argument, json_option,
                      model_argument, out_option, seed_option, weights_option)


@cli.command()
@model_argument
@image_argument
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="Layer to show (repeatable); default every conv layer. See `vizcnn layers MODEL`.")
@click.option("--top", default=9, show_default=True, type=click.IntRange(min=1), help="Activations per layer.")
@click.option("--channel", type=click.IntRange(min=0), default=None,
              help="Project this channel's strongest activation instead of the top ones.")
@click.option("--method", type=click.Choice(["deconvnet", "guided", "gradient"]), default="deconvnet",
              show_default=True, help="Reverse rule at each ReLU.")
@weights_option
@seed_option
@device_option
@out_option
@force_option
@json_option
def deconv(model, image, layers, top, channel, method, weights, seed, device, out, force, as_json):
    """Project each layer's strongest activations in IMAGE back to pixel space.

    Writes one PNG per layer in the style of Zeiler & Fergus Fig. 2 (each projection
    beside its receptive-field patch of the image) and summary.json.
    """
    from vizcnn.inputs import load_input
    from vizcnn.models import get_spec, load_model
    from vizcnn.output import OutputDir
    from vizcnn.reports import resolve_device, write_deconv

    spec = get_spec(model)
    weights = default_weights(model, weights)
    dev = resolve_device(device)
    shown, x = load_input(image, spec)
    net = load_model(model, weights, seed=seed, device=dev)
    folder = OutputDir(out or Path("vizcnn-out") / f"deconv-{model}-{Path(image).stem}", "deconv", force=force)
    summary = write_deconv(folder, net, model, shown, x.to(dev), layers=layers or None, top=top, channel=channel,
                           method=method, extra={"weights": str(weights), "image": str(image), "device": str(dev)})
    echo_summary(summary, as_json, f"wrote {len(summary['files'])} files to {folder.root}")
