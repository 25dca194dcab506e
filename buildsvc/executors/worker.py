"""Workers: an executor plus a snapshotter, with labels and a platform, and how to find them.

The names follow design.md: ``runc-overlay`` (the default), ``crun-overlay``, ``runc-native``.
A worker is enabled only when what it needs works here, found by trying it once (an overlay mount).
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import tempfile
from dataclasses import dataclass

from buildsvc.executors import mounts
from buildsvc.executors.errors import MountFailure
from buildsvc.executors.native import NativeSnapshotter
from buildsvc.executors.overlay import OverlaySnapshotter
from buildsvc.executors.runtime import OciRuntimeExecutor, runtime_launcher
from buildsvc.solver.worker import Executor, Platform, Snapshotter, WorkerInfo

LABEL_EXECUTOR = "buildsvc.worker.executor"
LABEL_SNAPSHOTTER = "buildsvc.worker.snapshotter"
LABEL_HOSTNAME = "buildsvc.worker.hostname"

DEFAULT_WORKER = "runc-overlay"

_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Worker:
    """Runs build steps: an executor on a snapshotter's filesystems."""

    info: WorkerInfo
    executor: Executor
    snapshotter: Snapshotter

    @property
    def name(self) -> str:
        """The worker's name, e.g. ``runc-overlay``."""
        return self.info.name


def host_platform() -> Platform:
    """This machine's platform in OCI terms (``linux/amd64``)."""
    machine = platform.machine()
    return Platform(os="linux", architecture=_ARCHITECTURES.get(machine, machine))


def overlay_supported(root: str) -> bool:
    """Whether an overlay mount with an upper dir works on ``root``'s filesystem (tried, not guessed)."""
    os.makedirs(root, exist_ok=True)
    probe = tempfile.mkdtemp(prefix=".overlay-probe-", dir=root)
    try:
        for d in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(probe, d))
        merged = os.path.join(probe, "merged")
        try:
            mounts.mount(
                "overlay",
                "overlay",
                merged,
                [
                    f"lowerdir={os.path.join(probe, 'lower')}",
                    f"upperdir={os.path.join(probe, 'upper')}",
                    f"workdir={os.path.join(probe, 'work')}",
                    "index=off",
                ],
            )
        except MountFailure:
            return False
        try:
            with open(os.path.join(merged, "probe"), "w", encoding="ascii") as f:
                f.write("ok")
            return os.path.exists(os.path.join(probe, "upper", "probe"))
        finally:
            mounts.unmount(merged)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def detect_workers(root: str) -> list[Worker]:
    """The workers that can run on this machine, default first; their state lives under ``root``."""
    root = os.path.abspath(root)
    runtimes = {name: shutil.which(name) for name in ("runc", "crun")}
    overlay = overlay_supported(root)
    wanted = [
        ("runc-overlay", "runc", "overlay", overlay),
        ("crun-overlay", "crun", "overlay", overlay),
        ("runc-native", "runc", "native", True),
    ]
    workers = []
    for name, runtime, snapshotter_name, usable in wanted:
        binary = runtimes[runtime]
        if binary is None or not usable:
            continue
        workers.append(make_worker(os.path.join(root, name), name, runtime, binary, snapshotter_name))
    return workers


def make_worker(root: str, name: str, runtime: str, binary: str, snapshotter_name: str) -> Worker:
    """Build one worker keeping its runtime state and snapshots under ``root``."""
    executor = OciRuntimeExecutor(
        runtime=runtime,
        binary=binary,
        root=os.path.join(root, "executor"),
        launcher=runtime_launcher(runtime),
    )
    snapshots = os.path.join(root, "snapshots")
    snapshotter: Snapshotter = (
        OverlaySnapshotter(snapshots) if snapshotter_name == "overlay" else NativeSnapshotter(snapshots)
    )
    info = WorkerInfo(
        name=name,
        executor=runtime,
        snapshotter=snapshotter_name,
        platform=host_platform(),
        labels={
            LABEL_EXECUTOR: runtime,
            LABEL_SNAPSHOTTER: snapshotter_name,
            LABEL_HOSTNAME: socket.gethostname(),
        },
    )
    return Worker(info=info, executor=executor, snapshotter=snapshotter)
