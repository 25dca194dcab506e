"""Disk usage and pruning of cached results (``DiskUsage``/``Prune``, ``buildsvc du|prune``).

A cached result is a snapshot a cache record points at. :func:`prune` removes those whose only
holders are cache records: a snapshot a build, an export or a leaked ref holds is in use and stays.
What it may remove:

- without ``all``, the records of the newest build (per worker) are kept, so rebuilding what was
  built last stays cached; with ``all`` every unreferenced result goes;
- ``keep_duration`` keeps records younger than that many seconds (the time their
  ``CacheRecordAdded`` was recorded);
- ``filters``: ``worker=NAME``, ``build=REF`` (the build that made the record) and ``id=PREFIX``
  (of the snapshot id);
- a committed layer no record points at and nothing holds (a lower layer of a pulled image, say)
  goes with the last snapshot stacked on it, so nothing unreferenced is left behind.

The context store (``ROOT/contexts``: the local dirs builds were sent) is pruned with the same
options, of the manifests no build needs any more (:mod:`buildsvc.daemon.context_prune`).

A snapshot stays whenever something stays that needs it: a kept snapshot stacked on it, or a kept
snapshot that shares a cache key with it (a record's removal drops all its outputs). Removals go
through :meth:`Engine.remove_snapshot`, children before their parents; one it refuses (a solve took
the snapshot since prune looked) is skipped and reported.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.contexts.prune import context_usage
from buildsvc.contexts.store import ContextStore
from buildsvc.daemon.context_prune import prune_contexts
from buildsvc.daemon.engine import Engine
from buildsvc.daemon.errors import SnapshotInUse
from buildsvc.daemon.usage import FILTER_KEYS, ContextsPruned, ContextStoreUsage, PruneSkipped, UsageRecord
from buildsvc.errors import Conflict, InvalidInput, NotFound
from buildsvc.events.schema import events
from buildsvc.projections.schema import cache_records, refs, snapshots
from buildsvc.solver.recording import DAEMON_ACTOR

__all__ = [
    "FILTER_KEYS",
    "PruneReport",
    "PruneSkipped",
    "UsageRecord",
    "context_store_usage",
    "disk_usage",
    "prune",
    "usage_records",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneReport:
    """What a prune removed (children before parents) and what it had to leave."""

    removed: tuple[UsageRecord, ...]
    skipped: tuple[PruneSkipped, ...]
    contexts: ContextsPruned = field(default_factory=ContextsPruned)
    """What went from the context store."""

    @property
    def reclaimed_bytes(self) -> int:
        """The sizes of the removed snapshots and what the context store gave back, summed."""
        return sum(r.size_bytes for r in self.removed) + self.contexts.bytes_reclaimed


@dataclass(frozen=True, slots=True, kw_only=True)
class _Record:
    cache_key: str
    worker: str
    build_ref: str
    created_position: int
    recorded_at: datetime


def _held(conn: Connection) -> set[str]:
    """Snapshots an unreleased ref other than a cache record's holds."""
    query = sa.select(refs.c.snapshot_id).where(
        refs.c.released_position.is_(None), refs.c.holder_kind != "cache"
    )
    return set(conn.scalars(query.distinct()))


def _live(conn: Connection) -> dict[str, Any]:
    query = sa.select(snapshots).where(snapshots.c.state != "removed").order_by(snapshots.c.created_position)
    return {r.snapshot_id: r for r in conn.execute(query)}


def _records(conn: Connection) -> dict[str, list[_Record]]:
    query = sa.select(
        cache_records.c.cache_key,
        cache_records.c.worker,
        cache_records.c.snapshot_id,
        cache_records.c.build_ref,
        cache_records.c.created_position,
        events.c.recorded_at,
    ).join(events, events.c.position == cache_records.c.created_position)
    found: dict[str, list[_Record]] = defaultdict(list)
    for r in conn.execute(query):
        found[r.snapshot_id].append(
            _Record(
                cache_key=r.cache_key,
                worker=r.worker,
                build_ref=r.build_ref,
                created_position=r.created_position,
                recorded_at=r.recorded_at,
            )
        )
    return found


def usage_records(conn: Connection, *, holds: Callable[[str], bool] = lambda _: False) -> list[UsageRecord]:
    """Every snapshot not removed, oldest first (``holds``: whether a running solve uses one)."""
    live = _live(conn)
    held = _held(conn)
    records = _records(conn)
    stacked = {r.parent for r in live.values() if r.parent is not None}
    return [
        UsageRecord(
            snapshot_id=sid,
            worker=r.worker,
            snapshotter=r.snapshotter,
            parent=r.parent or "",
            kind=r.kind,
            state=r.state,
            size_bytes=r.size_bytes,
            active_refs=r.active_refs,
            in_use=sid in held or holds(sid),
            shared=sid in stacked,
            cache_keys=tuple(sorted({rec.cache_key for rec in records.get(sid, [])})),
        )
        for sid, r in live.items()
    ]


def disk_usage(engine: Engine) -> list[UsageRecord]:
    """The snapshots on the engine's workers, as the snapshots projection has them (kept inline)."""
    with engine.state.db.read() as conn:
        return usage_records(conn, holds=engine.solver.holds)


def context_store_usage(root: Path) -> ContextStoreUsage:
    """What the context store of a daemon (or embedded engine) root holds (``ROOT/contexts``)."""
    return context_usage(ContextStore.under(root))


