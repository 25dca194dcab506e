"""Build progress for people (``plain``, BuildKit's ``#N`` lines) and tools (``rawjson``).

The printers read :class:`~buildsvc.api.model.StatusUpdate` objects: made from the build's events
in this process by the embedded engine, or received from a daemon's Status stream. Both come from
the same events the log keeps, so what a client shows while a build runs is what ``history logs``
shows years later, with or without a daemon.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Protocol, TextIO

from buildsvc.api.model import StatusUpdate
from buildsvc.events.envelope import format_time

__all__ = ["PlainProgress", "ProgressPrinter", "RawJsonProgress", "make_printer"]


class ProgressPrinter(Protocol):
    """Shows a build's updates as they arrive."""

    def feed(self, update: StatusUpdate) -> None:
        """Show one update."""
        ...


class PlainProgress:
    """``#N [name]`` / ``#N 0.123 output`` / ``#N DONE 1.2s`` lines, as ``buildctl --progress plain``."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self._numbers: dict[str, int] = {}
        self._started: dict[str, datetime] = {}

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
            n = self._number(update.log.vertex)
            since = self._since(update.log.vertex, update.time)
            for line in update.log.data.decode("utf-8", "replace").splitlines():
                self._line(f"#{n} {since:.3f} {line}")
            return
        v = update.vertex
        if v is None:
            return
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

    def _since(self, vertex: str, now: datetime) -> float:
        started = self._started.get(vertex)
        return (now - started).total_seconds() if started else 0.0


class RawJsonProgress:
    """One JSON object per event: its position, type, time and payload (``--progress rawjson``)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def feed(self, update: StatusUpdate) -> None:
        """Print one update."""
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


def make_printer(progress: str) -> ProgressPrinter | None:
    """The printer for a ``--progress`` choice (None for ``quiet``)."""
    if progress == "quiet":
        return None
    return RawJsonProgress() if progress == "rawjson" else PlainProgress()
