import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VertexState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERTEX_STATE_UNSPECIFIED: _ClassVar[VertexState]
    VERTEX_STATE_STARTED: _ClassVar[VertexState]
    VERTEX_STATE_CACHED: _ClassVar[VertexState]
    VERTEX_STATE_COMPLETED: _ClassVar[VertexState]
    VERTEX_STATE_FAILED: _ClassVar[VertexState]
    VERTEX_STATE_INTERRUPTED: _ClassVar[VertexState]

class BuildStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUILD_STATUS_UNSPECIFIED: _ClassVar[BuildStatus]
    BUILD_STATUS_REQUESTED: _ClassVar[BuildStatus]
    BUILD_STATUS_RUNNING: _ClassVar[BuildStatus]
    BUILD_STATUS_COMPLETED: _ClassVar[BuildStatus]
    BUILD_STATUS_FAILED: _ClassVar[BuildStatus]
    BUILD_STATUS_CANCELLED: _ClassVar[BuildStatus]

class BuildHistoryEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUILD_HISTORY_EVENT_TYPE_UNSPECIFIED: _ClassVar[BuildHistoryEventType]
    BUILD_HISTORY_EVENT_TYPE_STARTED: _ClassVar[BuildHistoryEventType]
    BUILD_HISTORY_EVENT_TYPE_COMPLETE: _ClassVar[BuildHistoryEventType]
VERTEX_STATE_UNSPECIFIED: VertexState
VERTEX_STATE_STARTED: VertexState
VERTEX_STATE_CACHED: VertexState
VERTEX_STATE_COMPLETED: VertexState
VERTEX_STATE_FAILED: VertexState
VERTEX_STATE_INTERRUPTED: VertexState
BUILD_STATUS_UNSPECIFIED: BuildStatus
BUILD_STATUS_REQUESTED: BuildStatus
BUILD_STATUS_RUNNING: BuildStatus
BUILD_STATUS_COMPLETED: BuildStatus
BUILD_STATUS_FAILED: BuildStatus
BUILD_STATUS_CANCELLED: BuildStatus
BUILD_HISTORY_EVENT_TYPE_UNSPECIFIED: BuildHistoryEventType
BUILD_HISTORY_EVENT_TYPE_STARTED: BuildHistoryEventType
BUILD_HISTORY_EVENT_TYPE_COMPLETE: BuildHistoryEventType

class SolveRequest(_message.Message):
    __slots__ = ("ref", "definition", "frontend", "frontend_attrs", "exporters", "local_dirs", "actor", "local_contexts", "cache", "frontend_inputs", "rerun_of", "from_failure", "debug_command")
    class FrontendAttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LocalDirsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LocalContextsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FrontendInputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_ATTRS_FIELD_NUMBER: _ClassVar[int]
    EXPORTERS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_DIRS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_INPUTS_FIELD_NUMBER: _ClassVar[int]
    RERUN_OF_FIELD_NUMBER: _ClassVar[int]
    FROM_FAILURE_FIELD_NUMBER: _ClassVar[int]
    DEBUG_COMMAND_FIELD_NUMBER: _ClassVar[int]
    ref: str
    definition: bytes
    frontend: str
    frontend_attrs: _containers.ScalarMap[str, str]
    exporters: _containers.RepeatedCompositeFieldContainer[Exporter]
    local_dirs: _containers.ScalarMap[str, str]
    actor: str
    local_contexts: _containers.ScalarMap[str, str]
    cache: CacheOptions
    frontend_inputs: _containers.ScalarMap[str, bytes]
    rerun_of: str
    from_failure: bool
    debug_command: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[str] = ..., definition: _Optional[bytes] = ..., frontend: _Optional[str] = ..., frontend_attrs: _Optional[_Mapping[str, str]] = ..., exporters: _Optional[_Iterable[_Union[Exporter, _Mapping]]] = ..., local_dirs: _Optional[_Mapping[str, str]] = ..., actor: _Optional[str] = ..., local_contexts: _Optional[_Mapping[str, str]] = ..., cache: _Optional[_Union[CacheOptions, _Mapping]] = ..., frontend_inputs: _Optional[_Mapping[str, bytes]] = ..., rerun_of: _Optional[str] = ..., from_failure: _Optional[bool] = ..., debug_command: _Optional[_Iterable[str]] = ...) -> None: ...

