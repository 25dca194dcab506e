"""The build history: one row per solve and one per vertex of it, from solve and vertex events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent
from buildsvc.projections.rows import RowBuffer
from buildsvc.projections.schema import build_vertices, builds

__all__ = ["BuildHistoryProjection", "get_build", "list_builds"]

_SOLVE_TYPES = {
    ev.SolveRequested.type_name,
    ev.SolveStarted.type_name,
    ev.SolveCompleted.type_name,
    ev.SolveFailed.type_name,
    ev.SolveCancelled.type_name,
}
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
    event_types = frozenset(_SOLVE_TYPES | _VERTEX_TYPES)

    def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        """Fold a batch of events into the build rows."""
        relevant = [(s, s.decode()) for s in events if s.type in _SOLVE_TYPES or s.type in _VERTEX_TYPES]
        if not relevant:
            return
        build_rows = RowBuffer(conn, builds)
        vertex_rows = RowBuffer(conn, build_vertices)
        build_rows.load({e.build_ref for _, e in relevant})  # type: ignore[attr-defined]
        vertex_rows.load({(e.build_ref, e.vertex) for s, e in relevant if s.type in _VERTEX_TYPES})  # type: ignore[attr-defined]
        for stored, event in relevant:
            build = self._build(build_rows, stored, event.build_ref)  # type: ignore[attr-defined]
            build["last_position"] = stored.position
            if stored.type in _VERTEX_TYPES:
                self._apply_vertex(build, vertex_rows, stored, event)
            else:
                self._apply_solve(build, stored, event)
            build_rows.changed(build)
        build_rows.flush()
        vertex_rows.flush()

    @staticmethod
    def _build(rows: RowBuffer, stored: StoredEvent, build_ref: str) -> dict[str, Any]:
        row = rows.get(build_ref)
        if row is None:
            row = rows.insert(
                {
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
                }
            )
        return row

    @staticmethod
    def _apply_solve(build: dict[str, Any], stored: StoredEvent, event: object) -> None:
        match event:
            case ev.SolveRequested(frontend=frontend):
                build["frontend"] = frontend
                build["actor"] = stored.actor
                build["trace_id"] = stored.trace_id
                build["requested_at"] = stored.recorded_at
            case ev.SolveStarted(vertex_count=count):
                build["status"] = "running"
                build["started_at"] = stored.recorded_at
                build["vertices_total"] = count
            case ev.SolveCompleted():
                build["status"] = "completed"
                build["ended_at"] = stored.recorded_at
            case ev.SolveFailed(error=error, vertex=vertex, exit_code=exit_code):
                build["status"] = "failed"
                build["ended_at"] = stored.recorded_at
                build["error"] = error
                build["error_vertex"] = vertex or ""
                build["exit_code"] = exit_code
            case ev.SolveCancelled(reason=reason):
                build["status"] = "cancelled"
                build["ended_at"] = stored.recorded_at
                build["error"] = reason

    @staticmethod
    def _apply_vertex(build: dict[str, Any], rows: RowBuffer, stored: StoredEvent, event: Any) -> None:
        key = (event.build_ref, event.vertex)
        row = rows.get(key)
        if row is None:
            row = rows.insert(
                {
                    "build_ref": event.build_ref,
                    "vertex": event.vertex,
                    "name": getattr(event, "name", ""),
                    "status": "queued",
                    "worker": "",
                    "runs": 0,
                    "started_at": None,
                    "ended_at": None,
                    "duration_ms": None,
                    "exit_code": None,
                    "error": "",
                }
            )
        match event:
            case ev.VertexStarted(name=name, worker=worker):
                # A new attempt (after an interruption) starts clean.
                row.update(
                    status="running",
                    worker=worker,
                    runs=row["runs"] + 1,
                    started_at=stored.recorded_at,
                    ended_at=None,
                    duration_ms=None,
                    exit_code=None,
                    error="",
                )
                row["name"] = name or row["name"]
            case ev.VertexCached(name=name):
                row.update(status="cached", ended_at=stored.recorded_at)
                row["name"] = name or row["name"]
                build["vertices_cached"] += 1
            case ev.VertexCompleted(worker=worker, duration_ms=duration, exit_code=exit_code):
                row.update(
                    status="completed", ended_at=stored.recorded_at, duration_ms=duration, exit_code=exit_code
                )
                row["worker"] = worker or row["worker"]
                build["vertices_completed"] += 1
            case ev.VertexFailed(error=error, duration_ms=duration, exit_code=exit_code):
                row.update(
                    status="failed",
                    ended_at=stored.recorded_at,
                    duration_ms=duration,
                    exit_code=exit_code,
                    error=error,
                )
                build["vertices_failed"] += 1
            case ev.VertexInterrupted(reason=reason):
                row.update(status="interrupted", ended_at=stored.recorded_at, error=reason)
                build["vertices_interrupted"] += 1
        rows.changed(row)


# --- reading the history ---------------------------------------------------------------------------


def list_builds(conn: Connection, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest builds first."""
    query = sa.select(builds).order_by(builds.c.first_position.desc()).limit(limit)
    return [dict(r) for r in conn.execute(query).mappings()]


def get_build(conn: Connection, build_ref: str) -> dict[str, Any] | None:
    """One build's row with its vertices (in the order they were first seen), or None."""
    row = conn.execute(sa.select(builds).where(builds.c.build_ref == build_ref)).mappings().first()
    if row is None:
        return None
    vertices = conn.execute(
        sa.select(build_vertices)
        .where(build_vertices.c.build_ref == build_ref)
        .order_by(build_vertices.c.started_at.is_(None), build_vertices.c.started_at, build_vertices.c.vertex)
    ).mappings()
    return dict(row) | {"vertices": [dict(v) for v in vertices]}
