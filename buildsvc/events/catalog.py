"""The catalog of every event buildsvc records.

Each is a past-tense fact. Identifiers are plain strings: ``build_ref`` names a solve (BuildKit's
build ref), ``vertex`` a vertex digest (``sha256:...``), ``ref_id`` one acquisition of a snapshot,
``snapshot_id`` a snapshot on a worker. Adding a field with a default is backwards compatible;
renaming or removing one raises the type's ``schema_version`` and needs an upcaster (see ``codec``).

Streams: a build's solve and vertex events go to ``build-<ref>``, a snapshot's life and its refs to
``snapshot-<id>``, cache records to ``cache-<key>``, daemon and worker events to ``daemon-<id>``, what
is done to a build's history entry after it (pin, delete) to ``history-<ref>``, what a prune removed
from the context store to ``contexts``.
Projections key on payload fields, never on stream names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from buildsvc.events.codec import Event, JsonValue, event_type

__all__ = [
    "BuildHistoryDeleted",
    "BuildHistoryPinned",
    "CacheExportCompleted",
    "CacheExportFailed",
    "CacheExportStarted",
    "CacheImportMiss",
    "CacheImported",
    "CacheRecordAdded",
    "CacheRecordRemoved",
    "DaemonStarted",
    "DaemonStopped",
    "ExportCompleted",
    "FrontendInputReceived",
    "GatewayReturned",
    "GatewaySolveCompleted",
    "GatewaySolveFailed",
    "GatewaySolveRequested",
    "GatewayWarning",
    "LocalContextReceived",
    "LocalContextsPruned",
    "OutputDiscarded",
    "OutputFetched",
    "RefAcquired",
    "RefReleased",
    "SnapshotCommitted",
    "SnapshotCreated",
    "SnapshotRemoved",
    "SolveCancelled",
    "SolveCompleted",
    "SolveFailed",
    "SolveRequested",
    "SolveResumed",
    "SolveStarted",
    "VertexCached",
    "VertexCompleted",
    "VertexFailed",
    "VertexInterrupted",
    "VertexLogChunk",
    "VertexResultMissing",
    "VertexStarted",
    "WorkerRegistered",
]


# --- solves ---------------------------------------------------------------------------------------


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class SolveRequested(Event):
    """A client asked for a build."""

    build_ref: str
    frontend: str = ""
    """``dockerfile.v0``, ``gateway.v0`` or empty for a plain definition."""
    frontend_attrs: dict[str, str] = field(default_factory=dict)
    definition: JsonValue = None
    """The definition in its JSON form when the client sent one (kept for re-runs)."""
    definition_digest: str = ""
    local_dirs: dict[str, str] = field(default_factory=dict)
    """Local context name -> content digest of what the client sent."""
    exporters: tuple[dict[str, str], ...] = ()
    cache_exports: tuple[dict[str, str], ...] = ()
    cache_imports: tuple[dict[str, str], ...] = ()
    client: str = ""
    image_config: JsonValue = None
    """The frontend's image config (for image exporters), kept so a resumed build exports the same."""
    rerun_of: str = ""
    """``build --rerun REF``: the recorded build this one runs again (issue 5)."""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class SolveStarted(Event):
    """The solver began walking a build's graph."""

    build_ref: str
    vertex_count: int = 0
    daemon_id: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class SolveCompleted(Event):
    """A build finished and its exports were written."""

    build_ref: str
    result_snapshot: str = ""
    exporter_response: dict[str, str] = field(default_factory=dict)


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class SolveFailed(Event):
    """A build ended in error."""

    build_ref: str
    error: str
    vertex: str | None = None
    exit_code: int | None = None
    source_location: str = ""
    """``Dockerfile:LINE`` where the failed step came from, when known."""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class SolveCancelled(Event):
    """A build was cancelled (by its client, by a shutdown, or by ``--no-resume``)."""

    build_ref: str
    reason: str = ""


