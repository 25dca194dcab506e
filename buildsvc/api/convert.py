"""Protobuf messages <-> the API's model (:mod:`buildsvc.api.model`), both ways.

The only module besides the servicers and the client that touches generated types: everything
outside ``buildsvc.api`` sees the model's dataclasses.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from google.protobuf.timestamp_pb2 import Timestamp

from buildsvc.api.gen import control_pb2 as pb
from buildsvc.api.model import SolveOptions

if TYPE_CHECKING:  # the log's envelope loads where events are read: a build's client needs none
    # Progress and the other calls' records load with the first one converted (see api.model).
    from buildsvc.api.progress_model import StatusUpdate
    from buildsvc.api.records import BuildRecord, DaemonInfo, HistoryEvent, WorkerRecord
    from buildsvc.daemon.usage import ContextsPruned, ContextStoreUsage, DiskUsage, PruneSkipped, UsageRecord
    from buildsvc.events.envelope import StoredEvent

__all__ = [
    "build_record_from_pb",
    "build_record_to_pb",
    "disk_usage_from_pb",
    "disk_usage_to_pb",
    "history_event_from_pb",
    "history_event_to_pb",
    "info_from_pb",
    "info_to_pb",
    "prune_result_from_pb",
    "prune_result_to_pb",
    "solve_from_pb",
    "solve_to_pb",
    "status_from_pb",
    "stored_event_from_pb",
    "stored_event_to_pb",
    "status_to_pb",
    "usage_from_pb",
    "usage_to_pb",
    "worker_from_pb",
    "worker_to_pb",
]

_VERTEX_STATES = {
    "started": pb.VERTEX_STATE_STARTED,
    "cached": pb.VERTEX_STATE_CACHED,
    "completed": pb.VERTEX_STATE_COMPLETED,
    "failed": pb.VERTEX_STATE_FAILED,
    "interrupted": pb.VERTEX_STATE_INTERRUPTED,
}
_BUILD_STATUSES = {
    "requested": pb.BUILD_STATUS_REQUESTED,
    "running": pb.BUILD_STATUS_RUNNING,
    "completed": pb.BUILD_STATUS_COMPLETED,
    "failed": pb.BUILD_STATUS_FAILED,
    "cancelled": pb.BUILD_STATUS_CANCELLED,
}
_HISTORY_TYPES = {
    "started": pb.BUILD_HISTORY_EVENT_TYPE_STARTED,
    "complete": pb.BUILD_HISTORY_EVENT_TYPE_COMPLETE,
}


def _reverse(table: Mapping[str, int]) -> dict[int, str]:
    return {v: k for k, v in table.items()}


_VERTEX_STATE_NAMES = _reverse(_VERTEX_STATES)
_BUILD_STATUS_NAMES = _reverse(_BUILD_STATUSES)
_HISTORY_TYPE_NAMES = _reverse(_HISTORY_TYPES)


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def _datetime(ts: Timestamp) -> datetime:
    moment: datetime = ts.ToDatetime(tzinfo=UTC)
    return moment


# --- Solve ----------------------------------------------------------------------------------------


def solve_to_pb(options: SolveOptions) -> pb.SolveRequest:
    """The request a client sends."""
    return pb.SolveRequest(
        ref=options.build_ref,
        definition=options.definition_json,
        frontend=options.frontend,
        frontend_attrs=dict(options.frontend_attrs),
        exporters=[
            pb.Exporter(type=e.get("type", ""), attrs={k: v for k, v in e.items() if k != "type"})
            for e in options.exporters
        ],
        local_dirs={name: str(path) for name, path in options.local_dirs.items()},
        actor=options.actor,
        local_contexts=dict(options.local_contexts),
        cache=pb.CacheOptions(
            exports=[_cache_entry(e) for e in options.cache_exports],
            imports=[_cache_entry(i) for i in options.cache_imports],
        ),
        frontend_inputs=dict(options.frontend_inputs),
        rerun_of=options.rerun_of,
        from_failure=options.from_failure,
        debug_command=list(options.debug_command),
    )


def _cache_entry(attrs: Mapping[str, str]) -> pb.CacheOptionsEntry:
    return pb.CacheOptionsEntry(
        type=attrs.get("type", ""), attrs={k: v for k, v in attrs.items() if k != "type"}
    )


def _cache_from_pb(cache: pb.CacheOptions) -> tuple[tuple[dict[str, str], ...], tuple[dict[str, str], ...]]:
    """Exports and imports, the deprecated fields translated as BuildKit's daemon does."""
    exports = [{"type": e.type, **dict(e.attrs)} for e in cache.exports]
    imports = [{"type": i.type, **dict(i.attrs)} for i in cache.imports]
    if cache.export_ref_deprecated:
        exports.append(
            {**dict(cache.export_attrs_deprecated), "type": "registry", "ref": cache.export_ref_deprecated}
        )
    imports += [{"type": "registry", "ref": ref} for ref in cache.import_refs_deprecated]
    return tuple(exports), tuple(imports)


