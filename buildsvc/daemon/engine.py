"""The daemon's build engine: workers, image store, cache index and solver, wired on an open state.

:func:`open_engine` finds the workers this machine can run (``runc-overlay`` first), records the
daemon's start and each worker it enables (stream ``daemon-<id>``), and builds the :class:`Solver`
over them. :meth:`Engine.export_local` and :meth:`Engine.export_tar` copy a result out through a
read-only view of its snapshot; the view is a snapshot like any other, so its creation, the ref an
export holds on it and its removal are events of the build, and the leak report stays empty.
:meth:`Engine.remove_snapshot` deletes a snapshot nothing holds, reading who holds what from the
ref state projection (inline, so it is as current as the log).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from buildsvc import __version__
from buildsvc.daemon.errors import SnapshotHolder, SnapshotInUse
from buildsvc.daemon.state import State
from buildsvc.daemon.telemetry import configure_tracing
from buildsvc.errors import ExecutionError, InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.executors import DEFAULT_WORKER, Worker, detect_workers
from buildsvc.executors.backends import LocalFileBackend, LocalLayerBackend
from buildsvc.projections import SqlCacheIndex
from buildsvc.projections.refs import OpenRef, live_children, snapshot_row, unreleased_refs
from buildsvc.projections.schema import cache_records
from buildsvc.solver.engine import DEFAULT_MAX_PARALLEL, ResultRef, Solver
from buildsvc.solver.handlers import Backends
from buildsvc.solver.http_source import HttpDownloader
from buildsvc.solver.recording import DAEMON_ACTOR, BuildRecorder
from buildsvc.sources import ImageStore, RegistryClient, RegistryOptions
from buildsvc.sources.adapter import StoreImageSource

if TYPE_CHECKING:
    from buildsvc.contexts import ContextStore
    from buildsvc.contexts.manifest import Entry

__all__ = ["Engine", "detect_workers_soon", "open_engine"]


@dataclass(slots=True, kw_only=True)
class Engine:
    """A running build engine on one state root (close it to record the daemon's stop)."""

    state: State
    solver: Solver
    workers: list[Worker]
    daemon_id: str
    registry: RegistryClient
    images: ImageStore
    """Base images for frontends (the same store the solver pulls through)."""
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
            self.state.store.append(
                self.stream, [ev.DaemonStopped(daemon_id=self.daemon_id, reason=reason)], actor=DAEMON_ACTOR
            )
        finally:
            self.registry.close()
            if self.solver.backends.http is not None:
                self.solver.backends.http.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- snapshots -------------------------------------------------------------------------------

    def remove_snapshot(
        self, worker_name: str, snapshot_id: str, *, reason: str, actor: str = DAEMON_ACTOR
    ) -> None:
        """Delete a snapshot from a worker, unless something still holds it.

        Holders are unreleased refs on it (a solve, a vertex, an export...) and live snapshots stacked
        on it (layers, views, active snapshots); any of them refuses the removal (``SnapshotInUse``)
        and nothing is recorded. A cache record is not a holder: a record on the snapshot is dropped
        first (``CacheRecordRemoved`` with its refs released), so no solve takes a hit on data that is
        about to go; then the snapshotter deletes it, and only then is ``SnapshotRemoved`` recorded
        (in ``daemon-<id>``). A deletion that fails records nothing more. ``actor`` is who asked
        (the caller of a prune), else the daemon itself.
        """
        worker = self._worker(worker_name)
        with self.state.db.read() as conn:
            row = snapshot_row(conn, snapshot_id)
            if row is None or row.state == "removed":
                raise NotFound(f"snapshot {snapshot_id} does not exist (or was removed)")
            if row.worker != worker_name:
                raise NotFound(f"snapshot {snapshot_id} is on worker {row.worker}, not {worker_name}")
            holders = self._holders(conn, snapshot_id)
            keys = sorted(
                set(
                    conn.scalars(
                        sa.select(cache_records.c.cache_key).where(
                            cache_records.c.snapshot_id == snapshot_id, cache_records.c.worker == worker_name
                        )
                    )
                )
            )
            # Every ref a removed record held, on any output or worker: its scope ends with the
            # record, so each must be released in the same append or the leak report shows it. Also
            # cache refs on this snapshot whose record is already gone.
            cache_refs: dict[str, OpenRef] = {}
            for key in keys:
                cache_refs.update((r.ref_id, r) for r in unreleased_refs(conn, holder=("cache", key)))
            cache_refs.update(
                (r.ref_id, r) for r in unreleased_refs(conn, snapshot_id) if r.holder_kind == "cache"
            )
        if holders:
            raise SnapshotInUse(worker_name, snapshot_id, holders)
        dropped: list[Event] = [ev.CacheRecordRemoved(cache_key=key, reason=reason) for key in keys]
        dropped += [
            ev.RefReleased(
                ref_id=r.ref_id, snapshot_id=r.snapshot_id, reason=f"cache record removed: {reason}"
            )
            for r in cache_refs.values()
        ]
        if dropped:
            self.state.store.append(self.stream, dropped, actor=actor)
            self.solver.forget(snapshot_id)
            # A solve that found the record before it went may have taken a ref since; the record
            # stays dropped (the next solve rebuilds, never a wrong hit) but the data stays too.
            with self.state.db.read() as conn:
                holders = self._holders(conn, snapshot_id)
            if holders:
                raise SnapshotInUse(worker_name, snapshot_id, holders)
        worker.snapshotter.remove(snapshot_id)
        self.state.store.append(
            self.stream,
            [ev.SnapshotRemoved(snapshot_id=snapshot_id, reason=reason, size_bytes=row.size_bytes)],
            actor=actor,
        )

    def _holders(self, conn: sa.Connection, snapshot_id: str) -> list[SnapshotHolder]:
        held = _holders(conn, snapshot_id)
        if self.solver.holds(snapshot_id):
            # A running solve took it from the cache; its ref is written with the solve's next append.
            held.append(SnapshotHolder(kind="solve", id="a running solve", build=""))
        return held

    def _worker(self, name: str) -> Worker:
        for w in self.workers:
            if w.name == name:
                return w
        available = ", ".join(w.name for w in self.workers) or "none"
        raise NotFound(f"worker {name} is not enabled here (enabled: {available})")

    # --- exports ---------------------------------------------------------------------------------

    def export_local(self, result: ResultRef | None, dest: Path, *, build_ref: str, actor: str = "") -> None:
        """Copy the result's tree into the directory ``dest`` (created; owners, modes, links kept)."""
        dest.mkdir(parents=True, exist_ok=True)
        with self._view(result, build_ref, actor) as root:
            if root is None:
                return
            done = subprocess.run(
                ["cp", "-a", "--", f"{root}/.", str(dest)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise ExecutionError(f"export to {dest} failed: {done.stderr.strip()}")

    def export_tar(
        self, result: ResultRef | None, dest_file: Path, *, build_ref: str, actor: str = ""
    ) -> None:
        """Write the result's tree as an uncompressed tar (names relative, no root entry)."""
        dest_file.parent.mkdir(parents=True, exist_ok=True)
        with (
            self._view(result, build_ref, actor) as root,
            tarfile.open(dest_file, "w", format=tarfile.PAX_FORMAT) as tar,
        ):
            if root is not None:
                for child in sorted(root.iterdir()):
                    tar.add(str(child), arcname=child.name, recursive=True)

    def view(
        self, result: ResultRef | None, build_ref: str, actor: str = ""
    ) -> AbstractContextManager[Path | None]:
        """A recorded read-only view of ``result``'s tree (``None`` for an empty result), for exporters;
        its events are recorded for ``actor``, the build's (who asked for the export).
        """
        return self._view(result, build_ref, actor)

    @contextmanager
    def _view(self, result: ResultRef | None, build_ref: str, actor: str) -> Iterator[Path | None]:
        """A mounted read-only view of ``result``'s snapshot, recorded in ``build-<build_ref>``."""
        if result is None or result.snapshot_id is None:
            yield None
            return
        snapshotter = result.worker.snapshotter
        recorder = BuildRecorder(self.state.store, build_ref, actor=actor)
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


def _holders(conn: sa.Connection, snapshot_id: str) -> list[SnapshotHolder]:
    """Who keeps ``snapshot_id`` alive: unreleased refs other than a cache record's, then children."""
    holders = [
        SnapshotHolder(kind=r.holder_kind, id=r.holder_id, build=r.build_ref)
        for r in unreleased_refs(conn, snapshot_id)
        if r.holder_kind != "cache"
    ]
    for child in live_children(conn, snapshot_id):
        # The child's own holders say which build stacked it here (an active or view snapshot).
        build = next((r.build_ref for r in unreleased_refs(conn, child.snapshot_id) if r.build_ref), "")
        holders.append(SnapshotHolder(kind="child", id=child.snapshot_id, build=build))
    return holders


def _select(found: Sequence[Worker], names: Sequence[str] | None) -> list[Worker]:
    if names is None:
        return sorted(found, key=lambda w: w.name != DEFAULT_WORKER)
    by_name = {w.name: w for w in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        available = ", ".join(by_name) or "none"
        raise InvalidInput(f"worker {', '.join(missing)} is not available here (available: {available})")
    return [by_name[n] for n in dict.fromkeys(names)]


class _ContextTrees:
    """The solver's ``frozen_dir``: whether a local source's directory is a tree of this root's
    context store (never written once made, so its files may be hard linked into the snapshot).
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._store: ContextStore | None = None

    def __call__(self, path: Path) -> bool:
        if self._store is None:
            # Loaded with the first local source, as the store already is by whatever made the tree.
            from buildsvc.contexts import ContextStore

            self._store = ContextStore.under(self._root)
        return self._store.holds_tree(path)

    def files(self, path: Path) -> Mapping[str, Entry] | None:
        """The regular files of the tree at ``path`` as its manifest records them, by path (the
        solver's ``tree_files``: a new tree's content key need not read them); None for another dir.
        """
        if not self(path):
            return None
        assert self._store is not None
        try:
            manifest = self._store.load_manifest("sha256:" + path.name)
        except (NotFound, InvalidInput):
            return None  # pruned meanwhile, or unreadable: the key reads the files, as without this
        return {e.path: e for e in manifest.entries if e.type == "file"}


def detect_workers_soon(root: Path) -> Future[list[Worker]]:
    """Start detecting the workers of ``root`` (see :func:`open_engine`'s ``found``) in a thread.

    Detection is mostly system calls (an overlay mount tried and undone, runtimes looked up), which
    run while the caller opens the state and stores the build's contexts: an embedded build's
    start is on its critical path, a daemon's is not.
    """
    found: Future[list[Worker]] = Future()

    def detect() -> None:
        try:
            found.set_result(detect_workers(str(root / "workers")))
        except BaseException as e:
            found.set_exception(e)

    # Not a daemon thread: a command that fails before it opens the engine still waits for the
    # probe to unmount and remove what it made before the process ends.
    threading.Thread(target=detect, name="detect-workers").start()
    return found


def open_engine(
    state: State,
    *,
    worker_names: Sequence[str] | None = None,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    insecure_registries: bool = False,
    insecure_hosts: Sequence[str] = (),
    found: Future[list[Worker]] | None = None,
) -> Engine:
    """Detect the workers under ``state.root/workers`` (or take those ``found`` by
    :func:`detect_workers_soon` on the same root), record them, and build the solver.
    """
    configure_tracing()
    detected = found.result() if found is not None else detect_workers(str(state.root / "workers"))
    workers = _select(detected, worker_names)
    if not workers:
        raise InvalidInput("no worker can run here (runc or crun is needed)")
    daemon_id = uuid.uuid4().hex[:16]
    events: list[Event] = [
        ev.DaemonStarted(
            daemon_id=daemon_id,
            version=__version__,
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
    registry = RegistryClient(
        RegistryOptions(
            insecure=insecure_registries, insecure_hosts=frozenset(h.lower() for h in insecure_hosts)
        )
    )
    solver_dir = state.root / "solver"
    trees = _ContextTrees(state.root)
    try:
        images = ImageStore(str(state.root / "content"), registry=registry)
        backends = Backends(
            files=LocalFileBackend(),
            layers=LocalLayerBackend(),
            images=StoreImageSource(images),
            http=HttpDownloader(solver_dir / "downloads"),
            frozen_dir=trees,
            tree_files=trees.files,
        )
        solver = Solver(
            state.store,
            SqlCacheIndex(state.db),
            workers,
            backends,
            state_dir=solver_dir,
            max_parallel=max_parallel,
            daemon_id=daemon_id,
        )
        state.store.append(f"daemon-{daemon_id}", events, actor=DAEMON_ACTOR)
    except BaseException:
        registry.close()
        raise
    return Engine(
        state=state, solver=solver, workers=workers, daemon_id=daemon_id, registry=registry, images=images
    )
