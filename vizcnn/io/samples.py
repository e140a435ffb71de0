"""The sample images shipped inside the package, and how a path reaches them.

The images live in ``vizcnn/samples/`` so that they travel with every install (the
repository's ``samples/`` links to them). A user types ``samples/cat.jpg`` as in the
README; where that path exists (the repository's root, or a folder of the user's own
called ``samples``), it is read as it is. Where it does not, and ``cat.jpg`` is one of the
shipped samples, :func:`resolve_sample` returns the shipped copy and says so in one
``note:`` line on stderr, naming the file it reads. Nothing else is ever redirected: a
missing ``samples/dog.jpg`` stays missing. ``vizcnn samples`` lists them with their folder.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Union

#: The images DATA=samples means, and where ``samples/NAME`` resolves when it is not here.
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")

PathLike = Union[str, "os.PathLike[str]"]


def sample_names() -> list[str]:
    """The file names of the shipped sample images, sorted."""
    if not SAMPLES_DIR.is_dir():
        return []
    return sorted(p.name for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES and p.is_file())


def shipped_sample(path: PathLike) -> Path | None:
    """The shipped copy that ``path`` means when ``path`` is ``samples/NAME`` (``/`` or the
    OS's separator), does not exist here, and NAME is a shipped sample; else None."""
    text = os.fspath(path)
    if not isinstance(text, str) or Path(text).exists():
        return None
    parts = text.replace(os.sep, "/").split("/")
    if len(parts) != 2 or parts[0] != "samples" or parts[1] not in sample_names():
        return None
    return SAMPLES_DIR / parts[1]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_sample(path: PathLike, *, echo: Callable[[str], None] | None = _stderr) -> PathLike:
    """``path`` itself, or the shipped sample it means (:func:`shipped_sample`); a
    redirection is said once through ``echo`` (default: a ``note:`` line on stderr)."""
    shipped = shipped_sample(path)
    if shipped is None:
        return path
    if echo is not None:
        echo(f"note: {os.fspath(path)} is not in this folder; reading the sample shipped with vizcnn: {shipped}")
    return shipped


__all__ = ["SAMPLES_DIR", "sample_names", "shipped_sample", "resolve_sample"]
