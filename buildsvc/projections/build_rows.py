"""How a build's events fold into its history row and its vertices' rows: pure, no SQL.

:class:`~buildsvc.projections.builds.BuildHistoryProjection` applies these steps to the rows of its
tables; :func:`fold_build` applies the same steps to events alone, for a command that reads a
daemon's log (``history inspect``) and must not load the SQL side to do it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent

__all__ = [
    "EVENT_TYPES",
    "HISTORY_STEPS",
    "HISTORY_TYPES",
    "SOLVE_STEPS",
    "SOLVE_TYPES",
    "VERTEX_STEPS",
    "VERTEX_TYPES",
    "Build",
    "fold_build",
    "new_build",
    "new_vertex",
    "queued_vertex",
    "visible",
]

SOLVE_TYPES = frozenset(
    {
        ev.SolveRequested.type_name,
        ev.SolveStarted.type_name,
        ev.SolveCompleted.type_name,
        ev.SolveFailed.type_name,
        ev.SolveCancelled.type_name,
    }
)
HISTORY_TYPES = frozenset({ev.BuildHistoryPinned.type_name, ev.BuildHistoryDeleted.type_name})
VERTEX_TYPES = frozenset(
    {
        ev.VertexStarted.type_name,
        ev.VertexCached.type_name,
        ev.VertexCompleted.type_name,
        ev.VertexFailed.type_name,
        ev.VertexInterrupted.type_name,
    }
)
EVENT_TYPES = SOLVE_TYPES | VERTEX_TYPES | HISTORY_TYPES
"""The events the build history is folded from."""


def new_build(stored: StoredEvent, build_ref: str) -> dict[str, Any]:
    """A build's row as its first event starts it."""
    return {
        "build_ref": build_ref,
        "status": "requested",
        "frontend": "",
        "actor": stored.actor,
        "trace_id": stored.trace_id,
        "requested_at": stored.recorded_at,
        "started_at": None,
        "ended_at": None,
        "vertices_total": 0,
        "vertices_completed": 0,
        "vertices_cached": 0,
        "vertices_failed": 0,
        "vertices_interrupted": 0,
        "error": "",
        "error_vertex": "",
        "exit_code": None,
        "first_position": stored.position,
        "last_position": stored.position,
        "pinned": False,
        "deleted": False,
    }


def new_vertex(key: tuple[str, str], event: Any) -> dict[str, Any]:
    """The row of vertex ``key`` (build ref, digest) as the first event about it starts it."""
    return queued_vertex(key[0], key[1], getattr(event, "name", ""))


def queued_vertex(build_ref: str, vertex: str, name: str = "") -> dict[str, Any]:
    """A vertex row before any event about it: queued, never run."""
    return {
        "build_ref": build_ref,
        "vertex": vertex,
        "name": name,
        "status": "queued",
        "worker": "",
        "runs": 0,
        "started_at": None,
        "ended_at": None,
        "duration_ms": None,
        "exit_code": None,
        "error": "",
    }


# One small function per event type, chosen by a dict lookup: this fold is the inner loop of a
# rebuild, and a chain of class patterns costs an isinstance per case.

Build = dict[str, Any]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _solve_requested(build: Build, stored: StoredEvent, event: Any) -> None:
    build.update(
        frontend=event.frontend, actor=stored.actor, trace_id=stored.trace_id, requested_at=stored.recorded_at
    )


def _solve_started(build: Build, stored: StoredEvent, event: Any) -> None:
    build.update(status="running", started_at=stored.recorded_at, vertices_total=event.vertex_count)


def _solve_completed(build: Build, stored: StoredEvent, event: Any) -> None:
    build.update(status="completed", ended_at=stored.recorded_at)


def _solve_failed(build: Build, stored: StoredEvent, event: Any) -> None:
    build.update(
        status="failed",
        ended_at=stored.recorded_at,
        error=event.error,
        error_vertex=event.vertex or "",
        exit_code=event.exit_code,
    )


def _solve_cancelled(build: Build, stored: StoredEvent, event: Any) -> None:
    build.update(status="cancelled", ended_at=stored.recorded_at, error=event.reason)


