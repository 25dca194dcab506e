"""Build progress for people (``plain``, BuildKit's ``#N`` lines) and tools (``rawjson``), from events.

The printers read a build's events, the same ones the log keeps, so what a client shows while a
build runs is what ``history logs`` shows years later.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TextIO

from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event, encode_payload
from buildsvc.events.envelope import StoredEvent, format_time

__all__ = ["PlainProgress", "RawJsonProgress"]


class PlainProgress:
    """``#N [name]`` / ``#N 0.123 output`` / ``#N DONE 1.2s`` lines, as ``buildctl --progress plain``."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self._numbers: dict[str, int] = {}
        self._started: dict[str, datetime] = {}
        self._names: dict[str, str] = {}

    def _number(self, vertex: str, name: str = "") -> int:
        if vertex not in self._numbers:
            self._numbers[vertex] = len(self._numbers) + 1
        if name:
            self._names[vertex] = name
        return self._numbers[vertex]

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def feed(self, stored: StoredEvent) -> None:
        """Print what one event says, if anything."""
        event = stored.decode()
        match event:
            case ev.VertexStarted(vertex=v, name=name):
                n = self._number(v, name)
                self._started[v] = stored.recorded_at
                self._line(f"#{n} {name or v}")
            case ev.VertexCached(vertex=v, name=name):
                n = self._number(v, name)
                self._line(f"#{n} {name or v}")
                self._line(f"#{n} CACHED")
            case ev.VertexLogChunk(vertex=v, data=data):
                n = self._number(v)
                since = self._since(v, stored.recorded_at)
                for line in data.decode("utf-8", "replace").splitlines():
                    self._line(f"#{n} {since:.3f} {line}")
            case ev.VertexCompleted(vertex=v):
                self._line(f"#{self._number(v)} DONE {self._since(v, stored.recorded_at):.1f}s")
            case ev.VertexFailed(vertex=v, error=error):
                self._line(f"#{self._number(v)} ERROR: {error}")
            case ev.VertexInterrupted(vertex=v, reason=reason):
                self._line(f"#{self._number(v)} INTERRUPTED: {reason}")
            case _:
                pass

    def _since(self, vertex: str, now: datetime) -> float:
        started = self._started.get(vertex)
        return (now - started).total_seconds() if started else 0.0


class RawJsonProgress:
    """One JSON object per event: its type, time and payload (``--progress rawjson``)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def feed(self, stored: StoredEvent) -> None:
        """Print one event."""
        event: Event = stored.decode()
        self.out.write(
            json.dumps(
                {
                    "position": stored.position,
                    "time": format_time(stored.recorded_at),
                    "type": stored.type,
                    "payload": encode_payload(event),
                }
            )
            + "\n"
        )
        self.out.flush()