# --- vertices -------------------------------------------------------------------------------------


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class VertexStarted(Event):
    """A vertex began running on a worker (announced before the side effect)."""

    build_ref: str
    vertex: str
    name: str = ""
    worker: str = ""
    cache_key: str = ""
    attempt: int = 1


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class VertexCached(Event):
    """A vertex's result came from the cache; it did not run."""

    build_ref: str
    vertex: str
    name: str = ""
    cache_key: str = ""
    snapshot_id: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class VertexCompleted(Event):
    """A vertex ran to a valid exit and its result snapshot is committed."""

    build_ref: str
    vertex: str
    worker: str = ""
    duration_ms: int = 0
    exit_code: int | None = None
    snapshot_id: str = ""
    cache_key: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class VertexFailed(Event):
    """A vertex ended in error."""

    build_ref: str
    vertex: str
    error: str
    worker: str = ""
    duration_ms: int = 0
    exit_code: int | None = None
    log_tail: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class VertexInterrupted(Event):
    """A vertex that started never ended (found on restart, or stopped by a shutdown)."""

    build_ref: str
    vertex: str
    reason: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class VertexLogChunk(Event):
    """A piece of a vertex's output, in the order the process wrote it."""

    build_ref: str
    vertex: str
    data: bytes
    stream: int = 1
    """1 for stdout, 2 for stderr."""
    offset: int = 0


# --- snapshots and refs ---------------------------------------------------------------------------


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class RefAcquired(Event):
    """Someone took a reference on a snapshot; it must be released or handed on."""

    ref_id: str
    snapshot_id: str
    holder_kind: str
    """``solve``, ``vertex``, ``cache``, ``export``, ``gateway`` or ``daemon``."""
    holder_id: str
    build_ref: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class RefReleased(Event):
    """A reference on a snapshot was given up."""

    ref_id: str
    snapshot_id: str
    reason: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotCreated(Event):
    """A snapshot was prepared on a worker (announced before it exists on disk)."""

    snapshot_id: str
    worker: str = ""
    snapshotter: str = ""
    parent: str | None = None
    kind: str = "active"
    """``active`` (writable) or ``view`` (read-only)."""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotCommitted(Event):
    """An active snapshot became an immutable layer."""

    snapshot_id: str
    size_bytes: int = 0
    digest: str = ""
    from_active: str = ""
    """The active snapshot this one was committed from (it no longer exists afterwards)."""
    parent: str | None = None


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRemoved(Event):
    """A snapshot's data was deleted from disk."""

    snapshot_id: str
    reason: str = ""
    size_bytes: int = 0


# --- cache ----------------------------------------------------------------------------------------


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRecordAdded(Event):
    """A vertex result became reusable under a cache key."""

    cache_key: str
    vertex: str
    snapshot_id: str
    output: int = 0
    worker: str = ""
    build_ref: str = ""
    source: str = "local"
    """``local`` for a result built here, or ``import:<type>`` for one taken from a cache import."""
    size_bytes: int = 0


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRecordRemoved(Event):
    """A cache record was dropped (prune, or its data went missing)."""

    cache_key: str
    reason: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class CacheExportStarted(Event):
    """A cache export began."""

    build_ref: str
    export_id: str
    type: str
    attrs: dict[str, str] = field(default_factory=dict)
    mode: str = "min"


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class CacheExportCompleted(Event):
    """A cache export finished."""

    build_ref: str
    export_id: str
    manifest_digest: str = ""
    records: int = 0
    layers: int = 0
    bytes_written: int = 0
    layers_written: int = 0
    """Layers the target did not have yet (``layers - layers_written`` it already had)."""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class CacheExportFailed(Event):
    """A cache export failed; with ``ignore-error`` the build goes on."""

    build_ref: str
    export_id: str
    error: str
    ignored: bool = False


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class CacheImported(Event):
    """Cache records were read from an import source."""

    build_ref: str
    type: str
    attrs: dict[str, str] = field(default_factory=dict)
    manifest_digest: str = ""
    records: int = 0
    """Records offered (unpacked when a lookup hits them; older events: unpacked at import)."""
    bytes_read: int = 0
    records_matched: int = 0
    """Records the cache index already had on the worker (nothing unpacked)."""
    records_skipped: int = 0
    """Records left out because a blob was corrupt or missing (``ignore-error=true``)."""
    layers: int = 0
    """Layers unpacked into new snapshots."""
    error: str = ""
    """Why the import (or, when ``records_skipped``, a record) failed."""
    offered: tuple[str, ...] = ()
    """``<cache key>#<output>`` of each record offered (unpacked only when a lookup hits it)."""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class ExportCompleted(Event):
    """An exporter (local, tar, oci, image) wrote a build's result."""

    build_ref: str
    exporter: str
    attrs: dict[str, str] = field(default_factory=dict)
    response: dict[str, str] = field(default_factory=dict)


