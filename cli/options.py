"""Options shared by several subcommands, defined once."""
from __future__ import annotations

import functools
import json

import click

model_argument = click.argument("model", metavar="MODEL")
image_argument = click.argument("image", type=click.Path(dir_okay=True, path_type=str), metavar="IMAGE")

def _shipped_help() -> str:
    """"fashion-mnist (learned weights shipped with vizcnn for alexnet, lenet5 and zfnet)", from the cards."""
    from vizcnn.models.shipped import shipped_weights

    models: dict[str, list[str]] = {}
    for model, named in sorted(shipped_weights().items()):
        for name in named:
            models.setdefault(name, []).append(model)
    return ", ".join(f"{name} (learned weights shipped with vizcnn for {', '.join(m)})" for name, m in models.items())


weights_option = click.option(
    "--weights", default="default", metavar="WEIGHTS",
    help=f"imagenet (torchvision's published weights, cached after one download), random (seeded), "
         f"{_shipped_help()}, or a checkpoint file. default: imagenet where published and cached; else the "
         f"shipped weights where there are some (said on stderr); else imagenet where published; else random.")
seed_option = click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
                           help="Seed for --weights random (0 to 4294967295).")
device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (the GPU when there is one), cpu or cuda.")
out_option = click.option("--out", "out", default=None, metavar="DIR",
                          help="Output folder (default: vizcnn-out/COMMAND-MODEL-IMAGE).")
force_option = click.option("--force", is_flag=True,
                            help="Write into a non-empty output folder that holds no earlier run of this command.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")


lrn_option = click.option(
    "--lrn", type=click.Choice(["identity", "gradient"]), default="identity", show_default=True,
    help="How the deconvnet and guided backprop pass local response normalization (AlexNet-2012, ZFNet): as the "
         "identity (the deconvnet convention) or as its gradient. --method gradient always differentiates it.")
strict_option = click.option(
    "--strict", is_flag=True,
    help="Exit with code 2 instead of warning when a deconvnet or guided projection falls back to the gradient "
         "(no rectifier caught, or activations without a deconvnet rule: LeakyReLU, SiLU, GELU, ...).")


def projection_options(command):
    """--lrn and --strict for the commands that project: the command runs under one
    ``vizcnn.core.rules.activation_policy``; each fallback to the gradient is one
    ``warning: ...`` line on stderr and an entry of ``activation_warnings`` in
    summary.json (:func:`policy_fields`), and with --strict an error (exit code 2)."""
    @functools.wraps(command)
    def run(*args, lrn, strict, **kwargs):
        from vizcnn.core.rules import activation_policy

        with activation_policy(strict=strict, lrn=lrn, echo=lambda msg: click.echo(f"warning: {msg}", err=True)):
            return command(*args, **kwargs)

    return lrn_option(strict_option(run))


def policy_fields() -> dict:
    """The summary.json fields of the running command's activation policy: ``lrn``,
    ``strict`` and ``activation_warnings`` (the list the projections fill as they run);
    {} outside :func:`projection_options`."""
    from vizcnn.core.rules import current_policy

    policy = current_policy()
    if policy.notes is None:
        return {}
    return {"lrn": policy.lrn, "strict": policy.strict, "activation_warnings": policy.notes}


def default_weights(model: str, weights: str) -> str:
    """``weights`` as given, or with no --weights the model's default
    (:func:`vizcnn.models.default_weights`), its reason said once per run on stderr."""
    from vizcnn.models import default_weights as pick

    if weights != "default":
        return weights
    chosen, note = pick(model)
    ctx = click.get_current_context(silent=True)
    said = ctx.find_root().meta.setdefault("vizcnn.weights_notes", set()) if ctx is not None else set()
    if note and note not in said:
        said.add(note)
        click.echo(f"note: {note}", err=True)
    return chosen


def echo_summary(summary: dict, as_json: bool, text: str, out=None) -> None:
    """``text`` on stdout, or with --json the summary, naming its output folder ``out``."""
    if as_json and out is not None:
        summary = {**summary, "out": str(getattr(out, "final", out))}
    click.echo(json.dumps(summary, indent=2) if as_json else text)


def wrote(summary: dict, out) -> str:
    """"wrote N files to DIR", summary.json counted."""
    n = len(set(summary["files"]) | {"summary.json"})
    return f"wrote {n} file{'s' if n != 1 else ''} to {getattr(out, 'root', out)}"


def progress(as_json: bool):
    """The progress of a command's long steps on stderr: on a terminal only, never with --json."""
    from vizcnn.core.progress import Progress

    return Progress(quiet=as_json)


def output_folder(folder, command: str, *, force: bool):
    """The run's OutputDir; a folder this run creates is removed again if the run ends
    with nothing in it (a failed run leaves no folder behind)."""
    from pathlib import Path

    from vizcnn.io.output import OutputDir, check_target

    check_target(folder)  # ., .., /, home, a mount point, too long a name: one line, before anything
    root = Path(folder)
    created = not root.exists()
    out = OutputDir(root, command, force=force)
    ctx = click.get_current_context(silent=True)
    if created and ctx is not None:
        def remove_if_empty() -> None:
            try:
                root.rmdir()  # only an empty folder
            except OSError:
                pass

        ctx.call_on_close(remove_if_empty)
    return out


def run_options(command):
    """The options every model-running command shares, in one place: --weights, --seed,
    --device, --out, --force, --json."""
    for option in reversed((weights_option, seed_option, device_option, out_option, force_option, json_option)):
        command = option(command)
    return command


class ImageRun:
    """What a command on one image needs, loaded in the order that fails fastest: the
    image first (bad files are the commonest error), then the model, then the output
    folder (so nothing is created for a run that cannot start)."""

    def __init__(self, command: str, model: str, image: str, weights: str, seed: int, device: str,
                 out: str | None, force: bool):
        from pathlib import Path

        from vizcnn.core.layers import check_finite
        from vizcnn.core.state import resolve_device
        from vizcnn.io.inputs import load_input
        from vizcnn.io.samples import resolve_sample
        from vizcnn.models import class_names, get_spec, load_model

        from vizcnn.io.output import check_target

        out = out or Path("vizcnn-out") / f"{command}-{model}-{Path(image).stem}"
        check_target(out)  # an --out no run could swap into place is refused before any work
        self.weights = default_weights(model, weights)
        self.spec = get_spec(model, self.weights)  # shipped weights bring their own input size
        self.device = resolve_device(device)
        image = resolve_sample(image)  # samples/NAME not here: the shipped copy, said on stderr
        self.shown, x = load_input(image, self.spec)
        self.model = load_model(model, self.weights, seed=seed, device=self.device)
        self.x = x.to(self.device)
        check_finite(self.model, self.x[None] if self.x.dim() == 3 else self.x)  # before any folder or figure
        self.class_names = class_names(model, weights=self.weights)
        self.out = output_folder(out or Path("vizcnn-out") / f"{command}-{model}-{Path(image).stem}", command,
                                 force=force)
        self.extra = {"weights": str(self.weights), "image": str(image), "device": str(self.device),
                      "out": str(self.out.final), **policy_fields()}
