"""What an op handler gets while it runs one vertex: snapshots with their events, refs, logs, cancel.

Every snapshot a vertex makes goes through here, so every one is announced (SnapshotCreated and a
ref held by the vertex) before it exists and confirmed (SnapshotCommitted, or released and
SnapshotRemoved) after; :meth:`VertexContext.cleanup` releases and removes whatever the handler did
not commit, whether the step succeeded, failed or was cancelled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from buildsvc.events import catalog as ev
from buildsvc.ids import new_hex
from buildsvc.solver.recording import HeldRef, LogWriter, StepRecorder
from buildsvc.solver.worker import DirectReads, SnapshotMount, Terminal, Worker

__all__ = ["VertexContext"]


class VertexContext:
    """One vertex's run on one worker."""

    def __init__(
        self,
        *,
        step: StepRecorder,
        worker: Worker,
        build_ref: str,
        vertex: str,
        name: str,
        cancel: threading.Event,
        state_dir: Path,
        local_dirs: Mapping[str, Path],
        log: LogWriter,
        terminal: Terminal | None = None,
    ) -> None:
        self.step = step
        self.worker = worker
        self.build_ref = build_ref
        self.vertex = vertex
        self.name = name
        self.cancel = cancel
        self.state_dir = state_dir
        self.local_dirs = local_dirs
        self.log = log
        self.terminal = terminal
        """The terminal an exec runs on (``history debug``'s shell), else its output is logged."""
        self._held: dict[str, HeldRef] = {}
        self._mounted: list[str] = []
        self._locks: list[int] = []
        self._scratch_dirs: list[tempfile.TemporaryDirectory[str]] = []

    @property
    def snapshotter_name(self) -> str:
        """The worker's snapshotter."""
        return self.worker.snapshotter.name

    def _announce(self, kind: str, parent: str | None) -> str:
        """Record a new snapshot of this step and the vertex's ref on it (buffered); its key."""
        key = f"{kind}-{new_hex()}"
        self.step.record(
            ev.SnapshotCreated(
                snapshot_id=key,
                worker=self.worker.info.name,
                snapshotter=self.snapshotter_name,
                parent=parent,
                kind=kind,
            )
        )
        self._held[key] = self.step.acquire(key, "vertex", self.vertex)
        return key

    def prepare(self, parent: str | None) -> str:
        """A new writable snapshot on ``parent`` (announced before it is made)."""
        key = self._announce("active", parent)
        self.step.flush()
        self.worker.snapshotter.prepare(key, parent)
        return key

    def view(self, committed: str) -> str:
        """A read-only view of a committed snapshot, for reading an input."""
        key = self._announce("view", committed)
        self.step.flush()
        self.worker.snapshotter.view(key, committed)
        return key

    def mount(self, key: str) -> SnapshotMount:
        """Make a snapshot of this step visible on the host until the step ends."""
        mounted = self.worker.snapshotter.mount(key)
        self._mounted.append(key)
        return mounted

    def read_input(self, committed: str | None) -> Path | None:
        """A mounted read-only view of an input (``None`` for scratch)."""
        return self.read_inputs([committed])[0]

    def read_inputs(self, committed: Sequence[str | None]) -> list[Path | None]:
        """Read-only trees of several inputs: in place where the snapshotter has one as a directory,
        else mounted views, announced in one append.
        """
        # All views are announced in one append, then made. With no view to make there is no side
        # effect to announce: what is pending goes with the step's next append instead.
        direct = self.whole_trees(committed)
        keys = self._announce_views(committed, direct)
        if any(k is not None for k in keys):
            self.step.flush()
        return self._make_views(keys, committed, direct)

    def prepare_reading(
        self, parent: str | None, committed: Sequence[str | None]
    ) -> tuple[str, list[Path | None]]:
        """:meth:`prepare` and :meth:`read_inputs` announced in one append (one commit, not two)."""
        key = self._announce("active", parent)
        direct = self.whole_trees(committed)
        views = self._announce_views(committed, direct)
        self.step.flush()
        self.worker.snapshotter.prepare(key, parent)
        return key, self._make_views(views, committed, direct)

    def whole_trees(self, committed: Sequence[str | None]) -> list[Path | None]:
        """Each input's tree as a plain directory the snapshotter keeps it in (to read, or hard
        link from: a committed snapshot's files are never written again), or None where reading it
        takes a view (see :meth:`read_inputs`) and for scratch.
        """
        return [self._direct(c) for c in committed]

    def _direct(self, committed: str | None) -> Path | None:
        """The input's tree as a plain directory, when the snapshotter has it so (no view needed).

        A merge of ten file-op results then reads them in place instead of making, mounting and
        removing nine views (and recording four events for each).
        """
        snapshotter = self.worker.snapshotter
        if committed is None or not isinstance(snapshotter, DirectReads):
            return None
        found = snapshotter.committed_dir(committed)
        return Path(found) if found is not None else None

    def _announce_views(
        self, committed: Sequence[str | None], direct: Sequence[Path | None]
    ) -> list[str | None]:
        return [
            self._announce("view", parent) if parent is not None and path is None else None
            for parent, path in zip(committed, direct, strict=True)
        ]

    def _make_views(
        self, keys: Sequence[str | None], committed: Sequence[str | None], direct: Sequence[Path | None]
    ) -> list[Path | None]:
        paths: list[Path | None] = []
        for view, source, path in zip(keys, committed, direct, strict=True):
            if path is not None:
                paths.append(path)
                continue
            if view is None or source is None:
                paths.append(None)
                continue
            self.worker.snapshotter.view(view, source)
            paths.append(Path(self.mount(view).path))
        return paths

    def commit(self, active: str) -> str:
        """Turn a prepared snapshot into a committed layer; its ref is released, the result returned."""
        self._unmount(active)
        key = f"snap-{new_hex()}"
        info = self.worker.snapshotter.commit(key, active)
        self.step.record(ev.SnapshotCommitted(snapshot_id=key, from_active=active, parent=info.parent))
        self.step.release(self._held.pop(active), reason="committed")
        return key

    def cache_mount_dir(self, cache_id: str, sharing: str) -> Path:
        """The persistent directory of a cache mount (``shared``, ``locked`` or ``private``)."""
        safe = hashlib.sha256(f"{self.worker.info.name}\0{cache_id}".encode()).hexdigest()[:32]
        path = self.state_dir / "cache-mounts" / safe
        path.mkdir(parents=True, exist_ok=True)
        if sharing == "shared":
            return path
        fd = os.open(path, os.O_RDONLY)
        if sharing == "locked":
            fcntl.flock(fd, fcntl.LOCK_EX)  # released in cleanup; waits for the other user
            self._locks.append(fd)
            return path
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # "private": a busy cache gives this step a fresh, throwaway directory instead of waiting.
            os.close(fd)
            scratch = tempfile.TemporaryDirectory(prefix="cache-private-", dir=self.state_dir)
            self._scratch_dirs.append(scratch)
            return Path(scratch.name)
        self._locks.append(fd)
        return path

    def _unmount(self, key: str) -> None:
        if key in self._mounted:
            self.worker.snapshotter.unmount(key)
            self._mounted.remove(key)

    def cleanup(self) -> None:
        """Unmount everything and remove (recorded) every snapshot that was not committed."""
        errors: list[BaseException] = []
        for key in list(reversed(self._mounted)):
            try:
                self._unmount(key)
            except Exception as e:
                errors.append(e)
        for key, ref in list(self._held.items()):
            self.step.release(ref, reason="step ended")
            try:
                self.worker.snapshotter.remove(key)
            except Exception as e:
                errors.append(e)
                continue
            self.step.record(ev.SnapshotRemoved(snapshot_id=key, reason="not committed"))
            del self._held[key]
        for fd in self._locks:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._locks.clear()
        for scratch in self._scratch_dirs:
            scratch.cleanup()
        self._scratch_dirs.clear()
        if errors:
            raise errors[0]

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Flush what is announced, then run the block with output flushed as it comes."""
        self.step.flush()
        with self.log.ticking():
            yield
