"""A build's timeline from its own events: the solve and each vertex as spans, and its output.

A pure function of one build stream, so ``history trace`` and ``history logs`` work from the log
alone, for builds that ended years ago as well as for one still running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent

__all__ = ["LogLine", "Span", "build_logs", "build_spans"]


@dataclass(slots=True, kw_only=True)
class Span:
    """One span: the solve, or one run (or cache hit) of a vertex."""

    name: str
    kind: str
    """``solve`` or ``vertex``."""
    trace_id: str
    start: datetime
    end: datetime | None = None
    status: str = "running"
    vertex: str = ""
    worker: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float | None:
        """Milliseconds from start to end (None while it runs)."""
        return None if self.end is None else (self.end - self.start).total_seconds() * 1000


def build_spans(events: Sequence[StoredEvent]) -> list[Span]:
    """The solve span first, then vertex spans in the order they started."""
    spans: list[Span] = []
    solve: Span | None = None
    running: dict[str, Span] = {}
    for stored in events:
        event = stored.decode()
        at = stored.recorded_at
        match event:
            case ev.SolveStarted(build_ref=ref):
                solve = Span(name=f"solve {ref}", kind="solve", trace_id=stored.trace_id, start=at)
                spans.insert(0, solve)
            case ev.SolveCompleted() | ev.SolveFailed() | ev.SolveCancelled():
                if solve is not None:
                    solve.end = at
                    solve.status = {"SolveCompleted": "completed", "SolveFailed": "failed"}.get(
                        stored.type, "cancelled"
                    )
            case ev.VertexStarted(vertex=v, name=name, worker=worker):
                span = Span(
                    name=name or v, kind="vertex", trace_id=stored.trace_id, start=at, vertex=v, worker=worker
                )
                running[v] = span
                spans.append(span)
            case ev.VertexCached(vertex=v, name=name):
                spans.append(
                    Span(
                        name=name or v,
                        kind="vertex",
                        trace_id=stored.trace_id,
                        start=at,
                        end=at,
                        status="cached",
                        vertex=v,
                    )
                )
            case ev.VertexCompleted(vertex=v) | ev.VertexFailed(vertex=v) | ev.VertexInterrupted(vertex=v):
                span_ = running.pop(v, None)
                if span_ is not None:
                    span_.end = at
                    span_.status = {"VertexCompleted": "completed", "VertexFailed": "failed"}.get(
                        stored.type, "interrupted"
                    )
            case _:
                pass
    return spans


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLine:
    """Output of a vertex as the build printed it."""

    vertex: str
    stream: int
    data: bytes
    at: datetime


def build_logs(events: Sequence[StoredEvent]) -> list[LogLine]:
    """Every output chunk, in the order it was recorded."""
    lines = []
    for stored in events:
        if stored.type == ev.VertexLogChunk.type_name:
            chunk = stored.decode()
            assert isinstance(chunk, ev.VertexLogChunk)
            lines.append(
                LogLine(vertex=chunk.vertex, stream=chunk.stream, data=chunk.data, at=stored.recorded_at)
            )
    return lines
