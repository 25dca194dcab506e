"""buildsvc.executors: workers (OCI runtime executors on overlay or copying snapshotters).

Implements the ``Executor`` and ``Snapshotter`` ports of ``buildsvc.solver.worker``.
"""

from __future__ import annotations

from buildsvc.executors.errors import (
    InvalidPath,
    InvalidProcessSpec,
    InvalidSnapshotKey,
    MountFailure,
    ProcessCancelled,
    ProcessExitError,
    RuntimeFailure,
    SnapshotExists,
    SnapshotInUse,
    SnapshotNotFound,
    SnapshotStateError,
    UnknownUser,
)
from buildsvc.executors.native import NativeSnapshotter
from buildsvc.executors.oci_spec import SpecOptions, build_spec
from buildsvc.executors.overlay import OverlaySnapshotter
from buildsvc.executors.rootfs import make_busybox_rootfs
from buildsvc.executors.runtime import OciRuntimeExecutor, runtime_launcher
from buildsvc.executors.worker import (
    DEFAULT_WORKER,
    Worker,
    detect_workers,
    host_platform,
    make_worker,
    overlay_supported,
)
from buildsvc.solver.errors import NoMatchingWorker
from buildsvc.solver.worker import select_worker

__all__ = [
    "DEFAULT_WORKER",
    "InvalidPath",
    "InvalidProcessSpec",
    "InvalidSnapshotKey",
    "MountFailure",
    "NativeSnapshotter",
    "NoMatchingWorker",
    "OciRuntimeExecutor",
    "OverlaySnapshotter",
    "ProcessCancelled",
    "ProcessExitError",
    "RuntimeFailure",
    "SnapshotExists",
    "SnapshotInUse",
    "SnapshotNotFound",
    "SnapshotStateError",
    "SpecOptions",
    "UnknownUser",
    "Worker",
    "build_spec",
    "detect_workers",
    "host_platform",
    "make_busybox_rootfs",
    "make_worker",
    "overlay_supported",
    "runtime_launcher",
    "select_worker",
]