def _vertex_started(build: Build, row: Build, stored: StoredEvent, event: Any) -> None:
    if row["status"] == "cached":
        # Taken from an imported record whose layers then failed their check when read: it runs.
        build["vertices_cached"] -= 1
    # A new attempt (after an interruption) starts clean.
    row.update(
        status="running",
        worker=event.worker,
        runs=row["runs"] + 1,
        started_at=stored.recorded_at,
        ended_at=None,
        duration_ms=None,
        exit_code=None,
        error="",
    )
    row["name"] = event.name or row["name"]


def _vertex_cached(build: Build, row: Build, stored: StoredEvent, event: Any) -> None:
    row.update(status="cached", ended_at=stored.recorded_at)
    row["name"] = event.name or row["name"]
    build["vertices_cached"] += 1


def _vertex_completed(build: Build, row: Build, stored: StoredEvent, event: Any) -> None:
    row.update(
        status="completed",
        ended_at=stored.recorded_at,
        duration_ms=event.duration_ms,
        exit_code=event.exit_code,
    )
    row["worker"] = event.worker or row["worker"]
    build["vertices_completed"] += 1


def _vertex_failed(build: Build, row: Build, stored: StoredEvent, event: Any) -> None:
    row.update(
        status="failed",
        ended_at=stored.recorded_at,
        duration_ms=event.duration_ms,
        exit_code=event.exit_code,
        error=event.error,
    )
    build["vertices_failed"] += 1


def _vertex_interrupted(build: Build, row: Build, stored: StoredEvent, event: Any) -> None:
    row.update(status="interrupted", ended_at=stored.recorded_at, error=event.reason)
    build["vertices_interrupted"] += 1


def _history_pinned(build: Build, event: Any) -> None:
    build["pinned"] = event.pinned


def _history_deleted(build: Build, event: Any) -> None:
    build.update(deleted=True, pinned=False)


HISTORY_STEPS: dict[str, Callable[[Build, Any], None]] = {
    ev.BuildHistoryPinned.type_name: _history_pinned,
    ev.BuildHistoryDeleted.type_name: _history_deleted,
}
SOLVE_STEPS: dict[str, Callable[[Build, StoredEvent, Any], None]] = {
    ev.SolveRequested.type_name: _solve_requested,
    ev.SolveStarted.type_name: _solve_started,
    ev.SolveCompleted.type_name: _solve_completed,
    ev.SolveFailed.type_name: _solve_failed,
    ev.SolveCancelled.type_name: _solve_cancelled,
}
VERTEX_STEPS: dict[str, Callable[[Build, Build, StoredEvent, Any], None]] = {
    ev.VertexStarted.type_name: _vertex_started,
    ev.VertexCached.type_name: _vertex_cached,
    ev.VertexCompleted.type_name: _vertex_completed,
    ev.VertexFailed.type_name: _vertex_failed,
    ev.VertexInterrupted.type_name: _vertex_interrupted,
}


def visible(row: Any) -> dict[str, Any]:
    """A build row as the reads give it (``deleted`` is the projection's own bookkeeping)."""
    found = dict(row)
    del found["deleted"]
    return found


def fold_build(events: Iterable[StoredEvent], build_ref: str) -> dict[str, Any] | None:
    """What :func:`buildsvc.projections.builds.get_build` reads, folded from events alone (the
    build's ``build-<ref>`` and ``history-<ref>`` streams, in log order): for a client that gets the
    events from a daemon.

    The same steps as the projection's, so the two agree row for row.
    """
    build: Build | None = None
    vertices: dict[str, Build] = {}
    for stored in events:
        if stored.type not in EVENT_TYPES:
            continue
        event: Any = stored.decode()
        if event.build_ref != build_ref:
            continue
        if build is None:
            build = new_build(stored, build_ref)
        if build["deleted"]:
            continue
        if stored.type in HISTORY_TYPES:
            HISTORY_STEPS[stored.type](build, event)
            continue
        build["last_position"] = stored.position
        if stored.type in VERTEX_TYPES:
            row = vertices.get(event.vertex)
            if row is None:
                row = vertices[event.vertex] = new_vertex((build_ref, event.vertex), event)
            VERTEX_STEPS[stored.type](build, row, stored, event)
        else:
            SOLVE_STEPS[stored.type](build, stored, event)
    if build is None or build["deleted"]:
        return None
    # As get_build orders them: started ones by their start, then the rest, each by digest.
    ordered = sorted(
        vertices.values(),
        key=lambda v: (v["started_at"] is None, v["started_at"] or _EPOCH, v["vertex"]),
    )
    return visible(build) | {"vertices": ordered}
