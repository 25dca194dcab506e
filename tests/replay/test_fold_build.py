"""``fold_build`` (what a remote ``history inspect`` folds from ``BuildEvents``) gives the rows the
builds projection holds, for every build of every recorded history, on every backend."""

from __future__ import annotations

import heapq
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from buildsvc.events.sql_store import SqlEventStore
from buildsvc.projections import attach_projections
from buildsvc.projections.build_rows import fold_build
from buildsvc.projections.builds import get_build
from buildsvc.projections.schema import builds
from tests.replay.history import history_paths, load_history


def _plain(value: Any) -> Any:
    # SQLite gives back naive UTC times; the events carry aware ones.
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in history_paths()])
def test_folding_a_builds_events_gives_the_projections_row(path: Path, store: SqlEventStore) -> None:
    history = load_history(path)
    runner = attach_projections(store)
    for recorded in history.events:
        store.append(
            recorded.stream, [recorded.to_new_event()], actor=recorded.actor, trace_id=recorded.trace_id
        )
    runner.run_once()
    with store.db.read() as conn:
        refs = list(conn.scalars(builds.select().with_only_columns(builds.c.build_ref)))
        projected = {ref: get_build(conn, ref) for ref in refs}
    # Every history but the one of a daemon with no build has builds to compare.
    assert refs or not any(r.stream.startswith("build-") for r in history.events)
    for ref in refs:
        events = heapq.merge(
            store.read_stream(f"build-{ref}"), store.read_stream(f"history-{ref}"), key=lambda s: s.position
        )
        assert _plain(fold_build(events, ref)) == _plain(projected[ref]), ref
