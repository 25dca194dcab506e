"""Refs and snapshots as the log says they are, and the leaks found from them.

A ref belongs to a holder whose life has a *scope*: refs held by a solve, one of its vertices, its
exports or a gateway job end with the build (``build:<ref>``, ended by SolveCompleted, SolveFailed
or SolveCancelled); refs held by a cache record end when the record is removed (``cache:<key>``);
refs held by a daemon end when it stops (``daemon:<id>``). A ref that is still unreleased after its
scope ended is a leak. A snapshot that is not removed and that no unreleased ref holds, directly or
through a child layer stacked on it, is unreferenced.

This projection is inline: the engine reads ref counts at once when it removes a snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent
from buildsvc.projections.leak_records import LeakedRef, LeakReport, UnreferencedSnapshot
from buildsvc.projections.rows import RowBuffer, flush_together, load_together
from buildsvc.projections.schema import ended_scopes, refs, snapshots

__all__ = [
    "OpenRef",
    "RefStateProjection",
    "SnapshotRow",
    "find_leaks",
    "live_children",
    "scope_of",
    "snapshot_row",
    "unreleased_refs",
]

_HANDLED = {
    ev.RefAcquired.type_name,
    ev.RefReleased.type_name,
    ev.SnapshotCreated.type_name,
    ev.SnapshotCommitted.type_name,
    ev.SnapshotRemoved.type_name,
    ev.SolveCompleted.type_name,
    ev.SolveFailed.type_name,
    ev.SolveCancelled.type_name,
    ev.CacheRecordRemoved.type_name,
    ev.DaemonStopped.type_name,
    ev.CacheRecordAdded.type_name,
    ev.DaemonStarted.type_name,
}


def scope_of(holder_kind: str, holder_id: str, build_ref: str) -> str:
    """What ends a holder's life (see the module docstring)."""
    if holder_kind == "cache":
        return f"cache:{holder_id}"
    if holder_kind == "daemon":
        return f"daemon:{holder_id}"
    return f"build:{build_ref or holder_id}"


def _reopened_scope(event: object) -> str | None:
    # A cache key recorded again, or a daemon id started again, is a live holder once more.
    match event:
        case ev.CacheRecordAdded(cache_key=key):
            return f"cache:{key}"
        case ev.DaemonStarted(daemon_id=daemon):
            return f"daemon:{daemon}"
    return None


def _ended_scope(event: object) -> str | None:
    match event:
        case ev.SolveCompleted(build_ref=r) | ev.SolveFailed(build_ref=r) | ev.SolveCancelled(build_ref=r):
            return f"build:{r}"
        case ev.CacheRecordRemoved(cache_key=key):
            return f"cache:{key}"
        case ev.DaemonStopped(daemon_id=daemon):
            return f"daemon:{daemon}"
    return None


