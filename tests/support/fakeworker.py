"""A fake worker for fast solver tests: an in-memory snapshotter over temp dirs, and ops that count.

Exec vertices are interpreted, not run: ``["sleep", "0.2"]`` waits (and honours cancel), ``["fail",
"3"]`` fails with exit code 3 after printing a line, anything else succeeds at once. Each run is
counted per vertex digest, and the highest number running at once is kept.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildsvc.errors import ExecutionError, NotFound
from buildsvc.solver.context import VertexContext
from buildsvc.solver.handlers import Backends, ContentReader, OpHandler
from buildsvc.solver.ops import ExecOp, Op, Vertex, output_count
from buildsvc.solver.worker import (
    Change,
    ExecResult,
    ExecSpec,
    OutputCallback,
    Platform,
    SnapshotInfo,
    SnapshotKind,
    SnapshotMount,
    WorkerInfo,
)


class FakeSnapshotter:
    name = "fake"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots: dict[str, SnapshotInfo] = {}
        self._lock = threading.Lock()

    def _add(self, key: str, kind: SnapshotKind, parent: str | None) -> SnapshotInfo:
        with self._lock:
            if key in self.snapshots:
                raise ExecutionError(f"snapshot {key} exists")
            info = SnapshotInfo(key=key, kind=kind, parent=parent)
            self.snapshots[key] = info
            (self.root / key).mkdir(parents=True)
            return info

    def prepare(self, key: str, parent: str | None = None) -> SnapshotInfo:
        return self._add(key, SnapshotKind.ACTIVE, parent)

    def view(self, key: str, parent: str) -> SnapshotInfo:
        return self._add(key, SnapshotKind.VIEW, parent)

    def mount(self, key: str) -> SnapshotMount:
        return SnapshotMount(key=key, path=str(self.root / key), readonly=False)

    def unmount(self, key: str) -> None:
        pass

    def commit(self, key: str, active_key: str) -> SnapshotInfo:
        with self._lock:
            active = self.snapshots.pop(active_key)
            (self.root / active_key).rename(self.root / key)
            info = SnapshotInfo(key=key, kind=SnapshotKind.COMMITTED, parent=active.parent)
            self.snapshots[key] = info
            return info

    def remove(self, key: str) -> None:
        with self._lock:
            self.snapshots.pop(key)
            shutil.rmtree(self.root / key)

    def stat(self, key: str) -> SnapshotInfo:
        try:
            return self.snapshots[key]
        except KeyError:
            raise NotFound(f"snapshot {key} does not exist") from None

    def list(self) -> Sequence[SnapshotInfo]:
        return list(self.snapshots.values())

    def changes(self, key: str) -> Sequence[Change]:
        return []


class UnusedExecutor:
    name = "fake"

    def run(
        self,
        spec: ExecSpec,
        *,
        stdout: OutputCallback | None = None,
        stderr: OutputCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> ExecResult:
        raise AssertionError("the fake worker's ops never reach an executor")


@dataclass
class FakeWorker:
    info: WorkerInfo
    snapshotter: FakeSnapshotter
    executor: UnusedExecutor = field(default_factory=UnusedExecutor)


def make_fake_worker(root: Path, name: str = "fake", labels: Mapping[str, str] | None = None) -> FakeWorker:
    return FakeWorker(
        info=WorkerInfo(
            name=name,
            executor="fake",
            snapshotter="fake",
            platform=Platform(os="linux", architecture="amd64"),
            labels=dict(labels or {}),
        ),
        snapshotter=FakeSnapshotter(root / name),
    )


class FakeFailure(ExecutionError):
    def __init__(self, exit_code: int) -> None:
        super().__init__(f"process exited with code {exit_code}")
        self.exit_code = exit_code


class CountingOps:
    """A handler factory whose handlers count runs and concurrency."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, op: Op, backends: Backends) -> OpHandler:
        return _CountingHandler(self)


class _CountingHandler:
    def __init__(self, ops: CountingOps) -> None:
        self.ops = ops

    def content_key(self, vertex: Vertex, worker: object, local_dirs: Mapping[str, Path]) -> str:
        return ""

    def input_keys(self, vertex: Vertex, keys: list[str | None], read: ContentReader) -> list[str | None]:
        return keys

    def run(self, vertex: Vertex, inputs: Sequence[str | None], ctx: VertexContext) -> tuple[str | None, ...]:
        ops = self.ops
        with ops._lock:
            ops.runs[vertex.digest] += 1
            ops.running += 1
            ops.max_running = max(ops.max_running, ops.running)
        try:
            active = ctx.prepare(inputs[0] if inputs else None)
            with ctx.running():
                args = vertex.op.meta.args if isinstance(vertex.op, ExecOp) else ("true",)
                if args[0] == "sleep":
                    if ctx.cancel.wait(float(args[1])):
                        raise ExecutionError("cancelled")
                elif args[0] == "fail":
                    ctx.log.stderr(b"something broke\n")
                    raise FakeFailure(int(args[1]))
                (Path(ctx.mount(active).path) / vertex.digest[7:19]).write_text(" ".join(args))
            return (ctx.commit(active),) + (None,) * (output_count(vertex.op) - 1)
        finally:
            with ops._lock:
                ops.running -= 1


def temp_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="fakeworker-"))
