"""What the API speaks in, as plain Python: the shapes both sides of the wire share.

The servicers turn engine objects and events into these (a build's events through
:mod:`buildsvc.api.updates`) and :mod:`buildsvc.api.convert` turns
these into protobuf messages and back, so the command line sees the same objects whether it runs
the engine in its own process or talks to a daemon. No protobuf type appears here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsvc.daemon.usage import PruneSkipped, UsageRecord

if TYPE_CHECKING:  # executors (runc, overlayfs) are the daemon's: a client only names them
    from buildsvc.executors import Worker

__all__ = [
    "FINAL_EVENT_TYPES",
    "BuildRecord",
    "BuildUpdate",
    "DaemonInfo",
    "HistoryEvent",
    "PruneSkipped",
    "SolveOptions",
    "StatusUpdate",
    "UsageRecord",
    "VertexLog",
    "VertexUpdate",
    "WorkerRecord",
    "worker_record",
]

# By name, not from the catalog: the client's import path stays off the event classes (a test holds
# these to the catalog's names).
FINAL_EVENT_TYPES = frozenset({"SolveCompleted", "SolveFailed", "SolveCancelled"})
"""The events that end a build (and with it a Status stream)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SolveOptions:
    """A Solve as the daemon receives it (the definition stays JSON: the solver validates it)."""

    build_ref: str
    definition_json: bytes
    frontend: str = ""
    frontend_attrs: Mapping[str, str] = field(default_factory=dict)
    exporters: tuple[Mapping[str, str], ...] = ()
    """Each exporter's attrs with its ``type`` among them (``type=local,dest=DIR``)."""
    local_dirs: Mapping[str, Path] = field(default_factory=dict)
    actor: str = ""
    local_contexts: Mapping[str, str] = field(default_factory=dict)
    """Local name -> manifest digest of a dir sent with the Content service (see Client.sync_dir)."""
    cache_exports: tuple[Mapping[str, str], ...] = ()
    """Each cache export's attrs with its ``type`` among them (``type=local,dest=DIR,mode=max``)."""
    cache_imports: tuple[Mapping[str, str], ...] = ()
    frontend_inputs: Mapping[str, bytes] = field(default_factory=dict)
    """Name -> definition (JSON form) for a client-side frontend's LLBBridge Inputs."""
    rerun_of: str = ""
    """``build --rerun REF``: the recorded build to run again (see buildsvc.daemon.rerun)."""
    from_failure: bool = False
    """With ``rerun_of``: start from its failed vertex, what completed before it reused."""
    debug_command: tuple[str, ...] = ()
    """With ``rerun_of``: run this in place of its failed step (``history debug``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VertexUpdate:
    """A vertex changed state: ``started``, ``cached``, ``completed``, ``failed`` or ``interrupted``."""

    digest: str
    state: str
    name: str = ""
    worker: str = ""
    error: str = ""
    exit_code: int | None = None
    duration_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class VertexLog:
    """A piece of a vertex's output."""

    vertex: str
    data: bytes
    stream: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildUpdate:
    """The build changed state: ``requested``, ``running``, ``completed``, ``failed``, ``cancelled``."""

    status: str
    error: str = ""
    vertex: str = ""
    exit_code: int | None = None
    source_location: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusUpdate:
    """One event of a build, with the typed update progress displays use (if it has one)."""

    position: int
    time: datetime
    type: str
    payload_json: str
    vertex: VertexUpdate | None = None
    log: VertexLog | None = None
    build: BuildUpdate | None = None

    @property
    def payload(self) -> dict[str, Any]:
        """The event's payload as a JSON object."""
        value: dict[str, Any] = json.loads(self.payload_json)
        return value

    @property
    def final(self) -> bool:
        """Whether this update ends the build."""
        return self.type in FINAL_EVENT_TYPES


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """A worker as ``ListWorkers`` describes it."""

    name: str
    executor: str
    snapshotter: str
    labels: Mapping[str, str] = field(default_factory=dict)
    platforms: tuple[str, ...] = ()


def worker_record(worker: Worker) -> WorkerRecord:
    """The record of an enabled worker."""
    info = worker.info
    return WorkerRecord(
        name=info.name,
        executor=info.executor,
        snapshotter=info.snapshotter,
        labels=dict(info.labels),
        platforms=(f"{info.platform.os}/{info.platform.architecture}",),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonInfo:
    """What ``Info`` says about the daemon."""

    version: str
    daemon_id: str
    root: str
    hostname: str
    pid: int
    database: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildRecord:
    """A build in the history (the builds projection, or the event that just changed it)."""

    build_ref: str
    status: str
    frontend: str = ""
    actor: str = ""
    requested_at: datetime | None = None
    ended_at: datetime | None = None
    vertices_total: int = 0
    vertices_completed: int = 0
    vertices_cached: int = 0
    error: str = ""
    error_vertex: str = ""
    exit_code: int | None = None
    pinned: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEvent:
    """``started`` or ``complete``, with the build's record."""

    type: str
    record: BuildRecord