# --- daemon and workers ---------------------------------------------------------------------------


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRegistered(Event):
    """A daemon enabled a worker."""

    worker: str
    executor: str = ""
    snapshotter: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    platforms: tuple[str, ...] = ()
    daemon_id: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonStarted(Event):
    """A daemon process started on a root and database."""

    daemon_id: str
    version: str = ""
    root: str = ""
    hostname: str = ""
    pid: int = 0


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonStopped(Event):
    """A daemon process stopped cleanly."""

    daemon_id: str
    reason: str = ""


# --- build history --------------------------------------------------------------------------------


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class BuildHistoryPinned(Event):
    """A build's history entry was pinned (``pinned``) or unpinned; pinned entries are kept."""

    build_ref: str
    pinned: bool = True


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class BuildHistoryDeleted(Event):
    """A build's history entry was deleted: it leaves the history; its events stay in the log."""

    build_ref: str
    reason: str = ""


# --- resume after a daemon restart (issue 5) ------------------------------------------------------


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class SolveResumed(Event):
    """A daemon took up a build that an earlier daemon process left unfinished (it died)."""

    build_ref: str
    daemon_id: str = ""
    previous_daemon_id: str = ""
    attempt: int = 2
    """1 is the first run; each resume adds one."""
    interrupted: tuple[str, ...] = ()
    """Vertices that had started and never ended (each also gets ``VertexInterrupted``)."""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class VertexResultMissing(Event):
    """A vertex completed before a restart, but its result is gone or damaged: it runs again."""

    build_ref: str
    vertex: str
    snapshot_id: str = ""
    reason: str = ""


# --- client-side frontends: the gateway (issue 7) -------------------------------------------------
# A gateway job is a build (``build-<ref>``, SolveRequested with frontend ``gateway.v0``) whose
# frontend runs in the client. Its events go to the job's stream; the results it hands to the client
# are RefAcquired with holder kind ``gateway`` and holder id the job's ref, so they end with the job
# like any build's refs (the refs projection needs nothing new) and a ref left unreleased is a leak.


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySolveRequested(Event):
    """The client-side frontend of job ``build_ref`` asked for a solve, run as build ``solve_ref``."""

    build_ref: str
    solve_ref: str
    frontend: str = ""
    frontend_attrs: dict[str, str] = field(default_factory=dict)
    definition_digest: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySolveCompleted(Event):
    """A gateway solve ended and its result was given to the client as ``ref_id`` (empty: no files)."""

    build_ref: str
    solve_ref: str
    ref_id: str = ""
    snapshot_id: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySolveFailed(Event):
    """A gateway solve failed; the error went back to the client-side frontend."""

    build_ref: str
    solve_ref: str
    error: str


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayWarning(Event):
    """The client-side frontend reported a warning about the build."""

    build_ref: str
    message: str
    level: int = 2
    detail: tuple[str, ...] = ()
    url: str = ""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayReturned(Event):
    """The client-side frontend returned: a result (``ref_id``, empty for no files) or an error."""

    build_ref: str
    ref_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    """Result metadata; values that are not UTF-8 text are stored as ``base64:<data>``."""
    error: str = ""


