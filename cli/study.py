"""``vizcnn study zfnet``: AlexNet's and ZFNet's first layers, trained and compared."""
from __future__ import annotations

from pathlib import Path

import click

from .main import cli
from .options import device_option, echo_summary, force_option, json_option, out_option


def _trained(ctx, param, values):
    pairs = []
    for v in values:
        model, sep, weights = v.partition(":")
        if not sep or not model or not weights:
            raise click.BadParameter(f"{v!r}: expected MODEL:WEIGHTS, e.g. alexnet:imagenet or zfnet:my_zfnet.pt")
        pairs.append((model, weights))
    return pairs


@cli.command()
@click.argument("name", type=click.Choice(["zfnet"]), metavar="zfnet")
@click.option("--preset", type=click.Choice(["ci", "cpu", "gpu"]), default="cpu", show_default=True,
              help="ci: the pipeline in seconds; cpu: 2 designs x 3 seeds in under 45 min on 2 cores; "
                   "gpu: 224², full widths, one H200.")
@click.option("--data", default=None, metavar="DATA",
              help="Training data: fractals (built in), fashion-mnist, or a folder with one subfolder per class "
                   "(ImageFolder layout; 10% held out). Default: the preset's own.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train every design this many times (seeds SEED…SEED+N-1); numbers get 95% intervals.")
@click.option("--trained", "trained", multiple=True, metavar="MODEL:WEIGHTS", callback=_trained,
              help="Analyse a model trained elsewhere instead of training (repeatable): alexnet:imagenet, "
                   "zfnet:my_zfnet.pt, or a checkpoint this study wrote.")
@click.option("--conv1", "designs", default="11/4,7/2", show_default=True, metavar="K/S,...",
              help="First-layer designs to compare (kernel/stride), e.g. 11/4,7/2,7/4,11/2.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override the preset's training steps.")
@click.option("--no-renorm", is_flag=True, help="Turn off ZF's filter RMS renormalisation (the Fig. 6(a) ablation).")
@click.option("--seed", default=0, show_default=True, type=int, help="The first seed.")
@device_option
@out_option
@force_option
@json_option
def study(name, preset, data, seeds, trained, designs, steps, no_renorm, seed, device, out, force, as_json):
    """Train AlexNet's (11×11/4) and ZFNet's (7×7/2) first layers under one recipe and
    reproduce Zeiler & Fergus §4.1 / Fig. 6 in numbers, with a verdict per claim; or,
    with --trained, analyse models trained elsewhere.

    Training checkpoints to OUT/checkpoints and resumes from there after an interruption.
    """
    from dataclasses import replace

    from vizcnn.core.state import resolve_device
    from vizcnn.io.output import OutputDir
    from vizcnn.study.train import PRESETS, parse_designs
    from vizcnn.study.figures import claims_markdown
    from vizcnn.study.run import run_study, run_trained

    chosen = PRESETS[preset]
    if steps is not None:  # a shorter or longer budget keeps the Fig. 4 snapshots that fit, and the last step
        chosen = replace(chosen, steps=steps, evolution=(*(s for s in chosen.evolution if s < steps), steps))
    conv1 = parse_designs(designs)
    log = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    if trained:
        root = Path(out or Path("vizcnn-out") / f"study-{name}-trained")
        folder = OutputDir(root, "study", force=force)
        summary = run_trained(folder, trained, preset=chosen, data=data, device=resolve_device(device), seed=seed,
                              log=log)
    else:
        root = Path(out or Path("vizcnn-out") / f"study-{name}-{preset}")
        # a folder holding this study's checkpoints is an interrupted run: resume it
        folder = OutputDir(root, "study", force=force or (root / "checkpoints").is_dir())
        summary = run_study(folder, chosen, conv1, seed=seed, seeds=seeds, data=data, device=resolve_device(device),
                            renorm=not no_renorm, log=log)
    echo_summary(summary, as_json, claims_markdown(summary) + f"\n\nwrote the report to {folder.root}")
