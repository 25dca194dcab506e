"""Resuming a build that a dead daemon process left unfinished, worked out from its events alone.

A build's stream (``build-<ref>``) says everything the restart needs (design invariant 3):

- what was asked: ``SolveRequested`` carries the definition, frontend and options, exporters,
  cache exports and the local dirs (and, from another helper's context transfer,
  ``LocalContextReceived`` names a content-addressed manifest per local dir);
- which vertices completed (``VertexCompleted`` plus a ``CacheRecordAdded`` per output, so every
  output's snapshot is known) — they are reused once their snapshots are found on disk;
- which vertices started and never ended — they get ``VertexInterrupted`` and run again;
- which snapshots were announced (``SnapshotCreated``) and never committed or removed — partial
  results of the interrupted steps (actives, views, export views), removed and recorded;
- which refs the dead process held for the build (``RefAcquired`` without ``RefReleased``) —
  released with a reason, so the leak report is empty afterwards; cache records' refs stay;
- which exports (``ExportCompleted``) and cache exports (``CacheExportCompleted``) are done.

:func:`read_plan` folds the stream into a :class:`ResumePlan`; :func:`repair` does the cleanup
through the worker port (the solver never touches executors or SQL) and returns what to record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsvc.errors import NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event, JsonValue
from buildsvc.events.envelope import StoredEvent
from buildsvc.events.store import EventStore
from buildsvc.solver.worker import Worker

__all__ = [
    "CompletedVertex",
    "OpenRef",
    "PartialSnapshot",
    "RecordedFailure",
    "ResumePlan",
    "missing_local_dirs",
    "read_plan",
    "recorded_results",
    "repair",
]

LOCAL_CONTEXT_RECEIVED = "LocalContextReceived"
"""The event type the context-transfer work records per local dir (read by name: it may be absent)."""

_ENDS = frozenset({ev.SolveCompleted.type_name, ev.SolveFailed.type_name, ev.SolveCancelled.type_name})
# Holders whose life is the build's run in one process; a cache record's ref outlives the process.
_PROCESS_HOLDERS = frozenset({"solve", "vertex", "export", "gateway"})


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletedVertex:
    """A vertex that ran to the end before the restart, with its outputs' snapshots."""

    vertex: str
    cache_key: str
    worker: str
    outputs: Mapping[int, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenRef:
    """A ref the dead process took for the build and never released."""

    ref_id: str
    snapshot_id: str
    holder_kind: str
    holder_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PartialSnapshot:
    """A snapshot announced for a step and never committed or removed."""

    snapshot_id: str
    worker: str
    kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedFailure:
    """A vertex failure recorded before the restart whose solve end was not (the build failed)."""

    vertex: str
    error: str
    exit_code: int | None
    log_tail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumePlan:
    """What a restart must do for one unfinished build."""

    build_ref: str
    actor: str = ""
    trace_id: str = ""
    frontend: str = ""
    frontend_attrs: Mapping[str, str] = field(default_factory=dict)
    definition: JsonValue = None
    local_dirs: Mapping[str, str] = field(default_factory=dict)
    """Local dir name -> the host path recorded when the build was asked for."""
    local_manifests: Mapping[str, str] = field(default_factory=dict)
    """Local dir name -> manifest digest of the content the daemon received (when recorded)."""
    local_hosts: Mapping[str, str] = field(default_factory=dict)
    """Local dir name -> the host directory its content was read from (when recorded)."""
    exporters: tuple[Mapping[str, str], ...] = ()
    cache_exports: tuple[Mapping[str, str], ...] = ()
    cache_imports: tuple[Mapping[str, str], ...] = ()
    image_config: JsonValue = None
    completed: Mapping[str, CompletedVertex] = field(default_factory=dict)
    interrupted: tuple[str, ...] = ()
    runs: Mapping[str, int] = field(default_factory=dict)
    """Vertex -> how many times it started so far (the next run's ``attempt`` is one more)."""
    partial_snapshots: tuple[PartialSnapshot, ...] = ()
    open_refs: tuple[OpenRef, ...] = ()
    exports_done: tuple[ev.ExportCompleted, ...] = ()
    cache_exports_done: frozenset[str] = frozenset()
    """``export_id`` of each cache export that completed (see :meth:`pending_cache_exports`)."""
    cache_exports_completed: tuple[tuple[Mapping[str, str], str], ...] = ()
    """Each completed cache export's spec (as asked for) and manifest digest, in order."""
    failure: RecordedFailure | None = None
    attempt: int = 2
    previous_daemon_id: str = ""
    gateway_solves: tuple[str, ...] = ()
    """For a gateway job: the build refs of the solves its client-side frontend asked for."""

    def pending_exports(self) -> list[Mapping[str, str]]:
        """The exporters that have not completed (each completed one is recorded with its attrs)."""
        done = [dict(e.attrs) for e in self.exports_done]
        pending = []
        for spec in self.exporters:
            if dict(spec) in done:
                done.remove(dict(spec))  # the same spec twice is exported twice
            else:
                pending.append(spec)
        return pending

    def done_export_response(self) -> dict[str, str]:
        """The merged responses of the exports that completed before the restart."""
        merged: dict[str, str] = {}
        for e in self.exports_done:
            merged.update(e.response)
        return merged

    def pending_cache_exports(self, export_id: str) -> bool:
        """Whether the cache export ``export_id`` still has to run (the hook for cache exporters)."""
        return export_id not in self.cache_exports_done

    def cache_exports_left(self) -> tuple[list[tuple[int, Mapping[str, str]]], dict[str, str]]:
        """The cache exports still to run, each with its index in the request (an export's id is
        new on every run, so they are matched by spec), and the ``cache.export.<n>.digest``
        response keys of those that completed before the restart.
        """
        done = [(dict(spec), digest) for spec, digest in self.cache_exports_completed]
        pending: list[tuple[int, Mapping[str, str]]] = []
        response: dict[str, str] = {}
        for n, spec in enumerate(self.cache_exports):
            match = next((i for i, (d, _) in enumerate(done) if d == dict(spec)), None)
            if match is None:
                pending.append((n, spec))
                continue
            _, digest = done.pop(match)  # the same spec twice is exported twice
            if digest:
                response[f"cache.export.{n}.digest"] = digest
        return pending, response


def read_plan(store: EventStore, build_ref: str) -> ResumePlan | None:
    """The plan for ``build_ref`` from its stream; None when it has ended or was never requested."""
    return plan_from_events(build_ref, store.read_stream(f"build-{build_ref}"))


def plan_from_events(build_ref: str, stored: Sequence[StoredEvent]) -> ResumePlan | None:
    """:func:`read_plan` on events already read."""
    if not stored or any(s.type in _ENDS for s in stored):
        return None
    requested: ev.SolveRequested | None = None
    actor = trace_id = previous_daemon = ""
    attempt = 1
    manifests: dict[str, str] = {}
    hosts: dict[str, str] = {}
    outputs: dict[str, dict[int, str]] = {}
    completed: dict[str, CompletedVertex] = {}
    running: dict[str, bool] = {}
    runs: dict[str, int] = {}
    partial: dict[str, PartialSnapshot] = {}
    refs: dict[str, OpenRef] = {}
    exports: list[ev.ExportCompleted] = []
    cache_exports: set[str] = set()
    cache_export_specs: dict[str, Mapping[str, str]] = {}
    cache_exports_completed: list[tuple[Mapping[str, str], str]] = []
    failure: RecordedFailure | None = None
    gateway_solves: list[str] = []
    for s in stored:
        if s.type == LOCAL_CONTEXT_RECEIVED:
            payload = s.payload
            name, digest = payload.get("name"), payload.get("manifest_digest")
            if isinstance(name, str) and isinstance(digest, str):
                manifests[name] = digest
                host = payload.get("host_path")
                if isinstance(host, str) and host:
                    hosts[name] = host
            continue
        e: Any = s.decode()
        match e:
            case ev.SolveRequested():
                requested, actor, trace_id = e, s.actor, s.trace_id
            case ev.SolveStarted(daemon_id=daemon):
                previous_daemon = daemon or previous_daemon
            case ev.SolveResumed(daemon_id=daemon, attempt=n):
                previous_daemon, attempt = daemon, n
            case ev.VertexStarted(vertex=v):
                running[v] = True
                runs[v] = runs.get(v, 0) + 1
                completed.pop(v, None)
            case ev.CacheRecordAdded(vertex=v, output=i, snapshot_id=snap):
                outputs.setdefault(v, {})[i] = snap
            case ev.VertexCompleted(vertex=v, cache_key=key, worker=worker):
                running[v] = False
                completed[v] = CompletedVertex(
                    vertex=v, cache_key=key, worker=worker, outputs=outputs.pop(v, {})
                )
            case ev.VertexFailed(vertex=v, error=error, exit_code=code, log_tail=tail):
                running[v] = False
                failure = failure or RecordedFailure(vertex=v, error=error, exit_code=code, log_tail=tail)
            case ev.VertexInterrupted(vertex=v):
                running[v] = False
            case ev.SnapshotCreated(snapshot_id=snap, worker=worker, kind=kind):
                partial[snap] = PartialSnapshot(snapshot_id=snap, worker=worker, kind=kind)
            case ev.SnapshotCommitted(snapshot_id=snap, from_active=active):
                partial.pop(active, None)
                # A layer made whole and recorded as made (an image's, an imported one) is
                # announced as committed and committed in one append: not partial either.
                partial.pop(snap, None)
            case ev.SnapshotRemoved(snapshot_id=snap):
                partial.pop(snap, None)
            case ev.RefAcquired(ref_id=ref, holder_kind=kind) if kind in _PROCESS_HOLDERS:
                refs[ref] = OpenRef(
                    ref_id=ref, snapshot_id=e.snapshot_id, holder_kind=kind, holder_id=e.holder_id
                )
            case ev.RefReleased(ref_id=ref):
                refs.pop(ref, None)
            case ev.ExportCompleted():
                exports.append(e)
            case ev.CacheExportStarted(export_id=export_id, attrs=attrs):
                cache_export_specs[export_id] = attrs
            case ev.CacheExportCompleted(export_id=export_id, manifest_digest=digest):
                cache_exports.add(export_id)
                if export_id in cache_export_specs:
                    cache_exports_completed.append((cache_export_specs[export_id], digest))
            case ev.GatewaySolveRequested(solve_ref=solve_ref):
                gateway_solves.append(solve_ref)
    if requested is None:
        return None
    return ResumePlan(
        build_ref=build_ref,
        actor=actor,
        trace_id=trace_id,
        frontend=requested.frontend,
        frontend_attrs=dict(requested.frontend_attrs),
        definition=requested.definition,
        local_dirs=dict(requested.local_dirs),
        local_manifests=manifests,
        local_hosts=hosts,
        exporters=tuple(requested.exporters),
        cache_exports=tuple(requested.cache_exports),
        cache_imports=tuple(requested.cache_imports),
        image_config=requested.image_config,
        completed=completed,
        interrupted=tuple(v for v, is_running in running.items() if is_running),
        runs=runs,
        partial_snapshots=tuple(partial.values()),
        open_refs=tuple(refs.values()),
        exports_done=tuple(exports),
        cache_exports_done=frozenset(cache_exports),
        cache_exports_completed=tuple(cache_exports_completed),
        failure=failure,
        attempt=attempt + 1,
        previous_daemon_id=previous_daemon,
        gateway_solves=tuple(gateway_solves),
    )


def recorded_results(stored: Sequence[StoredEvent]) -> dict[str, CompletedVertex]:
    """The vertices of a build that ran to completion, with their outputs (for ``--from-failure``)."""
    outputs: dict[str, dict[int, str]] = {}
    completed: dict[str, CompletedVertex] = {}
    for s in stored:
        if s.type not in (ev.CacheRecordAdded.type_name, ev.VertexCompleted.type_name):
            continue
        e = s.decode()
        if isinstance(e, ev.CacheRecordAdded):
            outputs.setdefault(e.vertex, {})[e.output] = e.snapshot_id
        elif isinstance(e, ev.VertexCompleted):
            completed[e.vertex] = CompletedVertex(
                vertex=e.vertex, cache_key=e.cache_key, worker=e.worker, outputs=outputs.pop(e.vertex, {})
            )
    return completed


def missing_local_dirs(plan: ResumePlan, located: Mapping[str, Path | None]) -> list[str]:
    """A line per local dir whose content cannot be found again (the build fails naming each)."""
    missing = []
    for name, recorded in sorted(plan.local_dirs.items()):
        if located.get(name) is not None:
            continue
        digest = plan.local_manifests.get(name) or (recorded if recorded.startswith("sha256:") else "")
        host = plan.local_hosts.get(name)
        was = f" (read from {host})" if host else ""
        source = (
            f"its content {digest}{was} is no longer in the daemon's context store"
            if digest
            else f"{recorded} is not a directory now"
        )
        missing.append(f"local dir {name!r}: {source} (the client that sent it is gone; build again)")
    return missing


def repair(plan: ResumePlan, workers: Sequence[Worker], *, reason: str) -> list[Event]:
    """Remove the partial snapshots of ``plan`` and release the dead process's refs.

    Called after ``SolveResumed`` and the ``VertexInterrupted`` events are recorded (record, then
    act); returns the events that confirm what was done, to record next. A snapshot already gone
    from disk (the process died between announcing and making it) is recorded removed as well.
    """
    by_name = {w.info.name: w for w in workers}
    done: list[Event] = []
    for ref in plan.open_refs:
        done.append(
            ev.RefReleased(
                ref_id=ref.ref_id,
                snapshot_id=ref.snapshot_id,
                reason=f"{reason}: held by {ref.holder_kind} {ref.holder_id} of the dead process",
            )
        )
    # Views and actives are leaves (nothing stacks on an uncommitted snapshot): any order works.
    for snap in plan.partial_snapshots:
        worker = by_name.get(snap.worker)
        if worker is None:
            continue  # not enabled here: left for the leak report rather than guessed away
        snapshotter = worker.snapshotter
        try:
            snapshotter.stat(snap.snapshot_id)
        except NotFound:
            done.append(ev.SnapshotRemoved(snapshot_id=snap.snapshot_id, reason=f"{reason}: never made"))
            continue
        snapshotter.unmount(snap.snapshot_id)
        snapshotter.remove(snap.snapshot_id)
        done.append(
            ev.SnapshotRemoved(snapshot_id=snap.snapshot_id, reason=f"{reason}: partial {snap.kind} snapshot")
        )
    return done
