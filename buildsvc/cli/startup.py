"""The garbage collector while a command starts up.

A command's start is mostly imports (click, grpc, and for the embedded engine SQLAlchemy, the
event catalog, the solver...): hundreds of thousands of long-lived objects and almost no garbage.
With the default thresholds the collector runs ~170 young and ~15 older collections over them,
60-120 ms of an embedded build and ~10 ms of a client command, to free next to nothing.

So the entry point (``main``) calls :func:`begin`, which raises the young generation's threshold
for the start (the collector still runs, only rarely: a command that never calls :func:`done` keeps
bounded memory), and :func:`done`, once the set-up is over (the embedded engine open, the daemon
about to serve), moves what the start made into the permanent generation (``gc.freeze``: never
scanned again) and restores the thresholds found. Without :func:`begin` (the CLI invoked as a
library, e.g. by tests) :func:`done` does nothing.
"""

from __future__ import annotations

import gc

__all__ = ["STARTUP_THRESHOLD", "begin", "done"]

STARTUP_THRESHOLD = 200_000
"""Young objects allocated between collections while starting (the default is 700)."""

# The thresholds found by begin(), while the start lasts (empty otherwise).
_saved: list[tuple[int, ...]] = []


def begin() -> None:
    """Collect rarely until :func:`done` (called once, at the entry point)."""
    if not _saved:
        _saved.append(gc.get_threshold())
        gc.set_threshold(STARTUP_THRESHOLD, *_saved[0][1:])


def done() -> None:
    """The start is over: freeze what it made and collect as usual from now on."""
    if not _saved:
        return
    gc.freeze()
    gc.set_threshold(*_saved.pop())
