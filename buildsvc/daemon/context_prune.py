"""Which local contexts builds still need, and pruning the context store of the rest (with ``prune``).

A build names its manifests in the log: ``LocalContextReceived`` (and, recorded before that event
existed, a ``sha256:`` value in ``SolveRequested.local_dirs``). A manifest stays while any build
naming it (all read from the log, as the builds projection would fold it)

- is pinned in the history (``buildsvc history pin``);
- has not ended: it runs, or it was cut off by a restart and the daemon resumes it, making its dirs
  again from the store (:func:`buildsvc.daemon.recovery.locate_local_dirs`);
- was recorded within ``keep_duration`` seconds;
- is, without ``all``, the newest build that received contexts: rebuilding the same dir then sends
  only the files that changed (as prune keeps the newest build's cache records).

The store adds its own rule for manifests no event names yet (a client's ``Missing`` call stored one
whose Solve is still to come): a young file stays, see :mod:`buildsvc.contexts.prune`. With the
``build=REF`` filter only that build's manifests may go; the ``worker`` and ``id`` filters select
snapshots, so with either the store is left alone. A prune that removed anything records
``LocalContextsPruned`` in the ``contexts`` stream, with who asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.contexts.prune import ContextsPruned, prune_store
from buildsvc.contexts.store import ContextStore
from buildsvc.daemon.state import State
from buildsvc.events import catalog as ev
from buildsvc.events.schema import events

__all__ = ["CONTEXTS_STREAM", "prune_contexts"]

CONTEXTS_STREAM = "contexts"
"""Where ``LocalContextsPruned`` is recorded."""

_ENDS = frozenset({ev.SolveCompleted.type_name, ev.SolveFailed.type_name, ev.SolveCancelled.type_name})
_READ = (
    ev.LocalContextReceived.type_name,
    ev.SolveRequested.type_name,
    *sorted(_ENDS),
    ev.BuildHistoryPinned.type_name,
    ev.BuildHistoryDeleted.type_name,
)
"""What prune reads of the log: who names which manifest, which builds ended, which are pinned."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Naming:
    """One build naming one manifest, and when that was recorded."""

    build_ref: str
    manifest_digest: str
    position: int
    recorded_at: datetime


@dataclass(slots=True)
class _Builds:
    """The log's builds as prune sees them."""

    namings: list[_Naming] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)
    pinned: set[str] = field(default_factory=set)


def prune_contexts(
    state: State,
    store: ContextStore,
    *,
    all: bool,  # BuildKit's name for it
    cutoff: datetime | None,
    filters: Mapping[str, str],
    actor: str,
) -> ContextsPruned:
    """Remove the manifests no build needs (see the module docstring), their trees and the blobs
    only they named; ``cutoff``: builds recorded after it keep theirs (``keep_duration``).
    """
    if "worker" in filters or "id" in filters:
        return ContextsPruned()
    with state.db.read() as conn:
        builds = _read_builds(conn)
    keep = _needed_manifests(builds, all=all, cutoff=cutoff)
    candidates = None
    if "build" in filters:
        candidates = {n.manifest_digest for n in builds.namings if n.build_ref == filters["build"]}
    pruned = prune_store(store, keep=keep, candidates=candidates)
    if not pruned.empty:
        state.store.append(
            CONTEXTS_STREAM,
            [
                ev.LocalContextsPruned(
                    manifests=pruned.manifests,
                    blobs_removed=pruned.blobs_removed,
                    bytes_reclaimed=pruned.bytes_reclaimed,
                    trees_removed=pruned.trees_removed,
                )
            ],
            actor=actor,
        )
    return pruned


def _needed_manifests(builds: _Builds, *, all: bool, cutoff: datetime | None) -> set[str]:
    """The manifests a build still needs (see the module docstring)."""
    namings = builds.namings
    newest = max(namings, key=lambda n: n.position).build_ref if namings and not all else None

    def needed(n: _Naming) -> bool:
        return (
            n.build_ref in builds.pinned
            or n.build_ref not in builds.ended  # running, or to be resumed
            or (cutoff is not None and n.recorded_at > cutoff)
            or n.build_ref == newest
        )

    return {n.manifest_digest for n in namings if needed(n)}


def _read_builds(conn: Connection) -> _Builds:
    """Who names which manifest, which builds ended and which are pinned, from the log itself: the
    builds projection is folded behind the log (a pin just recorded would not count yet). One scan of
    the log by event type (it has no index on type: prune is rare), reading only the fields needed
    out of the payloads (a ``SolveRequested``'s definition stays in the database).
    """
    payload = events.c.payload
    query = (
        sa.select(
            events.c.position,
            events.c.type,
            events.c.recorded_at,
            payload["build_ref"].as_string().label("build_ref"),
            payload["manifest_digest"].as_string().label("manifest_digest"),
            payload["local_dirs"].label("local_dirs"),
            payload["pinned"].as_boolean().label("pinned"),
        )
        .where(events.c.type.in_(_READ))
        .order_by(events.c.position)
    )
    builds = _Builds()
    for row in conn.execute(query):
        _fold(builds, row)
    return builds


def _fold(builds: _Builds, row: Any) -> None:
    """Apply one event of ``_READ`` (in log order: the last pin wins)."""
    ref = row.build_ref
    if row.type in _ENDS:
        builds.ended.add(ref)
    elif row.type == ev.BuildHistoryPinned.type_name:
        if row.pinned is False:  # absent: the field's default, True
            builds.pinned.discard(ref)
        else:
            builds.pinned.add(ref)
    elif row.type == ev.BuildHistoryDeleted.type_name:
        builds.pinned.discard(ref)  # a deleted entry is unpinned, as in the builds projection
    elif row.type == ev.LocalContextReceived.type_name:
        builds.namings.append(_naming(row, row.manifest_digest))
    else:  # SolveRequested: manifests recorded as local dirs before LocalContextReceived existed
        for recorded in (row.local_dirs or {}).values():
            if isinstance(recorded, str) and recorded.startswith("sha256:"):
                builds.namings.append(_naming(row, recorded))


def _naming(row: Any, digest: str) -> _Naming:
    return _Naming(
        build_ref=row.build_ref, manifest_digest=digest, position=row.position, recorded_at=row.recorded_at
    )