class RefStateProjection:
    """Rows for every ref and snapshot, with ref counts and the positions that ended their holders."""

    name = "refs"
    tables: Sequence[sa.Table] = (refs, ended_scopes, snapshots)
    inline = True
    event_types = frozenset(_HANDLED)

    def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        """Fold a batch of events into the ref and snapshot rows."""
        relevant = [(s, s.decode()) for s in events if s.type in _HANDLED]
        if not relevant:
            return
        ref_rows = RowBuffer(conn, refs)
        scope_rows = RowBuffer(conn, ended_scopes)
        snap_rows = RowBuffer(conn, snapshots)
        load_together(
            [
                (ref_rows, [e.ref_id for _, e in relevant if isinstance(e, ev.RefAcquired | ev.RefReleased)]),
                (
                    snap_rows,
                    [getattr(e, "snapshot_id", None) for _, e in relevant]
                    + [
                        e.from_active
                        for _, e in relevant
                        if isinstance(e, ev.SnapshotCommitted) and e.from_active
                    ],
                ),
                (
                    scope_rows,
                    [
                        scope_of(e.holder_kind, e.holder_id, e.build_ref)
                        for _, e in relevant
                        if isinstance(e, ev.RefAcquired)
                    ]
                    + [s for _, e in relevant if (s := _ended_scope(e) or _reopened_scope(e)) is not None],
                ),
            ]
        )
        newly_ended: list[dict[str, Any]] = []
        for stored, event in relevant:
            match event:
                case ev.RefAcquired():
                    self._acquired(ref_rows, scope_rows, snap_rows, stored, event)
                case ev.RefReleased(ref_id=ref_id, reason=reason):
                    ref = ref_rows.get(ref_id)
                    if ref is not None and ref["released_position"] is None:
                        ref.update(released_position=stored.position, release_reason=reason)
                        ref_rows.changed(ref)
                        snap = snap_rows.get(ref["snapshot_id"])
                        if snap is not None:
                            snap["active_refs"] -= 1
                            snap_rows.changed(snap)
                case ev.SnapshotCreated():
                    self._snapshot(snap_rows, stored, event.snapshot_id, event)
                case ev.SnapshotCommitted(
                    snapshot_id=sid, size_bytes=size, from_active=active, parent=parent
                ):
                    snap = self._snapshot(snap_rows, stored, sid, None)
                    snap.update(state="committed", size_bytes=size)
                    if active:
                        # Committing consumes the active snapshot; the layer keeps its parent.
                        source = self._snapshot(snap_rows, stored, active, None)
                        source.update(state="removed", removed_position=stored.position)
                        snap_rows.changed(source)
                        snap.update(
                            worker=source["worker"], snapshotter=source["snapshotter"], kind="committed"
                        )
                        snap["parent"] = parent if parent is not None else source["parent"]
                    snap_rows.changed(snap)
                case ev.SnapshotRemoved(snapshot_id=sid):
                    snap = self._snapshot(snap_rows, stored, sid, None)
                    snap.update(state="removed", removed_position=stored.position)
                    snap_rows.changed(snap)
                case _:
                    scope = _ended_scope(event)
                    if scope is not None and scope_rows.get(scope) is None:
                        scope_rows.insert({"scope": scope, "position": stored.position})
                        newly_ended.append({"_scope": scope, "_position": stored.position})
                    reopened = _reopened_scope(event)
                    if reopened is not None:
                        scope_rows.delete(reopened)
        flush_together([ref_rows, scope_rows, snap_rows])
        # Refs acquired before their scope ended (in this batch or earlier) learn it here, in order, so
        # a scope that ended, was reopened and ended again marks each ref with the end that followed it.
        for ended in newly_ended:
            conn.execute(
                refs.update()
                .where(
                    refs.c.scope == ended["_scope"],
                    refs.c.holder_ended_position.is_(None),
                    refs.c.acquired_position < ended["_position"],
                )
                .values(holder_ended_position=ended["_position"])
            )

    @staticmethod
    def _acquired(
        ref_rows: RowBuffer,
        scope_rows: RowBuffer,
        snap_rows: RowBuffer,
        stored: StoredEvent,
        event: ev.RefAcquired,
    ) -> None:
        if ref_rows.get(event.ref_id) is not None:
            return  # acquiring the same ref twice is not a second hold
        scope = scope_of(event.holder_kind, event.holder_id, event.build_ref)
        ended = scope_rows.get(scope)
        ref_rows.insert(
            {
                "ref_id": event.ref_id,
                "snapshot_id": event.snapshot_id,
                "holder_kind": event.holder_kind,
                "holder_id": event.holder_id,
                "build_ref": event.build_ref,
                "scope": scope,
                "acquired_position": stored.position,
                "released_position": None,
                "release_reason": "",
                "holder_ended_position": ended["position"] if ended is not None else None,
            }
        )
        snap = RefStateProjection._snapshot(snap_rows, stored, event.snapshot_id, None)
        snap["active_refs"] += 1
        snap_rows.changed(snap)

    @staticmethod
    def _snapshot(
        rows: RowBuffer, stored: StoredEvent, snapshot_id: str, created: ev.SnapshotCreated | None
    ) -> dict[str, Any]:
        snap = rows.get(snapshot_id)
        if snap is None:
            snap = rows.insert(
                {
                    "snapshot_id": snapshot_id,
                    "worker": "",
                    "snapshotter": "",
                    "parent": None,
                    "kind": "active",
                    "state": "created",
                    "size_bytes": 0,
                    "active_refs": 0,
                    "created_position": stored.position,
                    "removed_position": None,
                }
            )
        if created is not None:
            snap.update(
                worker=created.worker,
                snapshotter=created.snapshotter,
                parent=created.parent,
                kind=created.kind,
            )
            rows.changed(snap)
        return snap


# --- the leak report (its records are in leak_records.py) ----------------------------------------


