"""The ``vizcnn`` command: a click group; each subcommand lives in its own module."""
from __future__ import annotations

import sys

import click

from vizcnn.core.errors import VizcnnError


class CliError(click.ClickException):
    """A user error: one line on stderr, exit code 2."""

    exit_code = 2


class Command(click.Command):
    """Refuses an option that takes one value given more than once (click would keep the
    last silently: ``--method gradient --method guided`` would run guided only)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            _, _, order = self.make_parser(ctx).parse_args(args=list(args))
        except click.ClickException:
            order = []  # the parse below reports it
        seen: set[str] = set()
        for param in order:
            if isinstance(param, click.Option) and not (param.multiple or param.count or param.is_flag):
                if param.name in seen:
                    raise CliError(f"{param.opts[-1]} given more than once; it takes one value")
                seen.add(param.name)
        return super().parse_args(ctx, args)

    def get_short_help_str(self, limit: int = 45) -> str:
        """The docstring's first paragraph, whole, for `vizcnn --help` (click's own cut at
        45 characters, or at the first ". ", as in "Fig. 7", ends it mid-sentence)."""
        if self.short_help or not self.help:
            return super().get_short_help_str(limit)
        return " ".join(self.help.strip().split("\n\n")[0].split())


class Group(click.Group):
    """Turns vizcnn's own errors into one-line messages with exit code 2."""

    command_class = Command

    def invoke(self, ctx: click.Context):
        from vizcnn.core.finite import finite_policy
        from vizcnn.core.interrupt import catching_signals
        finished_before = len(_runs().FINISHED) if _runs() else 0

        try:  # SIGTERM, SIGHUP, SIGQUIT end a run as Ctrl-C does; a NaN/Inf result is an error
            with catching_signals(), finite_policy(strict=True):
                return super().invoke(ctx)
        except VizcnnError as e:
            if _runs():
                _runs().abort_open()  # a failed run's staging folder (and a folder it made) go at once, not at exit
            raise CliError(str(e)) from None
        except KeyboardInterrupt as e:
            raise click.exceptions.Exit(_interrupted(e, _runs().FINISHED[finished_before:] if _runs() else [])) from None


def _runs():
    """vizcnn.io.output once a command has loaded it (None before: no run to abort, and
    ``--help`` stays free of heavy imports)."""
    return sys.modules.get("vizcnn.io.output")


def _interrupted(error: BaseException, finished: list) -> int:
    """Ctrl-C or a signal: every open run aborted (its --out left as it was), one line on
    stderr, and the shell's exit code, 128 + the signal (130 for Ctrl-C)."""
    from vizcnn.core.interrupt import exit_code, signal_name, signal_of
    aborted = _runs().abort_open() if _runs() else []
    name = signal_name(signal_of(error))
    if finished and not aborted:  # this command's run was already in place when the signal came
        said = f"the results were already written to {finished[-1]}"
    else:
        said = "nothing was written: --out is unchanged"
    click.echo(f"vizcnn: interrupted ({name}); {said}", err=True)
    return exit_code(error)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vizcnn")
def cli() -> None:
    """vizcnn: Zeiler & Fergus-style visualization of CNNs.

    Deconvnet projections, layer listings and the classic model zoo
    (LeNet-5, AlexNet, ZFNet, VGG, GoogLeNet, ResNet).
    """


def main() -> None:
    cli(prog_name="vizcnn")


def _register_subcommands() -> None:
    """Every other module of this package defines subcommands on ``cli`` when imported."""
    import importlib
    import pkgutil

    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("main", "options") and not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")


_register_subcommands()


if __name__ == "__main__":
    sys.exit(main())