def solve_from_pb(request: pb.SolveRequest) -> SolveOptions:
    """The request as the daemon handles it."""
    return SolveOptions(
        build_ref=request.ref,
        definition_json=request.definition,
        frontend=request.frontend,
        frontend_attrs=dict(request.frontend_attrs),
        exporters=tuple({"type": e.type, **dict(e.attrs)} for e in request.exporters),
        local_dirs={name: Path(path) for name, path in request.local_dirs.items()},
        actor=request.actor,
        local_contexts=dict(request.local_contexts),
        cache_exports=_cache_from_pb(request.cache)[0],
        cache_imports=_cache_from_pb(request.cache)[1],
        frontend_inputs=dict(request.frontend_inputs),
        rerun_of=request.rerun_of,
        from_failure=request.from_failure,
        debug_command=tuple(request.debug_command),
    )


# --- Status ---------------------------------------------------------------------------------------


def status_to_pb(update: StatusUpdate) -> pb.StatusUpdate:
    """One update on the wire."""
    message = pb.StatusUpdate(
        position=update.position,
        time=_timestamp(update.time),
        type=update.type,
        payload_json=update.payload_json,
    )
    if update.vertex is not None:
        v = update.vertex
        message.vertex.CopyFrom(
            pb.VertexUpdate(
                digest=v.digest,
                name=v.name,
                state=_VERTEX_STATES[v.state],
                worker=v.worker,
                error=v.error,
                exit_code=v.exit_code,
                duration_ms=v.duration_ms,
            )
        )
    elif update.log is not None:
        message.log.CopyFrom(
            pb.VertexLog(vertex=update.log.vertex, stream=update.log.stream, data=update.log.data)
        )
    elif update.build is not None:
        b = update.build
        message.build.CopyFrom(
            pb.BuildUpdate(
                status=_BUILD_STATUSES[b.status],
                error=b.error,
                vertex=b.vertex,
                exit_code=b.exit_code,
                source_location=b.source_location,
            )
        )
    return message


def status_from_pb(message: pb.StatusUpdate) -> StatusUpdate:
    """One update as the client's progress display reads it."""
    from buildsvc.api.progress_model import BuildUpdate, StatusUpdate, VertexLog, VertexUpdate

    vertex = log = build = None
    kind = message.WhichOneof("update")
    if kind == "vertex":
        v = message.vertex
        vertex = VertexUpdate(
            digest=v.digest,
            state=_VERTEX_STATE_NAMES.get(v.state, "unknown"),
            name=v.name,
            worker=v.worker,
            error=v.error,
            exit_code=v.exit_code if v.HasField("exit_code") else None,
            duration_ms=v.duration_ms,
        )
    elif kind == "log":
        log = VertexLog(vertex=message.log.vertex, stream=message.log.stream, data=message.log.data)
    elif kind == "build":
        b = message.build
        build = BuildUpdate(
            status=_BUILD_STATUS_NAMES.get(b.status, "unknown"),
            error=b.error,
            vertex=b.vertex,
            exit_code=b.exit_code if b.HasField("exit_code") else None,
            source_location=b.source_location,
        )
    return StatusUpdate(
        position=message.position,
        time=_datetime(message.time),
        type=message.type,
        payload_json=message.payload_json,
        vertex=vertex,
        log=log,
        build=build,
    )


# --- Workers, info, disk usage --------------------------------------------------------------------