def find_leaks(conn: Connection, *, build_ref: str | None = None) -> LeakReport:
    """Leaked refs (optionally of one build) and unreferenced snapshots, from the projection's rows."""
    query = sa.select(refs).where(
        refs.c.released_position.is_(None), refs.c.holder_ended_position.is_not(None)
    )
    if build_ref is not None:
        query = query.where(refs.c.build_ref == build_ref)
    leaked = tuple(
        LeakedRef(
            ref_id=r.ref_id,
            snapshot_id=r.snapshot_id,
            holder_kind=r.holder_kind,
            holder_id=r.holder_id,
            build_ref=r.build_ref,
            acquired_position=r.acquired_position,
            holder_ended_position=r.holder_ended_position,
        )
        for r in conn.execute(query.order_by(refs.c.acquired_position))
    )
    live = {
        r.snapshot_id: r for r in conn.execute(sa.select(snapshots).where(snapshots.c.state != "removed"))
    }
    held = {sid for sid, r in live.items() if r.active_refs > 0}
    # A layer under a held snapshot is in use through it.
    frontier = list(held)
    while frontier:
        parent = live[frontier.pop()].parent
        if parent is not None and parent in live and parent not in held:
            held.add(parent)
            frontier.append(parent)
    orphans = tuple(
        UnreferencedSnapshot(
            snapshot_id=r.snapshot_id,
            worker=r.worker,
            state=r.state,
            size_bytes=r.size_bytes,
            created_position=r.created_position,
        )
        for sid, r in sorted(live.items(), key=lambda kv: kv[1].created_position)
        if sid not in held and build_ref is None
    )
    return LeakReport(refs=leaked, snapshots=orphans)


# --- what holds one snapshot (read when a snapshot is to be removed) -------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenRef:
    """A ref acquired and not released yet; ``holder_ended`` when its holder's scope is over (a leak)."""

    ref_id: str
    snapshot_id: str
    holder_kind: str
    holder_id: str
    build_ref: str
    holder_ended: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRow:
    """One snapshot as the log says it is."""

    snapshot_id: str
    worker: str
    parent: str | None
    kind: str
    state: str
    """``created``, ``committed`` or ``removed``."""
    size_bytes: int


def _open_refs(conn: Connection, *conditions: sa.ColumnElement[bool]) -> tuple[OpenRef, ...]:
    query = sa.select(refs).where(refs.c.released_position.is_(None), *conditions)
    return tuple(
        OpenRef(
            ref_id=r.ref_id,
            snapshot_id=r.snapshot_id,
            holder_kind=r.holder_kind,
            holder_id=r.holder_id,
            build_ref=r.build_ref,
            holder_ended=r.holder_ended_position is not None,
        )
        for r in conn.execute(query.order_by(refs.c.acquired_position))
    )


def unreleased_refs(
    conn: Connection, snapshot_id: str | None = None, *, holder: tuple[str, str] | None = None
) -> tuple[OpenRef, ...]:
    """Refs not released yet on ``snapshot_id`` and/or held by ``holder`` (kind, id), oldest first."""
    if snapshot_id is None and holder is None:
        raise ValueError("unreleased_refs needs a snapshot id or a holder")
    conditions: list[sa.ColumnElement[bool]] = []
    if snapshot_id is not None:
        conditions.append(refs.c.snapshot_id == snapshot_id)
    if holder is not None:
        conditions += [refs.c.holder_kind == holder[0], refs.c.holder_id == holder[1]]
    return _open_refs(conn, *conditions)


def snapshot_row(conn: Connection, snapshot_id: str) -> SnapshotRow | None:
    """The snapshot's row (also once removed), or None when the log never mentioned it."""
    r = conn.execute(sa.select(snapshots).where(snapshots.c.snapshot_id == snapshot_id)).first()
    if r is None:
        return None
    return SnapshotRow(
        snapshot_id=r.snapshot_id,
        worker=r.worker,
        parent=r.parent,
        kind=r.kind,
        state=r.state,
        size_bytes=r.size_bytes,
    )


def live_children(conn: Connection, snapshot_id: str) -> tuple[SnapshotRow, ...]:
    """Snapshots not removed whose parent is ``snapshot_id`` (layers, views, active snapshots on it)."""
    query = sa.select(snapshots).where(snapshots.c.parent == snapshot_id, snapshots.c.state != "removed")
    return tuple(
        SnapshotRow(
            snapshot_id=r.snapshot_id,
            worker=r.worker,
            parent=r.parent,
            kind=r.kind,
            state=r.state,
            size_bytes=r.size_bytes,
        )
        for r in conn.execute(query.order_by(snapshots.c.created_position))
    )
