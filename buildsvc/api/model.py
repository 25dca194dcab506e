"""What the API speaks in, as plain Python: the shapes both sides of the wire share.

The servicers turn engine objects and events into these (a build's events through
:mod:`buildsvc.api.updates`) and :mod:`buildsvc.api.convert` turns
these into protobuf messages and back, so the command line sees the same objects whether it runs
the engine in its own process or talks to a daemon. No protobuf type appears here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buildsvc.api.progress_model import BuildUpdate, StatusUpdate, VertexLog, VertexUpdate
    from buildsvc.api.records import BuildRecord, DaemonInfo, HistoryEvent, WorkerRecord, worker_record
    from buildsvc.daemon.usage import ContextsPruned, ContextStoreUsage, DiskUsage, PruneSkipped, UsageRecord

__all__ = [
    "FINAL_EVENT_TYPES",
    "BuildRecord",
    "BuildUpdate",
    "ContextStoreUsage",
    "ContextsPruned",
    "DaemonInfo",
    "DiskUsage",
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

# A build's progress and the records of the other calls (workers, info, history, disk usage, prune)
# are made on first use: a quiet build's client (the no-op rebuild, whose whole cost is the client
# process) needs none of them, and each frozen dataclass costs ~0.35 ms to make at import.
_LAZY = {
    "BuildUpdate": "buildsvc.api.progress_model",
    "StatusUpdate": "buildsvc.api.progress_model",
    "VertexLog": "buildsvc.api.progress_model",
    "VertexUpdate": "buildsvc.api.progress_model",
    "BuildRecord": "buildsvc.api.records",
    "DaemonInfo": "buildsvc.api.records",
    "HistoryEvent": "buildsvc.api.records",
    "WorkerRecord": "buildsvc.api.records",
    "worker_record": "buildsvc.api.records",
    "ContextStoreUsage": "buildsvc.daemon.usage",
    "ContextsPruned": "buildsvc.daemon.usage",
    "DiskUsage": "buildsvc.daemon.usage",
    "PruneSkipped": "buildsvc.daemon.usage",
    "UsageRecord": "buildsvc.daemon.usage",
}


def __getattr__(name: str) -> Any:
    """A class of ``_LAZY``, loaded when first named (``from buildsvc.api.model import WorkerRecord``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
