"""``vizcnn occlusion`` (Zeiler & Fergus Fig. 7) and ``vizcnn invariance`` (Fig. 5)."""
from __future__ import annotations

import click

from .main import cli
from .options import (ImageRun, default_weights, echo_summary, image_argument, model_argument, progress,
                      projection_options, run_options, wrote)

batch_option = click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 1024),
                            help="Images per forward pass (1 to 1024).")
target_option = click.option("--target", type=int, default=None,
                             help="Class index to follow (default: the top prediction on the unmodified image).")


@cli.command()
@model_argument
@image_argument
@click.option("--window", type=int, default=None, metavar="PX",
              help="Side of the grey square in px [default: 1/7 of the input side, 32 at 224].")
@click.option("--stride", type=int, default=None, metavar="PX",
              help="Step between occluder positions in px [default: 1/28 of the input side, 8 at 224].")
@click.option("--layer", default=None, metavar="NAME",
              help="Feature map of panel (b) [default: the last conv layer, conv5 in AlexNet/ZFNet].")
@target_option
@click.option("--full", is_flag=True,
              help="Recompute every occluded image in full instead of incrementally (same maps, slower).")
@batch_option
@run_options
@projection_options
def occlusion(model, image, window, stride, layer, target, full, batch_size, weights, seed, device, out, force,
              as_json):
    """Occlusion sensitivity of IMAGE, as Zeiler & Fergus Fig. 7.

    A grey square (the dataset mean) slides over the image; for every position one
    forward pass gives (b) the total activation of the strongest last-conv feature map,
    (d) the probability of the chosen class and (e) the most probable class; (c) is that
    map's deconvnet projection. Inference is incremental (only the region each occluder
    reaches is recomputed, exactly) for AlexNet/ZFNet/VGG-style models. Writes
    occlusion.png and summary.json.
    """
    from vizcnn.methods.occlusion import positions
    from vizcnn.models import get_spec
    from vizcnn.writers.occlusion import write_occlusion

    # Bad sizes fail before anything loads: the image is fitted to the model's input size.
    tops, lefts = positions(get_spec(model, default_weights(model, weights)).input_size[1:], window, stride)
    run = ImageRun("occlusion", model, image, weights, seed, device, out, force)
    with progress(as_json) as p:  # one step: say what runs
        p(0, 1, f"occlusion, {len(tops)}×{len(lefts)} positions")
        summary = write_occlusion(run.out, run.model, model, run.shown, run.x, window=window, stride=stride,
                                  layer=layer, target=target, incremental=False if full else "auto",
                                  batch_size=batch_size, class_names=run.class_names, extra=run.extra)
        p(1, 1, f"occlusion, {len(tops)}×{len(lefts)} positions")
    t = summary["timings_s"]
    echo_summary(summary, as_json,
                 f"{len(tops)}×{len(lefts)} positions, {summary['method']} inference in {t['occlusion']:.2f} s; "
                 + wrote(summary, run.out), run.out)


@cli.command()
@model_argument
@image_argument
@click.option("--transform", "transform", type=click.Choice(["translate", "scale", "rotate", "all"]), default="all",
              show_default=True, help="Transformation to sweep.")
@click.option("--amounts", default=None, metavar="A,B,...",
              help="Comma-separated sweep for one transform (px, factor or degrees) [default: translate -60..60 "
                   "by 10 px at 224, scale 0.6..1.4 by 0.1, rotate 0..350 by 10].")
@click.option("--border", type=click.Choice(["mean", "reflect", "replicate"]), default="mean", show_default=True,
              help="Value of pixels that come from outside the image: the dataset mean (grey), a mirror image or "
                   "the edge pixel.")
@target_option
@batch_option
@run_options
def invariance(model, image, transform, amounts, border, target, batch_size, weights, seed, device, out, force,
               as_json):
    """Invariance of IMAGE's features to translation, scale and rotation (Zeiler & Fergus Fig. 5).

    For each amount of the transformation: the Euclidean distance between the feature
    vectors of the original and the transformed image at layer 1 and at the last hidden
    layer (fc7 in AlexNet/ZFNet), divided by the original vector's norm, and the
    probability of the true class. Writes one PNG per transform and summary.json.
    """
    from vizcnn.core.errors import BadArgumentError
    from vizcnn.methods.invariance import TRANSFORMS
    from vizcnn.writers.invariance import write_invariance

    transforms = list(TRANSFORMS) if transform == "all" else [transform]
    sweep = None
    if amounts is not None:
        if len(transforms) > 1:
            raise BadArgumentError("--amounts needs one --transform (translate, scale or rotate), not all")
        try:
            sweep = [float(a) for a in amounts.split(",") if a.strip()]
        except ValueError:
            raise BadArgumentError(f"--amounts must be comma-separated numbers, got {amounts!r}") from None
    run = ImageRun("invariance", model, image, weights, seed, device, out, force)
    with progress(as_json) as p:
        p(0, 1, f"invariance sweeps ({', '.join(transforms)})")
        summary = write_invariance(run.out, run.model, model, run.x, transforms=transforms, amounts=sweep,
                                   target=target, border=border, batch_size=batch_size, mean=run.spec.mean,
                                   std=run.spec.std, class_names=run.class_names, extra=run.extra)
        p(1, 1, f"invariance sweeps ({', '.join(transforms)})")
    echo_summary(summary, as_json, wrote(summary, run.out), run.out)
