"""``vizcnn study zfnet``: AlexNet's and ZFNet's first layers, trained and compared."""
from __future__ import annotations

from pathlib import Path

import click

from .main import cli
from .options import device_option, echo_summary, force_option, json_option, out_option


@cli.command()
@click.argument("name", type=click.Choice(["zfnet"]), metavar="zfnet")
@click.option("--preset", type=click.Choice(["ci", "cpu", "gpu"]), default="cpu", show_default=True,
              help="ci: the pipeline in seconds; cpu: about half an hour on 2 cores; gpu: 224², full recipe.")
@click.option("--conv1", "designs", default="11/4,7/2", show_default=True, metavar="K/S,...",
              help="First-layer designs to compare (kernel/stride), e.g. 11/4,7/2,7/4,11/2.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override the preset's training steps.")
@click.option("--no-renorm", is_flag=True, help="Turn off ZF's filter RMS renormalisation (the Fig. 6(a) ablation).")
@click.option("--seed", default=0, show_default=True, type=int)
@device_option
@out_option
@force_option
@json_option
def study(name, preset, designs, steps, no_renorm, seed, device, out, force, as_json):
    """Train AlexNet's (11×11/4) and ZFNet's (7×7/2) first layers under one recipe on built-in
    fractal data and reproduce Zeiler & Fergus §4.1 / Fig. 6 in numbers and figures.

    Training checkpoints to OUT/checkpoints and resumes from there after an interruption.
    """
    from dataclasses import replace

    from vizcnn.output import OutputDir
    from vizcnn.reports import resolve_device
    from vizcnn.study import PRESETS, parse_designs
    from vizcnn.study_report import markdown_table, run_study

    chosen = PRESETS[preset]
    if steps is not None:  # a shorter or longer budget keeps the Fig. 4 snapshots that fit, and the last step
        chosen = replace(chosen, steps=steps, evolution=(*(s for s in chosen.evolution if s < steps), steps))
    conv1 = parse_designs(designs)
    root = Path(out or Path("vizcnn-out") / f"study-{name}-{preset}")
    # a folder holding this study's checkpoints is an interrupted run: resume it
    folder = OutputDir(root, "study", force=force or (root / "checkpoints").is_dir())
    log = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    summary = run_study(folder, chosen, conv1, seed=seed, device=resolve_device(device), renorm=not no_renorm,
                        log=log)
    echo_summary(summary, as_json, markdown_table(summary["table"]) + f"\n\nwrote the report to {folder.root}")
