"""The records of the calls other than Solve and Status (workers, info, history), as plain Python.

Part of the API model (:mod:`buildsvc.api.model` names them all), kept apart so a build's client
does not make these classes at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # executors (runc, overlayfs) are the daemon's: a client only names them
    from buildsvc.executors import Worker

__all__ = ["BuildRecord", "DaemonInfo", "HistoryEvent", "WorkerRecord", "worker_record"]


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
