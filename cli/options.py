"""Options shared by several subcommands, defined once."""
from __future__ import annotations

import json

import click

model_argument = click.argument("model", metavar="MODEL")
image_argument = click.argument("image", type=click.Path(dir_okay=True, path_type=str), metavar="IMAGE")

weights_option = click.option(
    "--weights", default="default", show_default=True, metavar="WEIGHTS",
    help="imagenet (torchvision's published weights, cached after one download), random (seeded), "
         "a sample checkpoint name (fashion-mnist for lenet5), or a checkpoint file. "
         "default: imagenet where published, else random.")
seed_option = click.option("--seed", default=0, show_default=True, type=int, help="Seed for --weights random.")
device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (the GPU when there is one), cpu or cuda.")
out_option = click.option("--out", "out", default=None, metavar="DIR",
                          help="Output folder (default: vizcnn-out/COMMAND-MODEL-IMAGE).")
force_option = click.option("--force", is_flag=True,
                            help="Write into a non-empty output folder that holds no earlier run of this command.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")


def default_weights(model: str, weights: str) -> str:
    from vizcnn.models import get_spec

    if weights != "default":
        return weights
    return "imagenet" if get_spec(model).tv_name else "random"


def echo_summary(summary: dict, as_json: bool, text: str) -> None:
    click.echo(json.dumps(summary, indent=2) if as_json else text)
