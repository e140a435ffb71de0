"""Output folders: a run is a transaction.

A command's files go to a hidden staging folder beside ``--out``
(``.NAME.vizcnn-XXXX``); :meth:`OutputDir.finish` writes ``summary.json`` and the
manifest there and swaps the staging folder in place of ``--out`` in one rename
(``renameat2(RENAME_EXCHANGE)`` where Linux has it). Until then the previous results
are untouched: a run that fails, or is stopped by SIGINT or SIGTERM (handled alike),
removes its staging folder and leaves ``--out`` exactly as it was, and a new folder it
had to create is removed again.

Ownership: vizcnn recognises its own files by the manifest it writes,
``.vizcnn-manifest.json`` (command, and the SHA-256 of every file), never by what a
``summary.json`` says. Of an earlier run it deletes only files the manifest lists
*with their hash unchanged*. Any other file (a user's, or one they edited) is a
foreign file: a folder holding one is refused unless ``force=True`` (``--force``), and
with ``--force`` foreign files are carried over into the new folder, except those of
the same name as a file of the new run, which that file replaces.

Locking: the output folder is locked (``flock``) from the start of a run to its end,
and so is the staging folder that becomes it, so a second run into the same folder
fails at once instead of interleaving.

Persistent state: :meth:`OutputDir.keep` gives a folder inside ``--out`` that is
written directly, survives an interrupted run and is carried over by every later run
(``vizcnn study`` keeps its training checkpoints there to resume).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

from ..core.errors import BadInputError
from .imageio import write_atomic, write_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; staging and the swap still apply
    fcntl = None

SUMMARY = "summary.json"
MANIFEST = ".vizcnn-manifest.json"
_STAGING = ".vizcnn-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[str]:
    """Every non-directory entry below ``root`` (symlinks not followed), as relative posix paths."""
    found = []
    for here, dirs, files in os.walk(root):
        rel = Path(here).relative_to(root)
        found += [(rel / f).as_posix() for f in files]
        found += [(rel / d).as_posix() for d in dirs if (Path(here) / d).is_symlink()]
    return sorted(found)


def _manifest(root: Path) -> dict:
    """The manifest of the run in ``root``, or {} when there is none (or it is not one)."""
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return {}
    return data


def _kept(manifest: dict) -> set[str]:
    return {k for k in manifest.get("kept", []) if isinstance(k, str) and "/" not in k and k not in ("", ".", "..")}


def _owned(root: Path, manifest: dict) -> tuple[set[str], list[str]]:
    """(files of ``root`` that the manifest lists with their current hash, every other file)."""
    listed, kept = manifest.get("files", {}), _kept(manifest)
    owned, foreign = set(), []
    for rel in _files(root):
        if rel == MANIFEST or rel.split("/", 1)[0] in kept:
            owned.add(rel)
            continue
        path = root / rel
        if isinstance(listed.get(rel), str) and not path.is_symlink() and path.is_file() \
                and _sha256(path) == listed[rel]:
            owned.add(rel)
        else:
            foreign.append(rel)
    return owned, foreign


def _lock(fd: int, shown: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise BadInputError(f"output folder {shown} is in use by another vizcnn run; wait for it to finish "
                                "or choose another --out") from None
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two folders in one step where Linux's renameat2 offers it; False if not."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class OutputDir:
    """A run's output folder: ``path(name)`` for each file, ``finish(summary)`` at the end.

    ``root`` is the staging folder while the run is open and the final folder after
    :meth:`finish`; ``written`` lists the names given out by :meth:`path` (a writer
    that writes a file under ``root`` itself appends its name). Usable as a context
    manager: leaving the block without ``finish`` aborts the run. A run that is never
    finished is aborted when the process exits, on SIGINT or on SIGTERM.
    """

    def __init__(self, folder: str | os.PathLike, command: str, *, force: bool = False):
        self.final = Path(folder)
        self.command = command
        self.force = force
        self.previous: list[str] = []  # kept for callers of the old API: the swap removes stale files itself
        self.written: list[str] = []
        self.kept: list[str] = []
        self._fds: list[int] = []
        self._created: list[Path] = []
        self._open = True
        self._signal = None
        shown = self.final
        if self.final.is_symlink() or (self.final.exists() and not self.final.is_dir()):
            raise BadInputError(f"output folder {shown} exists and is not a folder")
        try:
            self._make_parents(self.final)
            if not self.final.exists():
                self.final.mkdir()
                self._created.append(self.final)
            self._hold(self.final)
            self._check_earlier()
            self.root = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}{_STAGING}"))
            self.staging = self.root
            self._hold(self.root)
        except BaseException as e:
            if self._fds:  # the folder is ours (locked): remove what this run created
                self._release()
                self._remove_created()
            if isinstance(e, OSError):
                raise BadInputError(f"cannot create output folder {shown}: {e.strerror or e}") from None
            raise
        self._pid = os.getpid()
        atexit.register(self.abort)
        self._catch_sigterm()

    # ------------------------------------------------------------------ setup

    def _make_parents(self, path: Path) -> None:
        missing = []
        parent = path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for p in reversed(missing):
            p.mkdir()
            self._created.append(p)

    def _hold(self, folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            _lock(fd, self.final)
        except BaseException:
            os.close(fd)
            raise
        self._fds.append(fd)

    def _check_earlier(self) -> None:
        if not any(self.final.iterdir()):
            return
        manifest = _manifest(self.final)
        if manifest and manifest.get("command") != self.command and not self.force:
            raise BadInputError(f"output folder {self.final} holds a '{manifest.get('command')}' run, not "
                                f"'{self.command}'; choose another --out or pass --force")
        _, foreign = _owned(self.final, manifest)
        if foreign and not self.force:
            listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise BadInputError(f"output folder {self.final} holds files vizcnn did not write there ({listed}); "
                                f"choose another --out or pass --force (which keeps them)")

    def _catch_sigterm(self) -> None:
        def handler(signum, frame):
            if os.getpid() != self._pid:  # a forked child: die as SIGTERM asks
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            raise KeyboardInterrupt(f"signal {signum}")

        try:
            self._signal = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: SIGTERM cannot be caught here
            self._signal = None

    # -------------------------------------------------------------------- use

    def path(self, name: str) -> Path:
        """Where to write file ``name`` (already sanitised; ``a/b`` for a file in a
        subfolder, which is created) of this run."""
        self.written.append(name)
        target = self.root / name
        if "/" in name:
            target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def keep(self, name: str) -> Path:
        """A folder ``--out/name`` that outlives this run: written directly (not staged),
        left in place when the run is interrupted, carried over by every later run of
        this command, never deleted by vizcnn. For state a rerun resumes from."""
        if "/" in name or name in ("", ".", "..") or name == MANIFEST:
            raise BadInputError(f"keep: {name!r} is not a plain folder name")
        folder = self.final / name
        folder.mkdir(exist_ok=True)
        self.kept.append(name)
        manifest = _manifest(self.final)
        if manifest.get("command") in (None, self.command) and name not in _kept(manifest):
            # record it now, so that a rerun after an interruption recognises the folder as its own
            write_json(self.final / MANIFEST, {"command": self.command, "files": manifest.get("files", {}),
                                               "kept": sorted(_kept(manifest) | {name})})
        return folder

    # -------------------------------------------------------------------- end

    def finish(self, summary: dict) -> dict:
        """Writes summary.json (with the command and this run's file list) and the
        manifest, then swaps the run in place of the previous folder."""
        if not self._open:
            raise BadInputError(f"output folder {self.final}: this run already ended")
        summary = {"command": self.command, **summary, "files": sorted(set(self.written))}
        write_json(self.staging / SUMMARY, summary)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) \
            if hasattr(signal, "pthread_sigmask") else None
        try:
            self._commit()
        finally:
            if blocked is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return summary

    def _commit(self) -> None:
        old_manifest = _manifest(self.final)
        kept = _kept(old_manifest) | set(self.kept)
        hashes = {rel: _sha256(self.staging / rel) for rel in _files(self.staging)
                  if rel != MANIFEST and not (self.staging / rel).is_symlink()}
        manifest = {"command": self.command, "files": hashes, "kept": sorted(kept)}
        write_atomic(self.staging / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        owned, foreign = _owned(self.final, old_manifest)
        trash = None
        if _exchange(self.staging, self.final):
            old = self.staging
        else:  # two renames: --out is missing for a moment, but never half-written
            trash = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}{_STAGING}old-"))
            old = trash / "run"
            os.replace(self.final, old)
            os.replace(self.staging, self.final)
        self.root = self.final
        self._end()
        # ``old`` holds the previous run. Carry over what this run does not own (kept
        # folders; foreign files, which exist only with --force), then delete exactly the
        # files the old manifest vouches for. Nothing else is ever deleted.
        for name in kept:
            if (old / name).exists() and not (self.final / name).exists():
                os.replace(old / name, self.final / name)
        for rel in foreign:
            target = self.final / rel
            if not target.exists() and not target.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old / rel, target)
            elif self.force:  # a file of this run took its name: what --force asks for
                with contextlib.suppress(OSError):
                    (old / rel).unlink()
        for rel in owned:
            if rel.split("/", 1)[0] not in kept:
                with contextlib.suppress(OSError):
                    (old / rel).unlink()
        for here, dirs, _ in os.walk(old, topdown=False):
            for d in dirs:
                with contextlib.suppress(OSError):
                    (Path(here) / d).rmdir()  # only empty ones
        for folder in (old, trash):
            if folder is not None:
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def abort(self) -> None:
        """Ends the run without publishing it: the staging folder is removed and the
        output folder is left exactly as it was (a folder this run created is removed)."""
        if not self._open:
            return
        shutil.rmtree(self.staging, ignore_errors=True)
        self._end()
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty (a keep() folder stays)

    def _end(self) -> None:
        self._open = False
        atexit.unregister(self.abort)
        if self._signal is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._signal)
            self._signal = None
        self._release()

    def _release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


__all__ = ["OutputDir", "SUMMARY", "MANIFEST"]