class CacheOptions(_message.Message):
    __slots__ = ("export_ref_deprecated", "import_refs_deprecated", "export_attrs_deprecated", "exports", "imports")
    class ExportAttrsDeprecatedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXPORT_REF_DEPRECATED_FIELD_NUMBER: _ClassVar[int]
    IMPORT_REFS_DEPRECATED_FIELD_NUMBER: _ClassVar[int]
    EXPORT_ATTRS_DEPRECATED_FIELD_NUMBER: _ClassVar[int]
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    IMPORTS_FIELD_NUMBER: _ClassVar[int]
    export_ref_deprecated: str
    import_refs_deprecated: _containers.RepeatedScalarFieldContainer[str]
    export_attrs_deprecated: _containers.ScalarMap[str, str]
    exports: _containers.RepeatedCompositeFieldContainer[CacheOptionsEntry]
    imports: _containers.RepeatedCompositeFieldContainer[CacheOptionsEntry]
    def __init__(self, export_ref_deprecated: _Optional[str] = ..., import_refs_deprecated: _Optional[_Iterable[str]] = ..., export_attrs_deprecated: _Optional[_Mapping[str, str]] = ..., exports: _Optional[_Iterable[_Union[CacheOptionsEntry, _Mapping]]] = ..., imports: _Optional[_Iterable[_Union[CacheOptionsEntry, _Mapping]]] = ...) -> None: ...

