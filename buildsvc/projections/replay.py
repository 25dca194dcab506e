"""The state of one build and of the daemon at a moment in the log, rebuilt from events alone.

:func:`replay` folds the global log, in order, up to a cut (a position or a time): the build's own
events give its vertices (queued, running, completed, cached, failed, interrupted) with their
times, workers and runs; every event up to the cut gives the daemon's refs still held (and by
whom), the snapshots that existed and the cache records. It is a pure function of the events it is
given, so the same cut of the same log always gives the same state, years later.

Only events of the types below are decoded: a cut deep into a large log costs a type check per
event and a decode per relevant one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent

__all__ = [
    "CacheRecordState",
    "Cut",
    "HeldRefState",
    "ReplayState",
    "SnapshotState",
    "VertexState",
    "replay",
]

_BUILD_TYPES = frozenset(
    t.type_name
    for t in (
        ev.SolveRequested,
        ev.SolveStarted,
        ev.SolveCompleted,
        ev.SolveFailed,
        ev.SolveCancelled,
        ev.VertexStarted,
        ev.VertexCached,
        ev.VertexCompleted,
        ev.VertexFailed,
        ev.VertexInterrupted,
    )
)
_DAEMON_TYPES = frozenset(
    t.type_name
    for t in (
        ev.RefAcquired,
        ev.RefReleased,
        ev.SnapshotCreated,
        ev.SnapshotCommitted,
        ev.SnapshotRemoved,
        ev.CacheRecordAdded,
        ev.CacheRecordRemoved,
    )
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Cut:
    """Where to stop: after global ``position``, or after the last event recorded at or before ``at``.

    Neither: the whole of what is given.
    """

    position: int | None = None
    at: datetime | None = None

    def passed(self, stored: StoredEvent) -> bool:
        """Whether ``stored`` lies after the cut."""
        if self.position is not None and stored.position > self.position:
            return True
        return self.at is not None and stored.recorded_at > self.at


@dataclass(slots=True, kw_only=True)
class VertexState:
    """One vertex of the build at the cut."""

    vertex: str
    name: str = ""
    status: str = "queued"
    """``queued``, ``running``, ``completed``, ``cached``, ``failed`` or ``interrupted``."""
    worker: str = ""
    runs: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    error: str = ""
    snapshot_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldRefState:
    """A ref acquired and not released at the cut."""

    ref_id: str
    snapshot_id: str
    holder_kind: str
    holder_id: str
    build_ref: str
    acquired_position: int


@dataclass(slots=True, kw_only=True)
class SnapshotState:
    """A snapshot that existed at the cut."""

    snapshot_id: str
    worker: str = ""
    parent: str | None = None
    kind: str = "active"
    state: str = "created"
    size_bytes: int = 0
    created_position: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRecordState:
    """A cache record that existed at the cut."""

    cache_key: str
    vertex: str
    snapshot_id: str
    build_ref: str
    worker: str
    added_position: int


@dataclass(slots=True, kw_only=True)
class ReplayState:
    """A build and the daemon around it at one moment."""

    build_ref: str
    position: int = 0
    """The global position of the last event folded in (0: none)."""
    at: datetime | None = None
    """When that event was recorded."""
    status: str = "unknown"
    """``requested``, ``running``, ``completed``, ``failed``, ``cancelled`` (``unknown`` before any)."""
    frontend: str = ""
    actor: str = ""
    requested_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str = ""
    vertices: dict[str, VertexState] = field(default_factory=dict)
    refs: dict[str, HeldRefState] = field(default_factory=dict)
    snapshots: dict[str, SnapshotState] = field(default_factory=dict)
    cache_records: dict[str, CacheRecordState] = field(default_factory=dict)
    events_applied: int = 0

    def vertices_with(self, *statuses: str) -> list[VertexState]:
        """The build's vertices in one of ``statuses``, in the order they were first seen."""
        return [v for v in self.vertices.values() if v.status in statuses]

    def build_refs(self) -> list[HeldRefState]:
        """Refs held at the cut by this build (its solve, vertices and exports)."""
        return [r for r in self.refs.values() if r.build_ref == self.build_ref]


def replay(events: Iterable[StoredEvent], build_ref: str, cut: Cut = Cut()) -> ReplayState:
    """Fold ``events`` (the global log in position order, or any prefix of it) up to ``cut``."""
    state = ReplayState(build_ref=build_ref)
    build_types, daemon_types = _BUILD_TYPES, _DAEMON_TYPES
    for stored in events:
        if cut.passed(stored):
            break
        kind = stored.type
        if kind in daemon_types:
            _daemon_step(state, stored, stored.decode())
        elif kind in build_types or kind == ev.VertexLogChunk.type_name:
            if stored.stream_id != f"build-{build_ref}":
                continue
            if kind in build_types:
                _build_step(state, stored, stored.decode())
        else:
            continue
        state.position = stored.position
        state.at = stored.recorded_at
        state.events_applied += 1
    return state


