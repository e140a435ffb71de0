"""Output folders: a run is a transaction that never loses a user's file.

A command's files go to a hidden staging folder beside ``--out``
(``.NAME.vizcnn-XXXX``); :meth:`OutputDir.finish` writes ``summary.json`` and the
manifest there and swaps the staging folder in place of ``--out`` in one rename
(``renameat2(RENAME_EXCHANGE)`` where Linux has it). Until then the previous results
are untouched: a run that fails, or is stopped by SIGINT, SIGTERM, SIGHUP or SIGQUIT
(handled alike, :mod:`vizcnn.core.interrupt`), removes its staging folder and leaves
``--out`` exactly as it was, and a new folder it had to create is removed again.
Staging folders that a killed run left (SIGKILL, power loss) are removed by the next
run into the same ``--out`` once it holds the lock and no live process holds theirs.

Ownership: vizcnn recognises its own files by the manifest it writes,
``.vizcnn-manifest.json`` (command, the SHA-256 of every file, every folder it made),
signed with an HMAC-SHA256 keyed by a per-user secret (:func:`secret_path`: created on
first use, mode 0600, under ``$VIZCNN_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/vizcnn``,
else ``~/.config/vizcnn``). A manifest whose signature does not verify is not vizcnn's:
it is a foreign file like any other, so a manifest dropped into a folder (an unpacked
archive, a shared drive) vouches for nothing. Of an earlier run vizcnn deletes only
files a verified manifest lists *with their hash unchanged*, and folders it lists once
they are empty. Every other entry (a user's file, an empty folder, a link, a FIFO, a
file that was edited) is foreign: a folder holding one is refused unless ``force=True``
(``--force``), and foreign entries are always carried over into the new folder with
their mode and times (moved, never copied), except a file of the same name as a file of
the new run, which that file replaces (with ``--force`` only). vizcnn never follows a
symlink inside ``--out``: links are carried over as links.

Locking: the output folder is locked (``flock``) from the start of a run until the last
carried-over entry is in place, and so is the staging folder that becomes it, so a
second run into the same folder fails at once instead of interleaving.

Targets that cannot be swapped (a mount point, ``.``, ``..``, ``/``, the home folder,
the current folder or one holding it, a name too long for the staging folder beside
it) are refused before any work, in one line.

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
import hmac
import json
import os
import secrets
import shutil
import stat
import tempfile
import warnings
from pathlib import Path

from ..core.errors import BadInputError
from ..core.interrupt import catching_signals, signals_blocked
from .imageio import _show, write_atomic

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; staging and the swap still apply
    fcntl = None

SUMMARY = "summary.json"
MANIFEST = ".vizcnn-manifest.json"
_STAGING = ".vizcnn-"
_MARKER = ".vizcnn-staging"  # inside a staging folder until just before its swap
_VERSION = 2
_MAX_MANIFEST = 64 << 20
#: Environment variable naming the folder of vizcnn's per-user secret (tests point it at a temp dir).
CONFIG_ENV = "VIZCNN_CONFIG_DIR"
_KEY_NAME = "manifest.key"
# the longest --out name whose staging sibling ``.NAME.vizcnn-old-XXXXXXXX`` fits NAME_MAX (255 bytes)
_MAX_NAME = 255 - len(f".{_STAGING}old-") - 8


# ------------------------------------------------------------------ the per-user secret


def secret_path() -> Path:
    """Where the key that signs manifests lives: ``$VIZCNN_CONFIG_DIR/manifest.key``, else
    ``$XDG_CONFIG_HOME/vizcnn/manifest.key``, else ``~/.config/vizcnn/manifest.key``."""
    folder = os.environ.get(CONFIG_ENV)
    if not folder:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        folder = os.path.join(base, "vizcnn")
    return Path(folder) / _KEY_NAME


_KEYS: dict[str, bytes | None] = {}


def _secret() -> bytes | None:
    """The per-user key (created on first use, 32 random bytes, mode 0600), or None when it
    cannot be read or made, or could be read by others (then no manifest verifies, so
    every earlier file counts as foreign: safe, if less convenient)."""
    path = secret_path()
    if str(path) in _KEYS:
        return _KEYS[str(path)]
    key = None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except FileExistsError:
                continue  # made by a concurrent run: read it
            except OSError:
                break
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
            continue
        except OSError:
            break
        try:
            st = os.fstat(fd)
            private = stat.S_ISREG(st.st_mode) and not st.st_mode & 0o077 and \
                (not hasattr(os, "geteuid") or st.st_uid == os.geteuid())
            data = os.read(fd, 64) if private else b""
        finally:
            os.close(fd)
        key = data if len(data) >= 32 else None
        break
    _KEYS[str(path)] = key
    return key


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _signed(body: dict) -> bytes:
    """The manifest file's bytes: ``body`` plus its HMAC (no HMAC without a key: unverifiable)."""
    key = _secret()
    data = dict(body)
    if key is not None:
        data["hmac"] = hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def _manifest(root: Path) -> dict:
    """The verified manifest of the run in ``root``: {} when there is none, or it is a
    link, not a regular file, too large, not JSON, or its HMAC does not verify."""
    key = _secret()
    if key is None:
        return {}
    try:
        fd = os.open(root / MANIFEST, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_MANIFEST:
            return {}
        with os.fdopen(os.dup(fd), "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)
    if not isinstance(data, dict) or not isinstance(data.get("hmac"), str):
        return {}
    body = {k: v for k, v in data.items() if k != "hmac"}
    if not hmac.compare_digest(hmac.new(key, _canonical(body), hashlib.sha256).hexdigest(), data["hmac"]):
        return {}
    if body.get("version") != _VERSION or not isinstance(body.get("files"), dict) \
            or not isinstance(body.get("dirs", []), list) or not isinstance(body.get("command"), str):
        return {}
    return body


def run_command(folder: str | os.PathLike) -> str | None:
    """The command of the vizcnn run in ``folder`` as its verified manifest says
    (``"study"``, ``"deconv"``, ...), or None: no run there that vizcnn can prove it made."""
    return _manifest(Path(folder)).get("command") or None


def _kept(manifest: dict) -> set[str]:
    return {k for k in manifest.get("kept", []) if isinstance(k, str) and "/" not in k and k not in ("", ".", "..")}


# ------------------------------------------------------------------ what a folder holds


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """(every non-folder entry, every folder) below ``root`` as relative posix paths; links
    are entries, never followed."""
    files, dirs = [], []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for entry in it:
                r = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(r)
                    stack.append(r)
                else:
                    files.append(r)
    return sorted(files), sorted(dirs)


def _sha256(path: Path) -> str | None:
    """The SHA-256 of a regular file (a link, FIFO or device is never opened: None)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    digest = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    finally:
        os.close(fd)
    return digest.hexdigest()


class _Ownership:
    """Which entries of a folder the verified manifest vouches for; everything else is foreign."""

    def __init__(self, root: Path, manifest: dict):
        files, dirs = _walk(root)
        listed, listed_dirs, kept = manifest.get("files", {}), set(manifest.get("dirs", [])), _kept(manifest)
        self.kept = {d for d in dirs if d in kept}
        self.files, self.dirs, self.foreign = set(), set(), []
        for rel in files:
            top = rel.split("/", 1)[0]
            if top in self.kept:
                continue
            if rel == MANIFEST and manifest:
                self.files.add(rel)
            elif isinstance(listed.get(rel), str) and _sha256(root / rel) == listed[rel]:
                self.files.add(rel)
            else:
                self.foreign.append(rel)
        for rel in dirs:
            top = rel.split("/", 1)[0]
            if top in self.kept:
                continue
            (self.dirs.add if rel in listed_dirs else self.foreign.append)(rel)
        self.foreign.sort()
        # folders that hold something of vizcnn's somewhere below: carried over entry by entry
        self.above_owned = set()
        for rel in (*self.files, *self.dirs):
            parts = rel.split("/")
            self.above_owned.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))


def _listing(names: list[str]) -> str:
    shown = [_show(n) for n in names[:3]]
    return ", ".join(shown) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# ------------------------------------------------------------------ locks and swaps


def _lock(fd: int, shown) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise BadInputError(f"output folder {_show(shown)} is in use by another vizcnn run; wait for it to "
                                "finish or choose another --out") from None
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


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))


def check_target(folder: str | os.PathLike) -> None:
    """Refuses, in one line, an ``--out`` that a run could not swap into place: ``.``,
    ``..``, ``/``, a mount point, the home folder, the current folder or one holding it,
    a name too long for its staging folder. Called before any work."""
    text = os.fspath(folder)
    shown = _show(text)
    last = os.path.basename(os.fsdecode(text).rstrip("/")) if os.fsdecode(text).strip("/") else ""
    why = None
    if last in ("", ".", ".."):
        why = "it names a folder by '.', '..' or '/'"
    elif len(os.fsencode(last)) > _MAX_NAME:
        why = f"its name is longer than {_MAX_NAME} bytes (a staging folder beside it would not fit)"
    else:
        real = os.path.realpath(text)
        home = None
        with contextlib.suppress(Exception):
            home = os.path.realpath(os.path.expanduser("~"))
        cwd = None
        with contextlib.suppress(OSError):
            cwd = os.path.realpath(os.getcwd())
        if real == os.path.realpath(os.sep):
            why = "it is the root folder"
        elif home is not None and real == home:
            why = "it is your home folder"
        elif os.path.isdir(text) and os.path.ismount(text):
            why = "it is a mount point"
        elif cwd is not None and (cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep)):
            why = "it is the current folder or holds it"
    if why:
        raise BadInputError(f"refusing --out {shown}: {why}; a run replaces its output folder as a whole, "
                            "so choose a folder of its own (e.g. a new subfolder)")


#: Runs of this process that are open, and the folders of those that were finished.
_OPEN: list["OutputDir"] = []
FINISHED: list[Path] = []


def abort_open() -> list[Path]:
    """Aborts every open run of this process (what an interrupt does); returns their ``--out``."""
    folders = []
    for run in list(_OPEN):
        folders.append(run.final)
        run.abort()
    return folders


class OutputDir:
    """A run's output folder: ``path(name)`` for each file, ``finish(summary)`` at the end.

    ``root`` is the staging folder while the run is open and the final folder after
    :meth:`finish`; ``written`` lists the names given out by :meth:`path` (a writer
    that writes a file under ``root`` itself appends its name). ``earlier`` is the
    command of the run found in ``--out`` by its verified manifest (None: none that
    vizcnn made). Usable as a context manager: leaving the block without ``finish``
    aborts the run. A run that is never finished is aborted when the process exits, on
    SIGINT, SIGTERM, SIGHUP or SIGQUIT.
    """

    def __init__(self, folder: str | os.PathLike, command: str, *, force: bool = False):
        check_target(folder)
        self.final = Path(folder)
        self.command = command
        self.force = force
        self.previous: list[str] = []  # kept for callers of the old API: the swap removes stale files itself
        self.written: list[str] = []
        self.kept: list[str] = []
        self.earlier: str | None = None
        self._fds: list[int] = []
        self._created: list[Path] = []
        self._kept_created: list[str] = []
        self._manifest_before: bytes | None = None
        self._manifest_written = False
        self._open = True
        self._signals = contextlib.ExitStack()
        shown = _show(self.final)
        if self.final.is_symlink() or (self.final.exists() and not self.final.is_dir()):
            raise BadInputError(f"output folder {shown} exists and is not a folder")
        try:
            self._make_parents(self.final)
            if not self.final.exists():
                self.final.mkdir()  # 0o777 minus the umask, like any folder the user makes
                self._created.append(self.final)
            self._hold(self.final)
            self._remove_stale_staging()
            self._check_earlier()
            self.root = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}{_STAGING}"))
            self.staging = self.root
            self._hold(self.root)
            (self.root / _MARKER).touch()
        except BaseException as e:
            if self._fds:  # the folder is ours (locked): remove what this run created
                if getattr(self, "staging", None) is not None:
                    shutil.rmtree(self.staging, ignore_errors=True)
                self._release()
                self._remove_created()
            if isinstance(e, OSError):
                raise BadInputError(f"cannot create output folder {shown}: {e.strerror or e}") from None
            raise
        self._pid = os.getpid()
        _OPEN.append(self)
        atexit.register(self.abort)
        self._signals.enter_context(catching_signals())

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
        fd = _open_dir(folder)
        try:
            _lock(fd, self.final)
        except BaseException:
            os.close(fd)
            raise
        self._fds.append(fd)

    def _remove_stale_staging(self) -> None:
        """Staging folders of earlier runs into this --out that no live process holds (a
        run killed by SIGKILL or a power loss left them). Only folders that still carry
        the staging mark are removed: one killed after its swap began holds the previous
        run's files and is left alone (and named in a warning)."""
        prefix = f".{self.final.name}{_STAGING}"
        with os.scandir(self.final.parent) as it:
            candidates = [e for e in it if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)]
        for entry in candidates:
            path = Path(entry.path)
            try:
                fd = _open_dir(path)
            except OSError:
                continue
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # a live run holds it
                if os.path.lexists(path / _MARKER) and not os.path.islink(path / _MARKER):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    warnings.warn(f"{_show(path)} was left by a vizcnn run killed while it swapped its results "
                                  f"into {_show(self.final)}; it may hold files of yours: look through it",
                                  stacklevel=3)
            finally:
                os.close(fd)

    def _check_earlier(self) -> None:
        manifest = _manifest(self.final)
        self.earlier = manifest.get("command") or None
        if not any(self.final.iterdir()):
            return
        if manifest and manifest.get("command") != self.command and not self.force:
            raise BadInputError(f"output folder {_show(self.final)} holds a '{manifest.get('command')}' run, not "
                                f"'{self.command}'; choose another --out or pass --force")
        foreign = _Ownership(self.final, manifest).foreign
        if foreign and not self.force:
            raise BadInputError(f"output folder {_show(self.final)} holds entries vizcnn did not write there "
                                f"({_listing(foreign)}); choose another --out or pass --force (which keeps them)")

    # -------------------------------------------------------------------- use

    def path(self, name: str) -> Path:
        """Where to write file ``name`` (already sanitised; ``a/b`` for a file in a
        subfolder, which is created) of this run."""
        self.written.append(name)
        target = self.root / name
        if "/" in name:
            target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def is_earlier(self, command: str | None = None) -> bool:
        """Whether ``--out`` held a run of ``command`` (default: this run's) that vizcnn can
        prove it made (a verified manifest): the only kind of folder a command resumes from."""
        return self.earlier is not None and self.earlier == (command or self.command)

    def keep(self, name: str) -> Path:
        """A folder ``--out/name`` that outlives this run: written directly (not staged),
        left in place when the run is interrupted, carried over by every later run, never
        deleted by vizcnn. For state a rerun resumes from: an existing folder is used only
        when the verified manifest says this command kept it; a link, or a folder of the
        user's, is refused (vizcnn never follows a link inside --out, nor adopts a user's
        folder as its state). If the run is aborted before anything was written into a
        folder it created here, the folder and the manifest entry go again."""
        if not self._open:
            raise BadInputError(f"output folder {_show(self.final)}: this run already ended")
        if "/" in name or name in ("", ".", "..") or name in (MANIFEST, SUMMARY) or name.startswith(_STAGING):
            raise BadInputError(f"keep: {name!r} is not a plain folder name")
        folder = self.final / name
        manifest = _manifest(self.final)
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                raise BadInputError(f"{_show(folder)} is a link or not a folder; vizcnn never follows a link inside "
                                    "--out: move it away or choose another --out")
            if manifest.get("command") != self.command or name not in _kept(manifest):
                raise BadInputError(f"{_show(folder)} is not a folder an earlier '{self.command}' run kept (no "
                                    "verified vizcnn manifest says so); move it away or choose another --out")
        else:
            os.mkdir(folder)
            self._kept_created.append(name)
        self.kept.append(name)
        if name not in _kept(manifest) or manifest.get("command") != self.command:
            # record it now, so that a rerun after an interruption recognises the folder as its own
            if not self._manifest_written:
                with contextlib.suppress(OSError):
                    self._manifest_before = (self.final / MANIFEST).read_bytes() \
                        if not (self.final / MANIFEST).is_symlink() else None
                self._manifest_written = True
            body = {"version": _VERSION, "command": self.command, "files": manifest.get("files", {}),
                    "dirs": manifest.get("dirs", []), "kept": sorted(_kept(manifest) | {name})}
            write_atomic(self.final / MANIFEST, _signed(body))
        return folder

    # -------------------------------------------------------------------- end

    def finish(self, summary: dict) -> dict:
        """Writes summary.json (with the command and this run's file list) and the
        manifest, then swaps the run in place of the previous folder and carries over
        every entry vizcnn did not write, all under the lock and with signals held."""
        from .imageio import write_json

        if not self._open:
            raise BadInputError(f"output folder {_show(self.final)}: this run already ended")
        summary = {"command": self.command, **summary, "files": sorted(set(self.written))}
        write_json(self.staging / SUMMARY, summary)
        with signals_blocked():
            self._commit()
        return summary

    def _commit(self) -> None:
        old_manifest = _manifest(self.final)
        owned = _Ownership(self.final, old_manifest)
        kept = _kept(old_manifest) | set(self.kept)
        (self.staging / _MARKER).unlink()
        files, dirs = _walk(self.staging)
        new_files, new_dirs = set(files) | {MANIFEST}, set(dirs)
        self._check_conflicts(owned, new_files, new_dirs)
        self._new_dirs = new_dirs
        hashes = {rel: _sha256(self.staging / rel) for rel in files}
        body = {"version": _VERSION, "command": self.command,
                "files": {k: v for k, v in hashes.items() if v is not None}, "dirs": dirs, "kept": sorted(kept)}
        write_atomic(self.staging / MANIFEST, _signed(body))
        os.chmod(self.staging, stat.S_IMODE(os.lstat(self.final).st_mode))  # the user's mode, not mkdtemp's 0700
        trash = None
        if _exchange(self.staging, self.final):
            old = self.staging
        else:  # two renames: --out is missing for a moment, but never half-written
            trash = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}{_STAGING}old-"))
            old = trash / "run"
            os.replace(self.final, old)
            os.replace(self.staging, self.final)
        self.root = self.final
        # ``old`` holds the previous run. Carry over what this run does not own (kept
        # folders, foreign entries), delete exactly the files the old manifest vouches for
        # and the folders it lists once empty. Nothing else is ever deleted.
        self._carry(old, self.final, "", owned, kept)
        left = self._remove_empty(old)
        for folder in (old, trash):
            if folder is not None:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        self._end()
        FINISHED.append(self.final)
        if left:
            warnings.warn(f"{left} entries of the earlier {_show(self.final)} could not be carried over; they are "
                          f"in {_show(old)}", stacklevel=3)

    def _check_conflicts(self, owned: _Ownership, new_files: set[str], new_dirs: set[str]) -> None:
        """Before the swap: a foreign entry this run would have to delete is refused (a
        user's folder where the run writes a file, always; a user's file of the same name
        as one of the run's, unless --force)."""
        foreign_dirs = set()
        for rel in owned.foreign:
            parts = rel.split("/")
            foreign_dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        everything = set(owned.foreign) | foreign_dirs
        for rel in sorted(everything & new_files):
            if rel in foreign_dirs or (self.final / rel).is_dir() and not (self.final / rel).is_symlink():
                raise BadInputError(f"output folder {_show(self.final)}: {_show(rel)} is a folder of yours where this "
                                    "run writes a file; move it away or choose another --out")
            if not self.force:
                raise BadInputError(f"output folder {_show(self.final)}: {_show(rel)} appeared during the run and "
                                    "has the name of one of its files; move it away or pass --force")
        for rel in sorted(set(owned.foreign) & new_dirs):
            if not (self.final / rel).is_dir() or (self.final / rel).is_symlink():
                if not self.force:
                    raise BadInputError(f"output folder {_show(self.final)}: {_show(rel)} has the name of a folder "
                                        "this run writes; move it away or pass --force")

    def _carry(self, old: Path, new: Path, rel: str, owned: _Ownership, kept: set[str]) -> None:
        with os.scandir(old / rel if rel else old) as it:
            entries = list(it)
        for entry in entries:
            r = f"{rel}/{entry.name}" if rel else entry.name
            src, dst = old / r, new / r
            try:
                if not rel and entry.name in kept:
                    if not os.path.lexists(dst):
                        os.rename(src, dst)
                    continue
                if entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if not os.path.lexists(dst):
                        if r not in owned.above_owned:
                            os.rename(src, dst)  # a whole foreign folder: moved, mode and times and all
                            continue
                        os.mkdir(dst)
                    elif not dst.is_dir() or dst.is_symlink():
                        continue  # refused before the swap; left where it is
                    self._carry(old, new, r, owned, kept)
                    if r in owned.dirs:  # vizcnn's folder: gone if it came out empty and the new run has none
                        if r not in self._new_dirs:
                            with contextlib.suppress(OSError):
                                dst.rmdir()
                    else:  # the user's folder: its own mode and times
                        os.chmod(dst, stat.S_IMODE(st.st_mode))
                        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                elif r in owned.files:
                    os.unlink(src)
                elif not os.path.lexists(dst):
                    os.rename(src, dst)
                elif self.force:  # a file of this run took its name: what --force asks for
                    os.unlink(src)
            except OSError:
                continue  # left in the old folder, which is then named in a warning

    @staticmethod
    def _remove_empty(old: Path) -> int:
        """Removes the empty folders left in ``old``; returns how many entries remain."""
        left = 0
        for here, dirs, files in os.walk(old, topdown=False):
            left += len(files)
            for d in dirs:
                try:
                    (Path(here) / d).rmdir()  # only empty ones
                except OSError:
                    left += 1
        return left

    def abort(self) -> None:
        """Ends the run without publishing it: the staging folder is removed and the
        output folder is left exactly as it was (a folder this run created is removed,
        and so is a kept folder it created if nothing was written into it)."""
        if not self._open:
            return
        shutil.rmtree(self.staging, ignore_errors=True)
        self._undo_keep()
        self._end()
        self._remove_created()

    def _undo_keep(self) -> None:
        for name in self._kept_created:
            folder = self.final / name
            for here, dirs, _ in os.walk(folder, topdown=False):
                for d in dirs:
                    with contextlib.suppress(OSError):
                        (Path(here) / d).rmdir()
            with contextlib.suppress(OSError):
                folder.rmdir()
        if self._manifest_written and not any((self.final / n).exists() for n in self._kept_created):
            with contextlib.suppress(OSError, BadInputError):
                if self._manifest_before is None:
                    (self.final / MANIFEST).unlink()
                else:
                    write_atomic(self.final / MANIFEST, self._manifest_before)

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty (a keep() folder stays)

    def _end(self) -> None:
        self._open = False
        atexit.unregister(self.abort)
        with contextlib.suppress(ValueError):
            _OPEN.remove(self)
        with contextlib.suppress(Exception):
            self._signals.close()
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


__all__ = ["OutputDir", "SUMMARY", "MANIFEST", "CONFIG_ENV", "FINISHED", "abort_open", "check_target", "run_command",
           "secret_path"]