class CacheOptionsEntry(_message.Message):
    __slots__ = ("type", "attrs")
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    type: str
    attrs: _containers.ScalarMap[str, str]
    def __init__(self, type: _Optional[str] = ..., attrs: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Exporter(_message.Message):
    __slots__ = ("type", "attrs")
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    type: str
    attrs: _containers.ScalarMap[str, str]
    def __init__(self, type: _Optional[str] = ..., attrs: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SolveResponse(_message.Message):
    __slots__ = ("ref", "exporter_response")
    class ExporterResponseEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    exporter_response: _containers.ScalarMap[str, str]
    def __init__(self, ref: _Optional[str] = ..., exporter_response: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("ref", "after_position")
    REF_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    ref: str
    after_position: int
    def __init__(self, ref: _Optional[str] = ..., after_position: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("updates",)
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[StatusUpdate]
    def __init__(self, updates: _Optional[_Iterable[_Union[StatusUpdate, _Mapping]]] = ...) -> None: ...

class StatusUpdate(_message.Message):
    __slots__ = ("position", "time", "type", "payload_json", "vertex", "log", "build")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    VERTEX_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    position: int
    time: _timestamp_pb2.Timestamp
    type: str
    payload_json: str
    vertex: VertexUpdate
    log: VertexLog
    build: BuildUpdate
    def __init__(self, position: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[str] = ..., payload_json: _Optional[str] = ..., vertex: _Optional[_Union[VertexUpdate, _Mapping]] = ..., log: _Optional[_Union[VertexLog, _Mapping]] = ..., build: _Optional[_Union[BuildUpdate, _Mapping]] = ...) -> None: ...

class VertexUpdate(_message.Message):
    __slots__ = ("digest", "name", "state", "worker", "error", "exit_code", "duration_ms")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    name: str
    state: VertexState
    worker: str
    error: str
    exit_code: int
    duration_ms: int
    def __init__(self, digest: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[VertexState, str]] = ..., worker: _Optional[str] = ..., error: _Optional[str] = ..., exit_code: _Optional[int] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class VertexLog(_message.Message):
    __slots__ = ("vertex", "stream", "data")
    VERTEX_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    vertex: str
    stream: int
    data: bytes
    def __init__(self, vertex: _Optional[str] = ..., stream: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class BuildUpdate(_message.Message):
    __slots__ = ("status", "error", "vertex", "exit_code", "source_location")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERTEX_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LOCATION_FIELD_NUMBER: _ClassVar[int]
    status: BuildStatus
    error: str
    vertex: str
    exit_code: int
    source_location: str
    def __init__(self, status: _Optional[_Union[BuildStatus, str]] = ..., error: _Optional[str] = ..., vertex: _Optional[str] = ..., exit_code: _Optional[int] = ..., source_location: _Optional[str] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerRecord]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerRecord, _Mapping]]] = ...) -> None: ...

class WorkerRecord(_message.Message):
    __slots__ = ("name", "executor", "snapshotter", "labels", "platforms")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTTER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    executor: str
    snapshotter: str
    labels: _containers.ScalarMap[str, str]
    platforms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., executor: _Optional[str] = ..., snapshotter: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., platforms: _Optional[_Iterable[str]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("version", "daemon_id", "root", "hostname", "pid", "database")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DAEMON_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    version: str
    daemon_id: str
    root: str
    hostname: str
    pid: int
    database: str
    def __init__(self, version: _Optional[str] = ..., daemon_id: _Optional[str] = ..., root: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., database: _Optional[str] = ...) -> None: ...

class DiskUsageRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DiskUsageResponse(_message.Message):
    __slots__ = ("records", "contexts")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    contexts: ContextStoreUsage
    def __init__(self, records: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ..., contexts: _Optional[_Union[ContextStoreUsage, _Mapping]] = ...) -> None: ...

class ContextStoreUsage(_message.Message):
    __slots__ = ("manifests", "blobs", "blob_bytes", "trees", "tree_bytes")
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    TREES_FIELD_NUMBER: _ClassVar[int]
    TREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    manifests: int
    blobs: int
    blob_bytes: int
    trees: int
    tree_bytes: int
    def __init__(self, manifests: _Optional[int] = ..., blobs: _Optional[int] = ..., blob_bytes: _Optional[int] = ..., trees: _Optional[int] = ..., tree_bytes: _Optional[int] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("snapshot_id", "worker", "snapshotter", "parent", "kind", "state", "size_bytes", "in_use", "active_refs", "shared", "cache_keys")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTTER_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REFS_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEYS_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    worker: str
    snapshotter: str
    parent: str
    kind: str
    state: str
    size_bytes: int
    in_use: bool
    active_refs: int
    shared: bool
    cache_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, snapshot_id: _Optional[str] = ..., worker: _Optional[str] = ..., snapshotter: _Optional[str] = ..., parent: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., size_bytes: _Optional[int] = ..., in_use: _Optional[bool] = ..., active_refs: _Optional[int] = ..., shared: _Optional[bool] = ..., cache_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class PruneRequest(_message.Message):
    __slots__ = ("all", "keep_duration_seconds", "filters")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ALL_FIELD_NUMBER: _ClassVar[int]
    KEEP_DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    all: bool
    keep_duration_seconds: float
    filters: _containers.ScalarMap[str, str]
    def __init__(self, all: _Optional[bool] = ..., keep_duration_seconds: _Optional[float] = ..., filters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PruneSkipped(_message.Message):
    __slots__ = ("snapshot_id", "worker", "reason")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    worker: str
    reason: str
    def __init__(self, snapshot_id: _Optional[str] = ..., worker: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ContextsPruned(_message.Message):
    __slots__ = ("manifests", "blobs_removed", "trees_removed", "bytes_reclaimed")
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    TREES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECLAIMED_FIELD_NUMBER: _ClassVar[int]
    manifests: _containers.RepeatedScalarFieldContainer[str]
    blobs_removed: int
    trees_removed: int
    bytes_reclaimed: int
    def __init__(self, manifests: _Optional[_Iterable[str]] = ..., blobs_removed: _Optional[int] = ..., trees_removed: _Optional[int] = ..., bytes_reclaimed: _Optional[int] = ...) -> None: ...

class PruneResponse(_message.Message):
    __slots__ = ("removed", "skipped", "contexts")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    removed: UsageRecord
    skipped: PruneSkipped
    contexts: ContextsPruned
    def __init__(self, removed: _Optional[_Union[UsageRecord, _Mapping]] = ..., skipped: _Optional[_Union[PruneSkipped, _Mapping]] = ..., contexts: _Optional[_Union[ContextsPruned, _Mapping]] = ...) -> None: ...

class BuildHistoryRequest(_message.Message):
    __slots__ = ("active_only", "ref", "early_exit")
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    EARLY_EXIT_FIELD_NUMBER: _ClassVar[int]
    active_only: bool
    ref: str
    early_exit: bool
    def __init__(self, active_only: _Optional[bool] = ..., ref: _Optional[str] = ..., early_exit: _Optional[bool] = ...) -> None: ...

class BuildHistoryEvent(_message.Message):
    __slots__ = ("type", "record")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    type: BuildHistoryEventType
    record: BuildHistoryRecord
    def __init__(self, type: _Optional[_Union[BuildHistoryEventType, str]] = ..., record: _Optional[_Union[BuildHistoryRecord, _Mapping]] = ...) -> None: ...

class BuildHistoryRecord(_message.Message):
    __slots__ = ("ref", "status", "frontend", "actor", "requested_at", "ended_at", "vertices_total", "vertices_completed", "vertices_cached", "error", "error_vertex", "exit_code", "pinned")
    REF_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    VERTICES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VERTICES_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    VERTICES_CACHED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_VERTEX_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    ref: str
    status: BuildStatus
    frontend: str
    actor: str
    requested_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    vertices_total: int
    vertices_completed: int
    vertices_cached: int
    error: str
    error_vertex: str
    exit_code: int
    pinned: bool
    def __init__(self, ref: _Optional[str] = ..., status: _Optional[_Union[BuildStatus, str]] = ..., frontend: _Optional[str] = ..., actor: _Optional[str] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., vertices_total: _Optional[int] = ..., vertices_completed: _Optional[int] = ..., vertices_cached: _Optional[int] = ..., error: _Optional[str] = ..., error_vertex: _Optional[str] = ..., exit_code: _Optional[int] = ..., pinned: _Optional[bool] = ...) -> None: ...

class UpdateBuildHistoryRequest(_message.Message):
    __slots__ = ("ref", "pinned", "delete")
    REF_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    pinned: bool
    delete: bool
    def __init__(self, ref: _Optional[str] = ..., pinned: _Optional[bool] = ..., delete: _Optional[bool] = ...) -> None: ...

class UpdateBuildHistoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BuildEventsRequest(_message.Message):
    __slots__ = ("ref", "stream_id", "after_position", "until_position")
    REF_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    UNTIL_POSITION_FIELD_NUMBER: _ClassVar[int]
    ref: str
    stream_id: str
    after_position: int
    until_position: int
    def __init__(self, ref: _Optional[str] = ..., stream_id: _Optional[str] = ..., after_position: _Optional[int] = ..., until_position: _Optional[int] = ...) -> None: ...

class BuildEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[LogEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[LogEvent, _Mapping]]] = ...) -> None: ...

class LogEvent(_message.Message):
    __slots__ = ("position", "event_id", "stream_id", "stream_version", "type", "schema_version", "payload_json", "recorded_at", "actor", "trace_id", "hash")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    position: int
    event_id: str
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    payload_json: str
    recorded_at: _timestamp_pb2.Timestamp
    actor: str
    trace_id: str
    hash: bytes
    def __init__(self, position: _Optional[int] = ..., event_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., stream_version: _Optional[int] = ..., type: _Optional[str] = ..., schema_version: _Optional[int] = ..., payload_json: _Optional[str] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., trace_id: _Optional[str] = ..., hash: _Optional[bytes] = ...) -> None: ...

class LeaksRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class LeaksResponse(_message.Message):
    __slots__ = ("report_json",)
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    def __init__(self, report_json: _Optional[str] = ...) -> None: ...

class ListBuildsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListBuildsResponse(_message.Message):
    __slots__ = ("rows_json",)
    ROWS_JSON_FIELD_NUMBER: _ClassVar[int]
    rows_json: str
    def __init__(self, rows_json: _Optional[str] = ...) -> None: ...

class DebugRequest(_message.Message):
    __slots__ = ("start", "stdin", "resize")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    start: DebugStart
    stdin: bytes
    resize: WindowSize
    def __init__(self, start: _Optional[_Union[DebugStart, _Mapping]] = ..., stdin: _Optional[bytes] = ..., resize: _Optional[_Union[WindowSize, _Mapping]] = ...) -> None: ...

class DebugStart(_message.Message):
    __slots__ = ("ref", "debug_ref", "command", "size")
    REF_FIELD_NUMBER: _ClassVar[int]
    DEBUG_REF_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    debug_ref: str
    command: _containers.RepeatedScalarFieldContainer[str]
    size: WindowSize
    def __init__(self, ref: _Optional[str] = ..., debug_ref: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., size: _Optional[_Union[WindowSize, _Mapping]] = ...) -> None: ...

class WindowSize(_message.Message):
    __slots__ = ("rows", "cols")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class DebugResponse(_message.Message):
    __slots__ = ("debug_ref", "output", "exit")
    DEBUG_REF_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    debug_ref: str
    output: bytes
    exit: DebugExit
    def __init__(self, debug_ref: _Optional[str] = ..., output: _Optional[bytes] = ..., exit: _Optional[_Union[DebugExit, _Mapping]] = ...) -> None: ...

class DebugExit(_message.Message):
    __slots__ = ("exit_code",)
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    def __init__(self, exit_code: _Optional[int] = ...) -> None: ...