def _check_filters(filters: Mapping[str, str]) -> None:
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise InvalidInput(f"unknown prune filter {', '.join(unknown)} (known: {', '.join(FILTER_KEYS)})")


def _depth(sid: str, live: Mapping[str, Any]) -> int:
    depth = 0
    parent = live[sid].parent
    while parent is not None and parent in live and depth < len(live):
        depth += 1
        parent = live[parent].parent
    return depth


def prune(
    engine: Engine,
    *,
    all: bool = False,  # BuildKit's name for it
    keep_duration: float | None = None,
    filters: Mapping[str, str] = {},  # never mutated
    actor: str = DAEMON_ACTOR,
) -> PruneReport:
    """Remove unreferenced cached results (see the module docstring); returns what went and what stayed.

    ``actor`` (who asked, recorded with every removal) is the daemon's own when it prunes by itself.
    """
    _check_filters(filters)
    if keep_duration is not None and keep_duration < 0:
        raise InvalidInput(f"keep-duration must not be negative, got {keep_duration}")
    cutoff = datetime.now(UTC) - timedelta(seconds=keep_duration) if keep_duration else None
    with engine.state.db.read() as conn:
        live = _live(conn)
        held = _held(conn)
        records = {sid: recs for sid, recs in _records(conn).items() if sid in live}
        created_at: dict[str, datetime] = {
            r.snapshot_id: r.recorded_at
            for r in conn.execute(
                sa.select(snapshots.c.snapshot_id, events.c.recorded_at)
                .join(events, events.c.position == snapshots.c.created_position)
                .where(snapshots.c.state != "removed")
            )
        }
    newest: dict[str, tuple[int, str]] = {}
    for recs in records.values():
        for rec in recs:
            if rec.worker not in newest or rec.created_position > newest[rec.worker][0]:
                newest[rec.worker] = (rec.created_position, rec.build_ref)
    kept_builds = set() if all else {(worker, ref) for worker, (_, ref) in newest.items()}

    def matches(sid: str) -> bool:
        row = live[sid]
        if "worker" in filters and row.worker != filters["worker"]:
            return False
        if "id" in filters and not sid.startswith(filters["id"]):
            return False
        return "build" not in filters or any(r.build_ref == filters["build"] for r in records.get(sid, []))

    def old_enough(moment: datetime | None) -> bool:
        return cutoff is None or (moment is not None and moment <= cutoff)

    def eligible(sid: str) -> bool:
        row = live[sid]
        recs = records.get(sid)
        if recs:
            # (``all`` is the parameter here: "no record is to be kept".)
            return not any(
                not old_enough(r.recorded_at) or (r.worker, r.build_ref) in kept_builds for r in recs
            )
        # A layer no record points at: only a committed one nothing but cache refs holds. Those
        # are orphans: their key's record now points at another snapshot (the step ran again), so
        # the cache can no longer hand this one out; remove_snapshot releases them with it.
        return row.state == "committed" and sid not in held and old_enough(created_at.get(sid))

    chosen = {sid for sid in live if matches(sid) and eligible(sid)}
    skipped: dict[str, str] = {sid: "in use" for sid in chosen if sid in held}
    chosen -= held
    key_snapshots: dict[str, set[str]] = defaultdict(set)
    for sid, recs in records.items():
        for rec in recs:
            key_snapshots[rec.cache_key].add(sid)
    # Whatever stays keeps what it needs: its parent layers and the snapshots of its cache keys.
    changed = True
    while changed:
        changed = False
        for sid, row in live.items():
            if sid not in chosen and row.parent in chosen:
                chosen.discard(row.parent)
                if sid in held or sid in skipped:
                    skipped[row.parent] = f"snapshot {sid} stacked on it is in use"
                changed = True
        for sids in key_snapshots.values():
            if sids & chosen and not sids <= chosen:
                chosen -= sids
                changed = True
    removed: list[UsageRecord] = []
    for sid in sorted(chosen, key=lambda s: (-_depth(s, live), live[s].created_position)):
        row = live[sid]
        try:
            engine.remove_snapshot(row.worker, sid, reason="prune", actor=actor)
        except (SnapshotInUse, NotFound, Conflict) as e:
            # Conflict: the snapshotter's own index refused (a child on disk the log does not
            # know); the snapshot stays and the prune goes on, saying why.
            skipped[sid] = str(e)
            continue
        removed.append(
            UsageRecord(
                snapshot_id=sid,
                worker=row.worker,
                snapshotter=row.snapshotter,
                parent=row.parent or "",
                kind=row.kind,
                state="removed",
                size_bytes=row.size_bytes,
                active_refs=0,
                cache_keys=tuple(sorted({r.cache_key for r in records.get(sid, [])})),
            )
        )
    contexts = prune_contexts(
        engine.state,
        ContextStore.under(engine.state.root),
        all=all,
        cutoff=cutoff,
        filters=filters,
        actor=actor,
    )
    if contexts.trees_removed:
        engine.solver.forget_files()
    return PruneReport(
        removed=tuple(removed),
        skipped=tuple(
            PruneSkipped(snapshot_id=sid, worker=live[sid].worker, reason=reason)
            for sid, reason in sorted(skipped.items(), key=lambda kv: live[kv[0]].created_position)
        ),
        contexts=contexts,
    )
