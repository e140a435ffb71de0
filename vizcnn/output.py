"""Output folders: one run per folder, never silently mixed with another.

The rule: a command writes into a folder that is new, empty, or holds an earlier run
of the *same* command (its ``summary.json`` says so). In that last case the files of
the new run replace the old ones and files the earlier run listed that this run does
not write are removed, so the folder always holds exactly one run. Any other folder
is refused unless ``force=True`` (``--force``), which writes into it regardless.
Every file is written to a temporary name and renamed, and summary.json last, so an
interrupted run leaves the previous results readable.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import BadInputError
from .imageio import write_json

SUMMARY = "summary.json"


class OutputDir:
    """A run's output folder: ``path(name)`` for each file, ``finish(summary)`` at the end."""

    def __init__(self, folder: str | os.PathLike, command: str, *, force: bool = False):
        self.root = Path(folder)
        self.command = command
        self.previous: list[str] = []
        if self.root.exists() and not self.root.is_dir():
            raise BadInputError(f"output folder {self.root} exists and is not a folder")
        if self.root.is_dir() and any(self.root.iterdir()):
            earlier = self._earlier_run()
            if earlier is None and not force:
                raise BadInputError(f"output folder {self.root} is not empty and holds no earlier '{command}' run; "
                                    f"choose another --out or pass --force")
            self.previous = earlier or []
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInputError(f"cannot create output folder {self.root}: {e.strerror or e}") from None
        if not os.access(self.root, os.W_OK):
            raise BadInputError(f"output folder {self.root} is not writable")
        self.written: list[str] = []

    def _earlier_run(self) -> list[str] | None:
        try:
            summary = json.loads((self.root / SUMMARY).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(summary, dict) or summary.get("command") != self.command:
            return None
        files = summary.get("files", [])
        return [f for f in files if isinstance(f, str)]

    def path(self, name: str) -> Path:
        """Where to write file ``name`` (already sanitised, no folders) of this run."""
        self.written.append(name)
        return self.root / name

    def finish(self, summary: dict) -> dict:
        """Writes summary.json (with the command and this run's file list) and removes the
        earlier run's files this run did not write."""
        summary = {"command": self.command, **summary, "files": sorted(set(self.written))}
        write_json(self.root / SUMMARY, summary)
        for name in set(self.previous) - set(self.written):
            target = self.root / name
            if target.parent == self.root and target.is_file():
                target.unlink()
        return summary
