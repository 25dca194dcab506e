"""Build progress for people (``tty``, a live view; ``plain``, BuildKit's ``#N`` lines) and tools
(``rawjson``); ``auto`` is ``tty`` on a terminal and ``plain`` otherwise.

The printers read :class:`~buildsvc.api.model.StatusUpdate` objects: made from the build's events
in this process by the embedded engine, or received from a daemon's Status stream. Both come from
the same events the log keeps, so what a client shows while a build runs is what ``history logs``
shows years later, with or without a daemon.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from buildsvc.api.model import StatusUpdate
    from buildsvc.events.sql_store import SqlEventStore

# The live view (rich), the event catalog and the time format load when a build uses them: a quiet or
# plain build through a daemon, the no-op rebuild among them, never does.

__all__ = [
    "PROGRESS_CHOICES",
    "PlainProgress",
    "ProgressPrinter",
    "RawJsonProgress",
    "make_printer",
    "printing_progress",
]

PROGRESS_CHOICES = ("auto", "tty", "plain", "rawjson", "quiet")


class ProgressPrinter(Protocol):
    """Shows a build's updates as they arrive."""

    def feed(self, update: StatusUpdate) -> None:
        """Show one update."""
        ...

    def close(self) -> None:
        """The build ended: finish the display."""
        ...


class PlainProgress:
    """``#N [name]`` / ``#N 0.123 output`` / ``#N DONE 1.2s`` lines, as ``buildctl --progress plain``."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self._numbers: dict[str, int] = {}
        self._started: dict[str, datetime] = {}
        self._partial: dict[tuple[str, int], bytes] = {}

    def _number(self, vertex: str) -> int:
        if vertex not in self._numbers:
            self._numbers[vertex] = len(self._numbers) + 1
        return self._numbers[vertex]

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def feed(self, update: StatusUpdate) -> None:
        """Print what one update says, if anything."""
        if update.log is not None:
            log = update.log
            # A chunk can end in the middle of a line (or of a UTF-8 character): print whole lines
            # only, and keep the rest until the next chunk of that stream or the vertex's end.
            key = (log.vertex, log.stream)
            *lines, rest = (self._partial.pop(key, b"") + log.data).split(b"\n")
            if rest:
                self._partial[key] = rest
            since = self._since(log.vertex, update.time)
            for line in lines:
                self._log_line(log.vertex, since, line)
            return
        v = update.vertex
        if v is None:
            return
        if v.state != "started":
            for key in [k for k in self._partial if k[0] == v.digest]:
                self._log_line(v.digest, self._since(v.digest, update.time), self._partial.pop(key))
        n = self._number(v.digest)
        match v.state:
            case "started":
                self._started[v.digest] = update.time
                self._line(f"#{n} {v.name or v.digest}")
            case "cached":
                self._line(f"#{n} {v.name or v.digest}")
                self._line(f"#{n} CACHED")
            case "completed":
                # The solver's own measure of the run; event times include the recording.
                took = v.duration_ms / 1000 if v.duration_ms else self._since(v.digest, update.time)
                self._line(f"#{n} DONE {took:.1f}s")
            case "failed":
                self._line(f"#{n} ERROR: {v.error}")
            case "interrupted":
                self._line(f"#{n} INTERRUPTED: {v.error}")

    def _log_line(self, vertex: str, since: float, line: bytes) -> None:
        self._line(f"#{self._number(vertex)} {since:.3f} {line.decode('utf-8', 'replace').rstrip(chr(13))}")

    def _since(self, vertex: str, now: datetime) -> float:
        started = self._started.get(vertex)
        return (now - started).total_seconds() if started else 0.0

    def close(self) -> None:
        """Nothing to finish: every line is out."""


class RawJsonProgress:
    """One JSON object per event: its position, type, time and payload (``--progress rawjson``)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def feed(self, update: StatusUpdate) -> None:
        """Print one update."""
        from buildsvc.events.envelope import format_time

        self.out.write(
            json.dumps(
                {
                    "position": update.position,
                    "time": format_time(update.time),
                    "type": update.type,
                    "payload": update.payload,
                }
            )
            + "\n"
        )
        self.out.flush()

    def close(self) -> None:
        """Nothing to finish: every line is out."""


def make_printer(progress: str, out: TextIO | None = None) -> ProgressPrinter | None:
    """The printer for a ``--progress`` choice (None for ``quiet``).

    ``auto`` draws the live view only when the stream it would draw on (stderr, where buildctl draws
    too) is a terminal: in a pipe or a CI log the redrawn lines would be noise, so it prints plain.
    """
    match progress:
        case "quiet":
            return None
        case "rawjson":
            return RawJsonProgress(out)
        case "plain":
            return PlainProgress(out)
        case "tty":
            from rich.console import Console

            from buildsvc.cli.tty_progress import TtyProgress

            return TtyProgress(Console(file=out or sys.stderr, force_terminal=True, highlight=False))
        case "auto":
            stream = out or sys.stderr
            return make_printer("tty" if stream.isatty() else "plain", stream)
    raise ValueError(f"unknown progress mode {progress!r}; expected one of {', '.join(PROGRESS_CHOICES)}")


@contextmanager
def printing_progress(store: SqlEventStore, progress: str, shows: Callable[[str], bool]) -> Iterator[None]:
    """Print an in-process build's progress from the events appended to the streams ``shows`` takes,
    as they are appended; on leaving, wait (up to 10 s) until all the build recorded is printed.
    """
    printer = make_printer(progress)
    if printer is None:
        # Quiet: nothing to print, so nothing to follow (and no wait at the end for a follower to
        # catch up with the build's last events).
        yield
        return
    # Here, not at the top: a client of a daemon prints from Status and never loads the SQL store.
    from buildsvc.api.updates import status_update
    from buildsvc.events.subscription import Subscription

    follow = Subscription(store, after=store.head(), poll_interval=0.05)

    def show() -> None:
        for stored in follow:
            if shows(stored.stream_id):
                printer.feed(status_update(stored))

    watcher = threading.Thread(target=show, name="progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        last = store.head()
        deadline = time.monotonic() + 10
        while follow.position < last and watcher.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        follow.close()
        watcher.join(5)
        printer.close()
