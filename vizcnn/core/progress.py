"""Progress of long steps, for people watching a terminal.

Library functions that take a while accept ``progress``: a callable
``progress(done, total, what)`` (``what``: a few words, e.g. ``"projecting conv5"``),
called as the work advances; None reports nothing. :class:`Progress` is the one the
CLI passes: it draws on stderr and only there, so pipes, logs and ``--json`` output stay
clean.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

ProgressFn = Callable[[int, int, str], None]
T = TypeVar("T")

#: at most this many redraws a second (a fast loop must not spend its time printing)
_RATE = 10


class Progress:
    """``progress(done, total, what)`` on stderr.

    On a terminal: one line redrawn in place (``label: what  done/total  12 s``); close()
    leaves its final state (everything done) on its own line. Elsewhere (a pipe, a log,
    tests) nothing, unless ``lines``: then one line per call (``[done/total] what``), for
    commands whose steps take minutes (``vizcnn report``). ``quiet``: nothing at all.
    Use it as a context manager, or call close().
    """

    def __init__(self, quiet: bool = False, *, lines: bool = False, label: str = "vizcnn",
                 stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream)
        self.enabled = not quiet and (self.tty or lines)
        self.label = label
        self.start = time.monotonic()
        self.last: tuple[int, int, str] | None = None
        self.drawn = 0.0
        self.width = 0

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        self.last = (done, total, what)
        if not self.tty:
            print(f"[{done}/{total}] {what}", file=self.stream, flush=True)
            return
        now = time.monotonic()
        if now - self.drawn >= 1 / _RATE or done >= total:
            self.drawn = now
            self._draw(done, total, what)

    def _draw(self, done: int, total: int, what: str, end: str = "") -> None:
        line = f"{self.label}: {what}  {done}/{total}  {time.monotonic() - self.start:.0f} s"
        self.stream.write("\r" + line.ljust(self.width) + end)
        self.stream.flush()
        self.width = len(line)

    def close(self) -> None:
        if self.enabled and self.tty and self.last is not None:
            _, total, what = self.last
            self._draw(total, total, what, end="\n")
        self.last = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def each(progress: ProgressFn | None, what: str, items: Iterable[T], total: int | None = None) -> Iterator[T]:
    """Yields ``items``, reporting ``progress(i, total, what)`` after the i-th (and 0 first)."""
    if progress is None:
        yield from items
        return
    total = len(items) if total is None else total  # type: ignore[arg-type]
    progress(0, total, what)
    for i, item in enumerate(items, 1):
        yield item
        progress(i, total, what)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


__all__ = ["Progress", "ProgressFn", "each"]