# --- local contexts sent to the daemon, content-addressed (issue 4) -------------------------------


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class LocalContextReceived(Event):
    """A local dir of a build is in the daemon's context store, as manifest ``manifest_digest``.

    Recorded in the build's stream with ``SolveRequested``, before the solve starts; the files are
    the manifest's blobs under the daemon root (``contexts/``), so the build can be run again from
    them. ``source`` is ``upload`` (sent over gRPC), ``host`` (a path on the daemon host, read there)
    or ``embedded`` (read by the ``buildsvc`` process that ran the build itself); for a gateway job's
    solves ``job`` (the job's own dirs, nothing sent again) or ``input:NAME`` (the result of frontend
    input ``NAME``, asked for with the frontend option ``context:DIR=input:NAME``).
    """

    build_ref: str
    name: str
    manifest_digest: str
    files: int = 0
    bytes_total: int = 0
    files_uploaded: int = 0
    """Distinct file contents that had to be sent or copied in (the rest were stored already)."""
    bytes_uploaded: int = 0
    files_reused: int = 0
    source: str = ""
    host_path: str = ""
    """For ``host`` and ``embedded``: the directory that was read."""


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class LocalContextsPruned(Event):
    """A prune removed ``manifests`` from the daemon's context store, with the trees made from them
    and the blobs no remaining manifest names (blobs no manifest named at all among them).

    Recorded in the ``contexts`` stream once the files are gone, when anything was removed; the
    builds that named these manifests can no longer be run again (``build --rerun``).
    """

    manifests: tuple[str, ...]
    blobs_removed: int = 0
    bytes_reclaimed: int = 0
    trees_removed: int = 0


# --- frontend inputs of a gateway job (issue 7) ---------------------------------------------------


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class FrontendInputReceived(Event):
    """A gateway job was given the definition ``definition`` as frontend input ``name`` (BuildKit's
    FrontendInputs); recorded with its ``SolveRequested`` so the job's inputs are in the log.
    """

    build_ref: str
    name: str
    definition: JsonValue = None
    definition_digest: str = ""


# --- debugging a recorded build: `history debug REF -- CMD` (issue 5) -----------------------------


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class BuildDebugged(Event):
    """A debug build ran a command in place of a recorded build's failed step (who: the actor)."""

    build_ref: str
    """The debug build (its own stream; ``SolveRequested.rerun_of`` names the debugged build)."""
    debugged: str
    vertex: str
    """The failed step of ``debugged`` whose inputs, env, cwd, user and mounts the command got."""
    command: tuple[str, ...] = ()


# --- outputs the client downloads: `-o type=local|tar|oci` against a daemon (issue 4) ----------
# Stream ``outputs-<ref>``: what became of a build's outputs staged for its client after the build
# ended (the staging itself is told by ExportCompleted, its attrs naming ``client-dest``).


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class OutputFetched(Event):
    """The client downloaded output ``index`` of a build (every byte, ``digest``); staging removed."""

    build_ref: str
    index: int
    exporter: str
    digest: str = ""
    size: int = 0


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class OutputDiscarded(Event):
    """Output ``index`` of a build was removed before its client fetched it (prune, daemon start)."""

    build_ref: str
    index: int
    reason: str = ""


# --- lazy cache imports (issue 6's speed work) ----------------------------------------------------
# Stream ``cache-import-<id>``: an import offers its records (CacheImported); a record is unpacked
# when a solve's lookup hits it, recorded there too (snapshots, CacheRecordAdded), or, when a blob
# fails its check then, recorded as a miss.


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class CacheImportMiss(Event):
    """An imported record was hit but a blob of its layers failed its check: a miss, the step ran."""

    build_ref: str
    """The build that imported it."""
    cache_key: str
    error: str
