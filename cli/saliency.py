"""``vizcnn saliency`` and ``vizcnn sanity``: saliency maps of one image and their sanity checks."""
from __future__ import annotations

import click

from .main import cli
from .options import (ImageRun, echo_summary, image_argument, model_argument, progress, projection_options, run_options,
                      wrote)

#: a method's verdict as printed
VERDICT = {"passes": "passes", "fails": "FAILS", "inconclusive": "inconclusive"}
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


def _fitting_samples(model: str, weights: str) -> list[str]:
    """The shipped samples that fit the weights: the Fashion-MNIST images for weights
    learned on Fashion-MNIST, the photographs for every other weight."""
    from vizcnn.io.samples import SAMPLES_DIR, sample_names
    from vizcnn.models.shipped import shipped_weights

    card = shipped_weights(model).get(str(weights)) or {}
    fashion = "fashion-mnist" in str(card.get("data", "")).lower()
    return [str(SAMPLES_DIR / n) for n in sample_names() if n.startswith("fashion-") == fashion]


@cli.command(short_help="Sanity checks (Adebayo et al. 2018): do the maps change when the weights do?")
@model_argument
@click.argument("images", nargs=-1, metavar="[IMAGE]...")
@click.option("--data", default=None, metavar="DATA",
              help="More images, as for `vizcnn topk` (a folder, a list file, samples, fashion-mnist[:split]).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Use only the first N images of DATA.")
@click.option("--methods", "methods", default="gradient,guided,deconvnet,integrated-gradients,smoothgrad,gradcam",
              show_default=True, metavar="M1,M2,...",
              help=f"Comma-separated saliency methods, from: {', '.join(METHODS)}.")
@target_option
@click.option("--layer", default=None, metavar="NAME", help="Grad-CAM layer (default: the last conv feature map).")
@click.option("--steps", default=16, show_default=True, type=click.IntRange(1, 1000),
              help="Integrated-gradients steps and SmoothGrad samples, 1 to 1000 (fewer than `vizcnn saliency`'s 50: the "
                   "check compares maps with each other, every map computed alike, for every image and step).")
@run_options
@projection_options
def sanity(model, images, data, limit, methods, target, layer, steps, weights, seed, device, out, force, as_json):
    """Sanity checks (Adebayo et al. 2018): cascading randomization of the model's layers.

    On a copy of the model, re-initialises the layers from the classifier down, one
    at a time, recomputes each method's map for the same class and compares it with
    the original (Spearman rank correlation, SSIM), on every IMAGE and every image of
    DATA (default: the shipped samples that fit the weights: the Fashion-MNIST ones for
    --weights fashion-mnist, else the photographs). A method passes once the 95%
    interval across images of the signed rank correlation lies below 0.5 while the top
    half of the layers is re-initialised, fails when it stays above, and is
    inconclusive otherwise (summary.json states the rule). Writes sanity_maps.png (the
    first image), sanity_curves.png (mean and interval) and summary.json.
    """
    from pathlib import Path

    from vizcnn.core.errors import BadArgumentError
    from vizcnn.core.layers import check_finite
    from vizcnn.core.state import resolve_device
    from vizcnn.io.samples import resolve_sample
    from vizcnn.io.sources import FileSource, load, open_data
    from vizcnn.models import class_names, get_spec, load_model
    from vizcnn.writers.sanity import write_sanity

    from .options import default_weights, output_folder, policy_fields

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        raise BadArgumentError(f"unknown saliency method {(bad or [methods])[0]!r} in --methods; "
                               f"choose from {', '.join(METHODS)}")
    if layer is not None and "gradcam" not in chosen:
        raise BadArgumentError("--layer applies to gradcam; add it to --methods")
    if limit is not None and data is None:
        raise BadArgumentError("--limit applies to --data")
    weights = default_weights(model, weights)
    spec = get_spec(model, weights)
    paths = [str(resolve_sample(p)) for p in images] or ([] if data else _fitting_samples(model, weights))
    sources = ([FileSource("images", paths)] if paths else []) + ([open_data(data, limit=limit)] if data else [])
    shown, xs, named = [], [], []
    for source in sources:  # every image is read before the model is built: bad files fail fast
        for i in range(len(source)):
            image, x = load(source, i, spec)
            shown.append(image)
            xs.append(x)
            named.append(source.describe(i))
    if not xs:
        raise BadArgumentError("no images: give IMAGE or --data DATA")
    dev = resolve_device(device)
    net = load_model(model, weights, seed=seed, device=dev)
    xs = [x.to(dev) for x in xs]
    for x in xs:
        check_finite(net, x[None] if x.dim() == 3 else x)  # before any folder or figure
    stem = Path(named[0]).stem if len(named) == 1 else (Path(data).stem if data else "samples")
    folder = output_folder(out or Path("vizcnn-out") / f"sanity-{model}-{stem}", "sanity", force=force)
    extra = {"weights": str(weights), "image": named[0] if len(named) == 1 else f"{len(named)} images",
             "device": str(dev), "out": str(folder.final), **policy_fields()}
    with progress(as_json) as p:
        summary = write_sanity(folder, net, model, shown, xs, methods=chosen, target=target, layer=layer,
                               names=class_names(model, weights=weights), extra=extra, image_names=named,
                               steps=steps, samples=steps,
                               on_step=lambda i, n, label: p(i, n, f"re-initialised {label}"))
    lines = []
    for m, v in summary["verdicts"].items():
        c = v["spearman_signed_at_verdict_step"]
        span = f", |signed ρ| {c['mean']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}] at {summary['verdict_step']}" \
            if c["lo"] is not None else ""
        lines.append(f"{m}: {VERDICT.get(v['verdict'], v['verdict'])}{span}")
    head = f"{len(xs)} image{'s' if len(xs) != 1 else ''}; the verdict reads the 95% interval across them"
    echo_summary(summary, as_json, "\n".join([head, *lines, wrote(summary, folder)]), folder)
