"""The build history: one row per solve and one per vertex of it, from solve and vertex events.

``BuildHistoryPinned`` sets a build's ``pinned``; ``BuildHistoryDeleted`` marks its row deleted, and
the reads (:func:`list_builds`, :func:`get_build`) no longer see it. The row stays so that any event
of the build recorded after the deletion changes nothing (the events themselves stay in the log).
How the events fold into the rows is :mod:`buildsvc.projections.build_rows`'s (no SQL there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.events.envelope import StoredEvent
from buildsvc.projections.build_rows import (
    EVENT_TYPES,
    HISTORY_STEPS,
    HISTORY_TYPES,
    SOLVE_STEPS,
    VERTEX_STEPS,
    VERTEX_TYPES,
    new_build,
    new_vertex,
    visible,
)
from buildsvc.projections.rows import RowBuffer
from buildsvc.projections.schema import build_vertices, builds

__all__ = ["BuildHistoryProjection", "get_build", "list_builds"]


class BuildHistoryProjection:
    """Per build: status, times, vertex counts, cached counts, the error; per vertex: its runs."""

    name = "builds"
    tables: Sequence[sa.Table] = (builds, build_vertices)
    inline = False
    event_types = EVENT_TYPES

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
            if stored.type in HISTORY_TYPES:
                HISTORY_STEPS[stored.type](build, event)
                continue
            build["last_position"] = stored.position
            if stored.type in VERTEX_TYPES:
                key = (ref, event.vertex)  # type: ignore[attr-defined]
                row = touched_vertices.get(key)
                if row is None:
                    row = touched_vertices[key] = _vertex_row(vertex_rows, key, event)
                VERTEX_STEPS[stored.type](build, row, stored, event)
            else:
                SOLVE_STEPS[stored.type](build, stored, event)
        for build in touched_builds.values():
            build_rows.changed(build)
        for row in touched_vertices.values():
            vertex_rows.changed(row)
        build_rows.flush()
        vertex_rows.flush()


def _build_row(rows: RowBuffer, stored: StoredEvent, build_ref: str) -> dict[str, Any]:
    row = rows.get(build_ref)
    if row is None:
        row = rows.insert(new_build(stored, build_ref))
    return row


def _vertex_row(rows: RowBuffer, key: tuple[str, str], event: Any) -> dict[str, Any]:
    row = rows.get(key)
    if row is None:
        row = rows.insert(new_vertex(key, event))
    return row


# --- reading the history ---------------------------------------------------------------------------


def list_builds(conn: Connection, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest builds first."""
    query = (
        sa.select(builds)
        .where(builds.c.deleted.is_(False))
        .order_by(builds.c.first_position.desc())
        .limit(limit)
    )
    return [visible(r) for r in conn.execute(query).mappings()]


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
    return visible(row) | {"vertices": [dict(v) for v in vertices]}