def worker_to_pb(worker: WorkerRecord) -> pb.WorkerRecord:
    """A worker on the wire."""
    return pb.WorkerRecord(
        name=worker.name,
        executor=worker.executor,
        snapshotter=worker.snapshotter,
        labels=dict(worker.labels),
        platforms=list(worker.platforms),
    )


def worker_from_pb(message: pb.WorkerRecord) -> WorkerRecord:
    """A worker as the client sees it."""
    from buildsvc.api.records import WorkerRecord

    return WorkerRecord(
        name=message.name,
        executor=message.executor,
        snapshotter=message.snapshotter,
        labels=dict(message.labels),
        platforms=tuple(message.platforms),
    )


def info_to_pb(info: DaemonInfo) -> pb.InfoResponse:
    """The daemon's info on the wire."""
    return pb.InfoResponse(
        version=info.version,
        daemon_id=info.daemon_id,
        root=info.root,
        hostname=info.hostname,
        pid=info.pid,
        database=info.database,
    )


def info_from_pb(message: pb.InfoResponse) -> DaemonInfo:
    """The daemon's info as the client sees it."""
    from buildsvc.api.records import DaemonInfo

    return DaemonInfo(
        version=message.version,
        daemon_id=message.daemon_id,
        root=message.root,
        hostname=message.hostname,
        pid=message.pid,
        database=message.database,
    )


def usage_to_pb(record: UsageRecord) -> pb.UsageRecord:
    """A snapshot's usage on the wire."""
    return pb.UsageRecord(
        snapshot_id=record.snapshot_id,
        worker=record.worker,
        snapshotter=record.snapshotter,
        parent=record.parent,
        kind=record.kind,
        state=record.state,
        size_bytes=record.size_bytes,
        in_use=record.in_use,
        active_refs=record.active_refs,
        shared=record.shared,
        cache_keys=list(record.cache_keys),
    )


def usage_from_pb(message: pb.UsageRecord) -> UsageRecord:
    """A snapshot's usage as the client sees it."""
    from buildsvc.daemon.usage import UsageRecord

    return UsageRecord(
        snapshot_id=message.snapshot_id,
        worker=message.worker,
        snapshotter=message.snapshotter,
        parent=message.parent,
        kind=message.kind,
        state=message.state,
        size_bytes=message.size_bytes,
        active_refs=message.active_refs,
        in_use=message.in_use,
        shared=message.shared,
        cache_keys=tuple(message.cache_keys),
    )


def disk_usage_to_pb(records: list[UsageRecord], contexts: ContextStoreUsage) -> pb.DiskUsageResponse:
    """The snapshots and the context store on the wire."""
    return pb.DiskUsageResponse(
        records=[usage_to_pb(r) for r in records],
        contexts=pb.ContextStoreUsage(
            manifests=contexts.manifests,
            blobs=contexts.blobs,
            blob_bytes=contexts.blob_bytes,
            trees=contexts.trees,
            tree_bytes=contexts.tree_bytes,
        ),
    )


def disk_usage_from_pb(message: pb.DiskUsageResponse) -> DiskUsage:
    """The snapshots and the context store as the client sees them."""
    from buildsvc.daemon.usage import ContextStoreUsage, DiskUsage

    c = message.contexts
    return DiskUsage(
        snapshots=tuple(usage_from_pb(r) for r in message.records),
        contexts=ContextStoreUsage(
            manifests=c.manifests,
            blobs=c.blobs,
            blob_bytes=c.blob_bytes,
            trees=c.trees,
            tree_bytes=c.tree_bytes,
        ),
    )


def prune_result_to_pb(result: UsageRecord | PruneSkipped | ContextsPruned) -> pb.PruneResponse:
    """A removed snapshot (its usage record), a skipped one, or what went from the context store,
    on the wire.
    """
    from buildsvc.daemon.usage import ContextsPruned, PruneSkipped

    if isinstance(result, PruneSkipped):
        return pb.PruneResponse(
            skipped=pb.PruneSkipped(
                snapshot_id=result.snapshot_id, worker=result.worker, reason=result.reason
            )
        )
    if isinstance(result, ContextsPruned):
        return pb.PruneResponse(
            contexts=pb.ContextsPruned(
                manifests=list(result.manifests),
                blobs_removed=result.blobs_removed,
                trees_removed=result.trees_removed,
                bytes_reclaimed=result.bytes_reclaimed,
            )
        )
    return pb.PruneResponse(removed=usage_to_pb(result))


