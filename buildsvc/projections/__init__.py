"""Read models rebuilt from the event log: build history, refs and snapshots, leaks.

Each projection is a pure function of the log; :class:`ProjectionRunner` applies them exactly once
and rebuilds them, :class:`InlineProjections` applies the inline ones inside appends.
"""

from __future__ import annotations

from buildsvc.events.sql_store import SqlEventStore
from buildsvc.projections.base import Projection
from buildsvc.projections.builds import BuildHistoryProjection
from buildsvc.projections.cache_index import CacheIndexProjection, SqlCacheIndex
from buildsvc.projections.refs import (
    LeakedRef,
    LeakReport,
    RefStateProjection,
    UnreferencedSnapshot,
    find_leaks,
)
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


def default_projections() -> list[Projection]:
    """Every projection buildsvc ships, in the order they are listed and rebuilt."""
    return [BuildHistoryProjection(), RefStateProjection(), CacheIndexProjection()]


def attach_projections(
    store: SqlEventStore, projections: list[Projection] | None = None, **runner_options: object
) -> ProjectionRunner:
    """Wire projections to a store: inline ones run in appends, a runner catches up the rest."""
    chosen = projections if projections is not None else default_projections()
    runner = ProjectionRunner(store, chosen, **runner_options)  # type: ignore[arg-type]
    store.add_hook(InlineProjections(chosen))
    return runner
