"""Read models rebuilt from the event log: build history, refs and snapshots, leaks.

Each projection is a pure function of the log; :class:`ProjectionRunner` applies them exactly once
and rebuilds them, :class:`InlineProjections` applies the inline ones inside appends.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buildsvc.events.sql_store import SqlEventStore
    from buildsvc.projections.base import Projection
    from buildsvc.projections.builds import BuildHistoryProjection
    from buildsvc.projections.cache_index import CacheIndexProjection, SqlCacheIndex
    from buildsvc.projections.leak_records import LeakedRef, LeakReport, UnreferencedSnapshot
    from buildsvc.projections.refs import RefStateProjection, find_leaks
    from buildsvc.projections.runner import (
        InlineProjections,
        ProjectionRunner,
        ProjectionStatus,
        UnknownProjection,
    )

__all__ = [
    "BuildHistoryProjection",
    "CacheIndexProjection",
    "InlineProjections",
    "LeakReport",
    "LeakedRef",
    "Projection",
    "ProjectionRunner",
    "ProjectionStatus",
    "RefStateProjection",
    "SqlCacheIndex",
    "UnknownProjection",
    "UnreferencedSnapshot",
    "attach_projections",
    "default_projections",
    "find_leaks",
]

# The SQL projections (SQLAlchemy, ~0.25 s to import) load on first use, as in buildsvc.events: the
# pure folds beside them (build_rows, build_request, timeline, replay, provenance) are what a
# command reading a daemon's log needs, and importing one of them runs this package first.
_LAZY = {
    "Projection": "base",
    "BuildHistoryProjection": "builds",
    "CacheIndexProjection": "cache_index",
    "SqlCacheIndex": "cache_index",
    "LeakedRef": "leak_records",
    "LeakReport": "leak_records",
    "RefStateProjection": "refs",
    "UnreferencedSnapshot": "leak_records",
    "find_leaks": "refs",
    "InlineProjections": "runner",
    "ProjectionRunner": "runner",
    "ProjectionStatus": "runner",
    "UnknownProjection": "runner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"buildsvc.projections.{module}"), name)


def default_projections() -> list[Projection]:
    """Every projection buildsvc ships, in the order they are listed and rebuilt."""
    from buildsvc.projections.builds import BuildHistoryProjection
    from buildsvc.projections.cache_index import CacheIndexProjection
    from buildsvc.projections.refs import RefStateProjection

    return [BuildHistoryProjection(), RefStateProjection(), CacheIndexProjection()]


def attach_projections(
    store: SqlEventStore, projections: list[Projection] | None = None, **runner_options: object
) -> ProjectionRunner:
    """Wire projections to a store: inline ones run in appends, a runner catches up the rest."""
    from buildsvc.projections.runner import InlineProjections, ProjectionRunner

    chosen = projections if projections is not None else default_projections()
    runner = ProjectionRunner(store, chosen, **runner_options)  # type: ignore[arg-type]
    store.add_hook(InlineProjections(chosen))
    return runner