def prune_result_from_pb(message: pb.PruneResponse) -> UsageRecord | PruneSkipped | ContextsPruned:
    """A removed or skipped snapshot, or what went from the context store, as the client sees it."""
    from buildsvc.daemon.usage import ContextsPruned, PruneSkipped

    which = message.WhichOneof("result")
    if which == "skipped":
        s = message.skipped
        return PruneSkipped(snapshot_id=s.snapshot_id, worker=s.worker, reason=s.reason)
    if which == "contexts":
        c = message.contexts
        return ContextsPruned(
            manifests=tuple(c.manifests),
            blobs_removed=c.blobs_removed,
            trees_removed=c.trees_removed,
            bytes_reclaimed=c.bytes_reclaimed,
        )
    return usage_from_pb(message.removed)


# --- Build history --------------------------------------------------------------------------------


def build_record_to_pb(record: BuildRecord) -> pb.BuildHistoryRecord:
    """A build's record on the wire."""
    return pb.BuildHistoryRecord(
        ref=record.build_ref,
        status=_BUILD_STATUSES.get(record.status, pb.BUILD_STATUS_UNSPECIFIED),
        frontend=record.frontend,
        actor=record.actor,
        requested_at=_timestamp(record.requested_at),
        ended_at=_timestamp(record.ended_at),
        vertices_total=record.vertices_total,
        vertices_completed=record.vertices_completed,
        vertices_cached=record.vertices_cached,
        error=record.error,
        error_vertex=record.error_vertex,
        exit_code=record.exit_code,
        pinned=record.pinned,
    )


def build_record_from_pb(message: pb.BuildHistoryRecord) -> BuildRecord:
    """A build's record as the client sees it."""
    from buildsvc.api.records import BuildRecord

    return BuildRecord(
        build_ref=message.ref,
        status=_BUILD_STATUS_NAMES.get(message.status, "unknown"),
        frontend=message.frontend,
        actor=message.actor,
        requested_at=_datetime(message.requested_at) if message.HasField("requested_at") else None,
        ended_at=_datetime(message.ended_at) if message.HasField("ended_at") else None,
        vertices_total=message.vertices_total,
        vertices_completed=message.vertices_completed,
        vertices_cached=message.vertices_cached,
        error=message.error,
        error_vertex=message.error_vertex,
        exit_code=message.exit_code if message.HasField("exit_code") else None,
        pinned=message.pinned,
    )


def history_event_to_pb(event: HistoryEvent) -> pb.BuildHistoryEvent:
    """A history event on the wire."""
    return pb.BuildHistoryEvent(type=_HISTORY_TYPES[event.type], record=build_record_to_pb(event.record))


def history_event_from_pb(message: pb.BuildHistoryEvent) -> HistoryEvent:
    """A history event as the client sees it."""
    from buildsvc.api.records import HistoryEvent

    return HistoryEvent(
        type=_HISTORY_TYPE_NAMES.get(message.type, "unknown"), record=build_record_from_pb(message.record)
    )


# --- BuildEvents ------------------------------------------------------------------------------------


def stored_event_to_pb(stored: StoredEvent) -> pb.LogEvent:
    """An event of the log on the wire, exactly as stored."""
    return pb.LogEvent(
        position=stored.position,
        event_id=str(stored.event_id),
        stream_id=stored.stream_id,
        stream_version=stored.stream_version,
        type=stored.type,
        schema_version=stored.schema_version,
        payload_json=stored.payload_json,
        recorded_at=_timestamp(stored.recorded_at),
        actor=stored.actor,
        trace_id=stored.trace_id,
        hash=stored.hash,
    )


def stored_event_from_pb(message: pb.LogEvent) -> StoredEvent:
    """The event as the log holds it (the projections take it as if read from the store)."""
    from buildsvc.events.envelope import StoredEvent

    return StoredEvent(
        position=message.position,
        event_id=UUID(message.event_id),
        stream_id=message.stream_id,
        stream_version=message.stream_version,
        type=message.type,
        schema_version=message.schema_version,
        payload_json=message.payload_json,
        recorded_at=_datetime(message.recorded_at),
        actor=message.actor,
        trace_id=message.trace_id,
        hash=message.hash,
    )
