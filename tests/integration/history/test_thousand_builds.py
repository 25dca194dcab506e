"""A thousand builds of mixed success, failure and cancellation leave no leak.

The real engine (``open_engine``: the solver, runc, overlayfs, the SQL log) in this process, four
builds at a time. Most builds are file operations (the cheap part of a
build, so a thousand fit in the time); a few run containers. Cancellations land at a chosen point:
an append hook on the store sets a build's cancel flag when its N-th vertex event is recorded, so
each cancelled build stops mid-graph (between file steps, or while a container runs) every time,
not only when a timer happens to fire early enough.

Afterwards the log's leak report and its check against the disk (``buildsvc leaks``) are empty.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Connection

from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.leaks import scan_leaks
from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent
from buildsvc.executors import make_busybox_rootfs
from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.solver import llb
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import SolveRequest
from buildsvc.solver.errors import SolveCancelled, SolveError
from tests.support.databases import open_test_database, sqlite_url

pytestmark = [pytest.mark.root, pytest.mark.slow]

BUILDS = 1000
_VERTEX_EVENTS = frozenset(
    {ev.VertexStarted.type_name, ev.VertexCached.type_name, ev.VertexCompleted.type_name}
)


@dataclass(frozen=True, slots=True)
class Planned:
    build_ref: str
    definition: Definition
    expect: str
    """``completed``, ``failed`` or ``cancelled``."""
    cancel_after: int = 0
    """Cancel when the build's N-th vertex event (started, cached, completed) is recorded."""
    cancel_at_start: str = ""
    """Cancel when the vertex of this name starts (its container is then running)."""


class CancelAt:
    """An append hook: sets a build's cancel flag when its N-th vertex event is recorded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[str, tuple[int, str, threading.Event]] = {}
        self._seen: Counter[str] = Counter()

    def arm(self, build_ref: str, after: int, at_start: str) -> threading.Event:
        cancel = threading.Event()
        with self._lock:
            self._armed[f"build-{build_ref}"] = (after, at_start, cancel)
        return cancel

    def __call__(self, conn: Connection, appended: Sequence[StoredEvent], head_before: int) -> None:
        for stored in appended:
            if stored.type not in _VERTEX_EVENTS:
                continue
            with self._lock:
                armed = self._armed.get(stored.stream_id)
                if armed is None:
                    continue
                after, at_start, cancel = armed
                self._seen[stored.stream_id] += 1
                if at_start:
                    if stored.type == ev.VertexStarted.type_name and stored.payload["name"] == at_start:
                        cancel.set()
                elif self._seen[stored.stream_id] >= after:
                    cancel.set()


def _files(nonce: str, steps: int, *, fail: bool = False) -> Definition:
    """A chain of file steps on scratch: a shared first step (a cache hit after the first build),
    then steps of this build's own, the last one failing with ``fail``.
    """
    state = llb.scratch().file(llb.mkdir("/shared", make_parents=True), name="mkdir /shared")
    for n in range(steps):
        state = state.file(llb.mkfile(f"/shared/{nonce}-{n}", f"{nonce} {n}\n"), name=f"write {n}")
    state = state.file(llb.copy(state, f"/shared/{nonce}-0", "/copied"), name="copy")
    if fail:
        state = state.file(llb.rm(f"/no-such-{nonce}"), name="rm what is not there")
    return state.marshal()


def _exec(nonce: str, script: str) -> Definition:
    base = llb.local("rootfs").file(llb.mkfile(f"/{nonce}", nonce), name="mark")
    return base.run(["sh", "-c", f": {nonce}; {script}"], name="run").root().marshal()


def plan() -> list[Planned]:
    """The thousand builds, interleaved: 60% succeed (some wholly cached), 25% fail, 15% cancelled."""
    made: list[Planned] = []
    repeat = uuid.uuid4().hex  # builds with this nonce are all the same definition: cache hits
    for i in range(BUILDS):
        nonce = uuid.uuid4().hex
        ref = f"k{i:04d}-{nonce[:12]}"
        kind = i % 20
        if i % 100 == 0:  # a few containers: one runs, one fails, one is cancelled while running
            made.append(Planned(ref, _exec(nonce, "echo ran"), "completed"))
        elif i % 100 == 1:
            made.append(Planned(ref, _exec(nonce, "echo failing; exit 3"), "failed"))
        elif i % 100 == 2:
            # Cancelled when the container's vertex starts: the sleep never ends on its own.
            made.append(Planned(ref, _exec(nonce, "sleep 300"), "cancelled", cancel_at_start="run"))
        elif kind < 3:
            made.append(Planned(ref, _files(repeat, 3), "completed"))
        elif kind < 12:
            made.append(Planned(ref, _files(nonce, 1 + i % 4), "completed"))
        elif kind < 17:
            made.append(Planned(ref, _files(nonce, 1 + i % 3, fail=True), "failed"))
        else:
            # Between file steps: after the 3rd, 4th or 5th vertex event of a 4-step chain.
            made.append(Planned(ref, _files(nonce, 4), "cancelled", cancel_after=3 + i % 3))
    return made


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    # The default worker (overlay: every step mounts) on the embedded store. On PostgreSQL the same
    # thousand builds take about twice as long (its commits cost more than SQLite's here); the
    # engine's code paths are the same on both, and every other suite runs on both.
    url = sqlite_url(tmp_path)
    open_test_database(url).dispose()
    state = open_state(tmp_path / "root", url)
    opened = open_engine(state, worker_names=["runc-overlay"])
    try:
        yield opened
    finally:
        opened.close()
        state.close()
        leaked = mounts_under(str(tmp_path))
        for point in sorted(leaked, key=len, reverse=True):
            unmount(point)
        assert leaked == [], f"mounts left behind: {leaked}"


def test_a_thousand_mixed_builds_leave_no_leak(engine: Engine, tmp_path: Path) -> None:
    rootfs = Path(make_busybox_rootfs(str(tmp_path / "rootfs")))
    hook = CancelAt()
    engine.state.store.add_hook(hook)
    builds = plan()

    def run(p: Planned) -> str:
        armed = p.cancel_after or p.cancel_at_start
        cancel = hook.arm(p.build_ref, p.cancel_after, p.cancel_at_start) if armed else None
        request = SolveRequest(definition=p.definition, build_ref=p.build_ref, local_dirs={"rootfs": rootfs})
        try:
            engine.solver.solve(request, cancel=cancel)
        except SolveCancelled:
            return "cancelled"
        except SolveError:
            return "failed"
        return "completed"

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(run, builds))
    wrong = [(p.build_ref, p.expect, got) for p, got in zip(builds, outcomes, strict=True) if got != p.expect]
    assert not wrong, f"{len(wrong)} builds ended otherwise than planned, e.g. {wrong[:5]}"
    assert Counter(outcomes) == Counter(p.expect for p in builds)
    assert set(outcomes) == {"completed", "failed", "cancelled"}
    for p in builds:
        if p.cancel_at_start:  # it was the running container that the cancellation stopped
            lives = [
                (s.type, s.payload.get("error", ""))
                for s in engine.state.store.read_stream(f"build-{p.build_ref}")
                if s.type in (ev.VertexStarted.type_name, ev.VertexFailed.type_name)
            ]
            assert lives[-2:] == [("VertexStarted", ""), ("VertexFailed", "cancelled")], (p.build_ref, lives)

    # `buildsvc leaks`: the log's report and its check against the disk.
    engine.state.runner.run_once()
    report = scan_leaks(engine.state)
    assert report.empty, f"leaks after {BUILDS} builds: {report}"
