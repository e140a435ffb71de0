"""Signals that end a run: SIGINT, SIGTERM, SIGHUP and SIGQUIT alike.

Python turns SIGINT into ``KeyboardInterrupt``; :func:`catching_signals` makes SIGTERM,
SIGHUP and SIGQUIT raise :class:`Interrupted` (a ``KeyboardInterrupt``) the same way, so
the ``finally`` blocks and context managers on the way up clean up exactly as for Ctrl-C
(an :class:`~vizcnn.io.output.OutputDir` removes its staging folder). The CLI then exits
with the shell's convention, 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM).
A forked child (a DataLoader worker) that receives one of them dies of it at once, as
it would without vizcnn.
"""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

#: Signals that end a run the way Ctrl-C does (those the platform has).
SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, n))
#: The ones blocked while a finished run is swapped into place.
ALL = (signal.SIGINT, *SIGNALS)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``signum`` says which (SIGINT for Ctrl-C)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(f"interrupted by {signal_name(signum)}")
        self.signum = int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_of(error: BaseException) -> int:
    """The signal a KeyboardInterrupt stands for (SIGINT unless it is an :class:`Interrupted`)."""
    return int(getattr(error, "signum", signal.SIGINT))


def exit_code(error: BaseException) -> int:
    """The shell's exit code for a run ended by ``error``'s signal: 128 + its number."""
    return 128 + signal_of(error)


def _handler(owner_pid: int):
    def handle(signum, frame):
        if os.getpid() != owner_pid:  # a forked child: die of the signal, as without vizcnn
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Interrupted(signum)

    return handle


@contextlib.contextmanager
def catching_signals() -> Iterator[None]:
    """Inside the block SIGTERM, SIGHUP and SIGQUIT raise :class:`Interrupted` in the main
    thread (outside the main thread, where Python cannot install handlers, nothing
    changes); the previous handlers come back after. Nested blocks are harmless."""
    previous = {}
    handle = _handler(os.getpid())
    try:
        for signum in SIGNALS:
            try:
                previous[signum] = signal.signal(signum, handle)
            except (ValueError, OSError):  # not the main thread, or not catchable here
                pass
        yield
    finally:
        for signum, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, old)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Inside the block the signals of :data:`ALL` wait (they are delivered after it), so
    a swap that must not be cut in half finishes first."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(ALL))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


__all__ = ["ALL", "SIGNALS", "Interrupted", "catching_signals", "exit_code", "signal_name", "signal_of",
           "signals_blocked"]