def _vertex(state: ReplayState, digest: str) -> VertexState:
    found = state.vertices.get(digest)
    if found is None:
        found = state.vertices[digest] = VertexState(vertex=digest)
    return found


def _queue_definition(state: ReplayState, definition: Any) -> None:
    # Every vertex of the recorded definition is queued until an event says otherwise.
    if not isinstance(definition, Mapping):
        return
    for entry in definition.get("vertices") or ():
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            vertex = _vertex(state, entry["id"])
            metadata = entry.get("metadata")
            description = metadata.get("description") if isinstance(metadata, Mapping) else None
            if isinstance(description, Mapping) and isinstance(description.get("llb.customname"), str):
                vertex.name = description["llb.customname"]


def _build_step(state: ReplayState, stored: StoredEvent, event: object) -> None:
    at = stored.recorded_at
    match event:
        case ev.SolveRequested(frontend=frontend, definition=definition):
            state.status = "requested"
            state.frontend = frontend
            state.actor = stored.actor
            state.requested_at = at
            _queue_definition(state, definition)
        case ev.SolveStarted():
            state.status = "running"
            state.started_at = at
        case ev.SolveCompleted():
            state.status, state.ended_at = "completed", at
        case ev.SolveFailed(error=error):
            state.status, state.ended_at, state.error = "failed", at, error
        case ev.SolveCancelled(reason=reason):
            state.status, state.ended_at, state.error = "cancelled", at, reason
        case ev.VertexStarted(vertex=digest, name=name, worker=worker):
            v = _vertex(state, digest)
            v.status, v.worker, v.runs, v.started_at = "running", worker, v.runs + 1, at
            v.ended_at, v.exit_code, v.error = None, None, ""
            v.name = name or v.name
        case ev.VertexCached(vertex=digest, name=name, snapshot_id=snapshot):
            v = _vertex(state, digest)
            v.status, v.started_at, v.ended_at, v.snapshot_id = "cached", at, at, snapshot
            v.name = name or v.name
        case ev.VertexCompleted(vertex=digest, worker=worker, exit_code=code, snapshot_id=snapshot):
            v = _vertex(state, digest)
            v.status, v.ended_at, v.exit_code, v.snapshot_id = "completed", at, code, snapshot
            v.worker = worker or v.worker
        case ev.VertexFailed(vertex=digest, error=error, exit_code=code, worker=worker):
            v = _vertex(state, digest)
            v.status, v.ended_at, v.exit_code, v.error = "failed", at, code, error
            v.worker = worker or v.worker
        case ev.VertexInterrupted(vertex=digest, reason=reason):
            v = _vertex(state, digest)
            v.status, v.ended_at, v.error = "interrupted", at, reason


def _daemon_step(state: ReplayState, stored: StoredEvent, event: object) -> None:
    match event:
        case ev.RefAcquired(
            ref_id=ref_id, snapshot_id=sid, holder_kind=kind, holder_id=holder, build_ref=build
        ):
            state.refs.setdefault(
                ref_id,
                HeldRefState(
                    ref_id=ref_id,
                    snapshot_id=sid,
                    holder_kind=kind,
                    holder_id=holder,
                    build_ref=build,
                    acquired_position=stored.position,
                ),
            )
        case ev.RefReleased(ref_id=ref_id):
            state.refs.pop(ref_id, None)
        case ev.SnapshotCreated(snapshot_id=sid, worker=worker, parent=parent, kind=kind):
            state.snapshots[sid] = SnapshotState(
                snapshot_id=sid, worker=worker, parent=parent, kind=kind, created_position=stored.position
            )
        case ev.SnapshotCommitted(snapshot_id=sid, size_bytes=size, from_active=active, parent=parent):
            source = state.snapshots.pop(active, None) if active else None
            snap = state.snapshots.get(sid)
            if snap is None:
                snap = state.snapshots[sid] = SnapshotState(snapshot_id=sid, created_position=stored.position)
            snap.kind, snap.state, snap.size_bytes = "committed", "committed", size
            if source is not None:
                snap.worker = source.worker
                snap.parent = parent if parent is not None else source.parent
            elif parent is not None:
                snap.parent = parent
        case ev.SnapshotRemoved(snapshot_id=sid):
            state.snapshots.pop(sid, None)
        case ev.CacheRecordAdded(
            cache_key=key, vertex=vertex, snapshot_id=sid, build_ref=build, worker=worker
        ):
            state.cache_records[key] = CacheRecordState(
                cache_key=key,
                vertex=vertex,
                snapshot_id=sid,
                build_ref=build,
                worker=worker,
                added_position=stored.position,
            )
        case ev.CacheRecordRemoved(cache_key=key):
            state.cache_records.pop(key, None)
