"""The daemon's build engine: workers, image store, cache index and solver, wired on an open state.

:func:`open_engine` finds the workers this machine can run (``runc-overlay`` first), records the
daemon's start and each worker it enables (stream ``daemon-<id>``), and builds the :class:`Solver`
over them. :meth:`Engine.export_local` and :meth:`Engine.export_tar` copy a result out through a
read-only view of its snapshot; the view is a snapshot like any other, so its creation, the ref an
export holds on it and its removal are events of the build, and the leak report stays empty.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from buildsvc.daemon.state import State
from buildsvc.errors import ExecutionError, InvalidInput
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.executors import DEFAULT_WORKER, Worker, detect_workers
from buildsvc.executors.backends import LocalFileBackend, LocalLayerBackend
from buildsvc.projections import SqlCacheIndex
from buildsvc.solver.engine import ResultRef, Solver
from buildsvc.solver.handlers import Backends
from buildsvc.solver.recording import BuildRecorder
from buildsvc.sources import ImageStore, RegistryClient, RegistryOptions
from buildsvc.sources.adapter import StoreImageSource

__all__ = ["Engine", "open_engine"]


def _version() -> str:
    try:
        return version("buildsvc")
    except PackageNotFoundError:
        return ""


@dataclass(slots=True, kw_only=True)
class Engine:
    """A running build engine on one state root (close it to record the daemon's stop)."""

    state: State
    solver: Solver
    workers: list[Worker]
    daemon_id: str
    registry: RegistryClient
    _closed: bool = field(default=False, repr=False)

    @property
    def stream(self) -> str:
        """The daemon's event stream."""
        return f"daemon-{self.daemon_id}"

    def close(self, reason: str = "closed") -> None:
        """Stop the vertex threads, record ``DaemonStopped`` and close the registry client."""
        if self._closed:
            return
        self._closed = True
        try:
            self.solver.close()
            self.state.store.append(self.stream, [ev.DaemonStopped(daemon_id=self.daemon_id, reason=reason)])
        finally:
            self.registry.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- exports ---------------------------------------------------------------------------------

    def export_local(self, result: ResultRef | None, dest: Path, *, build_ref: str) -> None:
        """Copy the result's tree into the directory ``dest`` (created; owners, modes, links kept)."""
        dest.mkdir(parents=True, exist_ok=True)
        with self._view(result, build_ref) as root:
            if root is None:
                return
            done = subprocess.run(
                ["cp", "-a", "--", f"{root}/.", str(dest)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise ExecutionError(f"export to {dest} failed: {done.stderr.strip()}")

    def export_tar(self, result: ResultRef | None, dest_file: Path, *, build_ref: str) -> None:
        """Write the result's tree as an uncompressed tar (names relative, no root entry)."""
        dest_file.parent.mkdir(parents=True, exist_ok=True)
        with (
            self._view(result, build_ref) as root,
            tarfile.open(dest_file, "w", format=tarfile.PAX_FORMAT) as tar,
        ):
            if root is not None:
                for child in sorted(root.iterdir()):
                    tar.add(str(child), arcname=child.name, recursive=True)

    @contextmanager
    def _view(self, result: ResultRef | None, build_ref: str) -> Iterator[Path | None]:
        """A mounted read-only view of ``result``'s snapshot, recorded in ``build-<build_ref>``."""
        if result is None or result.snapshot_id is None:
            yield None
            return
        snapshotter = result.worker.snapshotter
        recorder = BuildRecorder(self.state.store, build_ref)
        step = recorder.step()
        key = f"export-{uuid.uuid4().hex}"
        step.record(
            ev.SnapshotCreated(
                snapshot_id=key,
                worker=result.worker.info.name,
                snapshotter=snapshotter.name,
                parent=result.snapshot_id,
                kind="view",
            )
        )
        ref = step.acquire(key, "export", key)
        step.flush()  # announced before it exists
        snapshotter.view(key, result.snapshot_id)
        try:
            mounted = snapshotter.mount(key)
            try:
                yield Path(mounted.path)
            finally:
                snapshotter.unmount(key)
        finally:
            step.release(ref, reason="export done")
            snapshotter.remove(key)
            step.record(ev.SnapshotRemoved(snapshot_id=key, reason="export done"))
            step.flush()


def _select(found: Sequence[Worker], names: Sequence[str] | None) -> list[Worker]:
    if names is None:
        return sorted(found, key=lambda w: w.name != DEFAULT_WORKER)
    by_name = {w.name: w for w in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        available = ", ".join(by_name) or "none"
        raise InvalidInput(f"worker {', '.join(missing)} is not available here (available: {available})")
    return [by_name[n] for n in dict.fromkeys(names)]


def open_engine(
    state: State,
    *,
    worker_names: Sequence[str] | None = None,
    max_parallel: int = 4,
    insecure_registries: bool = False,
) -> Engine:
    """Detect the workers under ``state.root/workers``, record them, and build the solver."""
    workers = _select(detect_workers(str(state.root / "workers")), worker_names)
    if not workers:
        raise InvalidInput("no worker can run here (runc or crun is needed)")
    daemon_id = uuid.uuid4().hex[:16]
    events: list[Event] = [
        ev.DaemonStarted(
            daemon_id=daemon_id,
            version=_version(),
            root=str(state.root),
            hostname=socket.gethostname(),
            pid=os.getpid(),
        )
    ]
    for w in workers:
        p = w.info.platform
        events.append(
            ev.WorkerRegistered(
                worker=w.name,
                executor=w.info.executor,
                snapshotter=w.info.snapshotter,
                labels=dict(w.info.labels),
                platforms=(f"{p.os}/{p.architecture}",),
                daemon_id=daemon_id,
            )
        )
    registry = RegistryClient(RegistryOptions(insecure=insecure_registries))
    try:
        images = ImageStore(str(state.root / "content"), registry=registry)
        backends = Backends(
            files=LocalFileBackend(), layers=LocalLayerBackend(), images=StoreImageSource(images)
        )
        solver = Solver(
            state.store,
            SqlCacheIndex(state.db),
            workers,
            backends,
            state_dir=state.root / "solver",
            max_parallel=max_parallel,
        )
        state.store.append(f"daemon-{daemon_id}", events)
    except BaseException:
        registry.close()
        raise
    return Engine(state=state, solver=solver, workers=workers, daemon_id=daemon_id, registry=registry)
