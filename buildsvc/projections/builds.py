"""The build history: one row per solve and one per vertex of it, from solve and vertex events.

``BuildHistoryPinned`` sets a build's ``pinned``; ``BuildHistoryDeleted`` marks its row deleted, and
the reads (:func:`list_builds`, :func:`get_build`) no longer see it. The row stays so that any event
of the build recorded after the deletion changes nothing (the events themselves stay in the log).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent
from buildsvc.projections.rows import RowBuffer
from buildsvc.projections.schema import build_vertices, builds

__all__ = ["BuildHistoryProjection", "fold_build", "get_build", "list_builds", "queued_vertex"]

_SOLVE_TYPES = {
    ev.SolveRequested.type_name,
    ev.SolveStarted.type_name,
    ev.SolveCompleted.type_name,
    ev.SolveFailed.type_name,
    ev.SolveCancelled.type_name,
}
_HISTORY_TYPES = {ev.BuildHistoryPinned.type_name, ev.BuildHistoryDeleted.type_name}
_VERTEX_TYPES = {
    ev.VertexStarted.type_name,
    ev.VertexCached.type_name,
    ev.VertexCompleted.type_name,
    ev.VertexFailed.type_name,
    ev.VertexInterrupted.type_name,
}


class BuildHistoryProjection:
    """Per build: status, times, vertex counts, cached counts, the error; per vertex: its runs."""

    name = "builds"
    tables: Sequence[sa.Table] = (builds, build_vertices)
    inline = False
    event_types = frozenset(_SOLVE_TYPES | _VERTEX_TYPES | _HISTORY_TYPES)

    def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        """Fold a batch of events into the build rows."""
        relevant = [(s, s.decode()) for s in events if s.type in self.event_types]
        if not relevant:
            return
        build_rows = RowBuffer(conn, builds)
        vertex_rows = RowBuffer(conn, build_vertices)
        refs = {e.build_ref for _, e in relevant}  # type: ignore[attr-defined]
        build_rows.load(refs)
        vertex_rows.load_by_first(refs)
        touched_builds: dict[str, dict[str, Any]] = {}
        touched_vertices: dict[tuple[str, str], dict[str, Any]] = {}
        for stored, event in relevant:
            ref = event.build_ref  # type: ignore[attr-defined]
            build = touched_builds.get(ref)
            if build is None:
                build = touched_builds[ref] = _build_row(build_rows, stored, ref)
            if build["deleted"]:
                continue
            if stored.type in _HISTORY_TYPES:
                _HISTORY_STEPS[stored.type](build, event)
                continue
            build["last_position"] = stored.position
            if stored.type in _VERTEX_TYPES:
                key = (ref, event.vertex)  # type: ignore[attr-defined]
                row = touched_vertices.get(key)
                if row is None:
                    row = touched_vertices[key] = _vertex_row(vertex_rows, key, event)
                _VERTEX_STEPS[stored.type](build, row, stored, event)
            else:
                _SOLVE_STEPS[stored.type](build, stored, event)
        for build in touched_builds.values():
            build_rows.changed(build)
        for row in touched_vertices.values():
            vertex_rows.changed(row)
        build_rows.flush()
        vertex_rows.flush()


def _build_row(rows: RowBuffer, stored: StoredEvent, build_ref: str) -> dict[str, Any]:
    row = rows.get(build_ref)
    if row is None:
        row = rows.insert(_new_build(stored, build_ref))
    return row


def _new_build(stored: StoredEvent, build_ref: str) -> dict[str, Any]:
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


def _vertex_row(rows: RowBuffer, key: tuple[str, str], event: Any) -> dict[str, Any]:
    row = rows.get(key)
    if row is None:
        row = rows.insert(_new_vertex(key, event))
    return row


def _new_vertex(key: tuple[str, str], event: Any) -> dict[str, Any]:
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


_HISTORY_STEPS: dict[str, Callable[[Build, Any], None]] = {
    ev.BuildHistoryPinned.type_name: _history_pinned,
    ev.BuildHistoryDeleted.type_name: _history_deleted,
}
_SOLVE_STEPS: dict[str, Callable[[Build, StoredEvent, Any], None]] = {
    ev.SolveRequested.type_name: _solve_requested,
    ev.SolveStarted.type_name: _solve_started,
    ev.SolveCompleted.type_name: _solve_completed,
    ev.SolveFailed.type_name: _solve_failed,
    ev.SolveCancelled.type_name: _solve_cancelled,
}
_VERTEX_STEPS: dict[str, Callable[[Build, Build, StoredEvent, Any], None]] = {
    ev.VertexStarted.type_name: _vertex_started,
    ev.VertexCached.type_name: _vertex_cached,
    ev.VertexCompleted.type_name: _vertex_completed,
    ev.VertexFailed.type_name: _vertex_failed,
    ev.VertexInterrupted.type_name: _vertex_interrupted,
}


# --- reading the history ---------------------------------------------------------------------------


def list_builds(conn: Connection, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest builds first."""
    query = (
        sa.select(builds)
        .where(builds.c.deleted.is_(False))
        .order_by(builds.c.first_position.desc())
        .limit(limit)
    )
    return [_visible(r) for r in conn.execute(query).mappings()]


def _visible(row: Any) -> dict[str, Any]:
    found = dict(row)
    del found["deleted"]
    return found


def get_build(conn: Connection, build_ref: str) -> dict[str, Any] | None:
    """One build's row with its vertices (in the order they were first seen), or None."""
    row = conn.execute(sa.select(builds).where(builds.c.build_ref == build_ref)).mappings().first()
    if row is None or row["deleted"]:
        return None
    vertices = conn.execute(
        sa.select(build_vertices)
        .where(build_vertices.c.build_ref == build_ref)
        .order_by(build_vertices.c.started_at.is_(None), build_vertices.c.started_at, build_vertices.c.vertex)
    ).mappings()
    return _visible(row) | {"vertices": [dict(v) for v in vertices]}


def fold_build(events: Iterable[StoredEvent], build_ref: str) -> dict[str, Any] | None:
    """What :func:`get_build` reads, folded from events alone (the build's ``build-<ref>`` and
    ``history-<ref>`` streams, in log order): for a client that gets the events from a daemon.

    The same steps as the projection's, so the two agree row for row.
    """
    build: Build | None = None
    vertices: dict[str, Build] = {}
    types = BuildHistoryProjection.event_types
    for stored in events:
        if stored.type not in types:
            continue
        event: Any = stored.decode()
        if event.build_ref != build_ref:
            continue
        if build is None:
            build = _new_build(stored, build_ref)
        if build["deleted"]:
            continue
        if stored.type in _HISTORY_TYPES:
            _HISTORY_STEPS[stored.type](build, event)
            continue
        build["last_position"] = stored.position
        if stored.type in _VERTEX_TYPES:
            row = vertices.get(event.vertex)
            if row is None:
                row = vertices[event.vertex] = _new_vertex((build_ref, event.vertex), event)
            _VERTEX_STEPS[stored.type](build, row, stored, event)
        else:
            _SOLVE_STEPS[stored.type](build, stored, event)
    if build is None or build["deleted"]:
        return None
    # As get_build orders them: started ones by their start, then the rest, each by digest.
    ordered = sorted(
        vertices.values(),
        key=lambda v: (v["started_at"] is None, v["started_at"] or _EPOCH, v["vertex"]),
    )
    return _visible(build) | {"vertices": ordered}
