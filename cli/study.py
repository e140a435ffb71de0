"""``vizcnn study zfnet``: AlexNet's and ZFNet's first layers, trained and compared."""
from __future__ import annotations

from pathlib import Path

import click

from .main import cli
from .options import device_option, echo_summary, force_option, json_option, output_folder


def _trained(ctx, param, values):
    pairs = []
    for v in values:
        model, sep, weights = v.partition(":")
        if not sep or not model or not weights:
            raise click.BadParameter(f"{v!r}: expected MODEL:WEIGHTS, e.g. alexnet:imagenet or zfnet:my_zfnet.pt")
        pairs.append((model, weights))
    return pairs


def _preset_help() -> str:
    from vizcnn.study.presets import PRESETS, estimate_seconds

    parts = ["ci: the whole pipeline in seconds"]
    for name in ("cpu", "gpu"):
        p = PRESETS[name]
        eta = estimate_seconds(p, p.designs, p.seeds, True)
        when = f", about {eta / 60:.0f} min on 2 CPU cores" if eta and name == "cpu" else ", one H200"
        parts.append(f"{name}: {p.data} at {p.size} px, {len(p.designs)} designs × {p.seeds} seeds{when}")
    return "; ".join(parts) + "."


@cli.command()
@click.argument("name", type=click.Choice(["zfnet"]), metavar="zfnet")
@click.option("--preset", type=click.Choice(["ci", "cpu", "gpu"]), default="cpu", show_default=True,
              help=_preset_help())
@click.option("--data", default=None, metavar="DATA",
              help="Training data: fashion-mnist-canvas (native 28 px on a colour canvas), fractals (built in), "
                   "fashion-mnist (upscaled grey), or a folder with one subfolder per class (ImageFolder layout; "
                   "10% held out). Default: the preset's own.")
@click.option("--seeds", type=click.IntRange(1, 100), default=None,
              help="Train every design this many times (seeds SEED…SEED+N-1); default: the preset's (cpu: 5, "
                   "the number its pilot said the effects need).")
@click.option("--trained", "trained", multiple=True, metavar="MODEL:WEIGHTS", callback=_trained,
              help="Analyse a model trained elsewhere instead of training (repeatable): alexnet:imagenet, "
                   "zfnet:my_zfnet.pt, or a checkpoint this study wrote. Descriptive: numbers, no verdicts.")
@click.option("--conv1", "designs", default=None, metavar="K/S,...",
              help="First-layer designs to compare (kernel/stride); default: the preset's, the 2×2 factorial "
                   "11/4,7/2,11/2,7/4.")
@click.option("--steps", type=click.IntRange(1, 10_000_000), default=None,
              help="Override the preset's training steps.")
@click.option("--no-renorm", is_flag=True, help="Turn off ZF's filter RMS renormalisation for every design.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1), help="The first seed.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Train this many networks at once in worker processes (several seeds on one GPU).")
@device_option
@click.option("--out", "out", default=None, metavar="DIR",
              help="Output folder (default: vizcnn-out/study-zfnet-PRESET; with --trained, "
                   "vizcnn-out/study-zfnet-trained).")
@force_option
@json_option
def study(name, preset, data, seeds, trained, designs, steps, no_renorm, seed, jobs, device, out, force, as_json):
    """Train AlexNet's (11×11/4) and ZFNet's (7×7/2) first layers — and the two designs that
    cross their kernel sizes and strides — under the paper's recipe, and test each claim of
    Zeiler & Fergus §4.1 / Fig. 6 in numbers, with a verdict per claim; or, with --trained,
    describe models trained elsewhere.

    Training checkpoints to OUT/checkpoints and resumes from there when OUT holds an earlier
    study run. The run says what it will do and about how long it takes before it starts.
    """
    from dataclasses import replace

    from vizcnn.core.state import resolve_device
    from vizcnn.study.figures import claims_markdown
    from vizcnn.study.run import run_study, run_trained
    from vizcnn.study.train import PRESETS, parse_designs

    chosen = PRESETS[preset]
    if steps is not None:  # a shorter or longer budget keeps the Fig. 4 snapshots that fit, and the last step
        chosen = replace(chosen, steps=steps, evolution=(*(s for s in chosen.evolution if s < steps), steps))
    conv1 = parse_designs(designs, chosen.size) if designs else list(chosen.designs)
    log = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    if trained:
        folder = output_folder(Path(out or Path("vizcnn-out") / f"study-{name}-trained"), "study", force=force)
        summary = run_trained(folder, trained, preset=chosen, data=data, device=resolve_device(device), seed=seed,
                              log=log)
    else:
        # an earlier study run in --out (its verified manifest says so) is resumed from its checkpoints;
        # any other folder with something in it needs --force, as for every command
        folder = output_folder(Path(out or Path("vizcnn-out") / f"study-{name}-{preset}"), "study", force=force)
        summary = run_study(folder, chosen, conv1, seed=seed, seeds=seeds, data=data, device=resolve_device(device),
                            renorm=not no_renorm, jobs=jobs, log=log)
    echo_summary(summary, as_json, claims_markdown(summary) + f"\n\nwrote the report to {folder.final}")
