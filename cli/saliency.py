"""``vizcnn saliency`` and ``vizcnn sanity``: saliency maps of one image and their sanity checks."""
from __future__ import annotations

import click

from .main import cli
from .options import (ImageRun, echo_summary, image_argument, model_argument, progress, projection_options, run_options,
                      wrote)

#: a method's verdict as printed: passes None where no step reached the verdict depth
VERDICT = {True: "passes", False: "FAILS", None: "no verdict"}
METHODS = ("gradient", "deconvnet", "guided", "integrated-gradients", "smoothgrad", "gradcam", "occlusion")

target_option = click.option("--target", type=click.IntRange(min=0), default=None, metavar="N",
                             help="Class index to explain (default: the top prediction).")
steps_option = click.option("--steps", default=50, show_default=True, type=click.IntRange(1, 1000),
                            help="Integrated-gradients steps and SmoothGrad samples (1 to 1000).")


@cli.command()
@model_argument
@image_argument
@click.option("--method", "method", type=click.Choice([*METHODS, "all"]), multiple=True, default=["gradient"],
              show_default=True, help="Saliency method (repeatable); all: every method. Several methods also "
                                      "get a side-by-side panel.")
@target_option
@click.option("--layer", default=None, metavar="NAME",
              help="Grad-CAM layer (default: the last conv feature map). See `vizcnn layers MODEL`.")
@steps_option
@run_options
@projection_options
def saliency(model, image, method, target, layer, steps, weights, seed, device, out, force, as_json):
    """Saliency maps: which pixels of IMAGE the class score depends on.

    Writes METHOD_map.png (the map with a colour bar) and METHOD_overlay.png for each
    method, panel.png for --method all, and summary.json (target class, probability,
    map statistics).
    """
    from vizcnn.core.errors import BadArgumentError
    from vizcnn.writers.saliency import write_saliency

    methods = list(METHODS) if "all" in method else list(dict.fromkeys(method))
    if layer is not None and "gradcam" not in methods:
        raise BadArgumentError(f"--layer applies to --method gradcam (or all), not {', '.join(methods)}")
    run = ImageRun("saliency", model, image, weights, seed, device, out, force)
    with progress(as_json) as p:
        summary = write_saliency(run.out, run.model, model, run.shown, run.x, methods=methods, target=target,
                                 layer=layer, names=run.class_names, extra=run.extra, steps=steps, samples=steps,
                                 progress=p)
    echo_summary(summary, as_json, f"{summary['class_name']} (class {summary['target']}, "
                                   f"p = {summary['probability']:.3g}): {wrote(summary, run.out)}", run.out)


@cli.command(short_help="Sanity checks (Adebayo et al. 2018): do the maps change when the weights do?")
@model_argument
@image_argument
@click.option("--methods", "methods", default="gradient,guided,deconvnet,integrated-gradients,smoothgrad,gradcam",
              show_default=True, metavar="M1,M2,...",
              help=f"Comma-separated saliency methods, from: {', '.join(METHODS)}.")
@target_option
@click.option("--layer", default=None, metavar="NAME", help="Grad-CAM layer (default: the last conv feature map).")
@steps_option
@run_options
@projection_options
def sanity(model, image, methods, target, layer, steps, weights, seed, device, out, force, as_json):
    """Sanity checks (Adebayo et al. 2018): cascading randomization of the model's layers.

    On a copy of the model, re-initialises the layers from the classifier down, one
    at a time, recomputes each method's map for the same class and compares it with
    the original (Spearman rank correlation, SSIM). A method passes when the rank
    correlation of its signed attribution with the original falls below 0.5 once
    the top half of the layers is random (summary.json states the rule). Writes
    sanity_maps.png, sanity_curves.png and summary.json.
    """
    from vizcnn.core.errors import BadArgumentError
    from vizcnn.writers.sanity import write_sanity

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        raise BadArgumentError(f"unknown saliency method {(bad or [methods])[0]!r} in --methods; "
                               f"choose from {', '.join(METHODS)}")
    if layer is not None and "gradcam" not in chosen:
        raise BadArgumentError("--layer applies to gradcam; add it to --methods")
    run = ImageRun("sanity", model, image, weights, seed, device, out, force)
    with progress(as_json) as p:
        summary = write_sanity(run.out, run.model, model, run.shown, run.x, methods=chosen, target=target,
                               layer=layer, names=run.class_names, extra=run.extra, steps=steps, samples=steps,
                               on_step=lambda i, n, label: p(i, n, f"re-initialised {label}"))
    verdicts = [f"{m}: {VERDICT[v['passes']]}" for m, v in summary["verdicts"].items()]
    echo_summary(summary, as_json, "\n".join([*verdicts, wrote(summary, run.out)]), run.out)
