"""Resume benchmark: from a daemon's start to its unfinished builds running again.

The log holds ``--events`` events (finished builds, as a daemon that has run for a while leaves
them) and ``--builds`` builds a dead daemon left unfinished, each interrupted in an exec step. The
figure is the time from the start (opening the state and the engine, as ``buildsvc daemon``
does, then the recovery: sweep, find the unfinished builds, read their streams, record the
resumes) until every one of those steps has started again on runc: the last ``VertexStarted``
of the new attempt, by its recorded time. Printed beside the time to read the same events raw
from PostgreSQL (psycopg, ``SELECT ... ORDER BY position``) in the same run; the ratio is what
counts. The aim is under 1 s plus the remaining work.

Runs as root (runc, overlayfs), in a fresh database (``CREATE DATABASE bench_resume_<random>``,
dropped at the end) on ``$BUILDSVC_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``).

    .venv/bin/python -m benchmarks.resume [--builds 10] [--events 100000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from benchmarks.history import build_of
from buildsvc.daemon.engine import open_engine
from buildsvc.daemon.recovery import take_up
from buildsvc.daemon.state import State, open_state
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.executors import make_busybox_rootfs
from buildsvc.solver import llb

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class _Gate:
    """The API's SolveGate as far as recovery needs it."""

    @contextmanager
    def admit(self, build_ref: str) -> Iterator[threading.Event]:
        yield threading.Event()


def _unfinished(build_ref: str, rootfs: Path) -> list[Event]:
    """A build a dead daemon left in the middle of an exec step on the busybox rootfs."""
    step = llb.local("rootfs").run(["sh", "-c", f": {build_ref}; true"], name="RUN step")
    definition = step.root().marshal()
    vertex = definition.output.digest if definition.output else ""
    return [
        ev.SolveRequested(
            build_ref=build_ref,
            definition=definition.to_dict(),
            definition_digest=vertex,
            local_dirs={"rootfs": str(rootfs)},
        ),
        ev.SolveStarted(build_ref=build_ref, vertex_count=2),
        ev.VertexStarted(build_ref=build_ref, vertex=vertex, name="RUN step", worker="runc-overlay"),
    ]


def _fill(state: State, total: int, builds: int, rootfs: Path) -> list[str]:
    refs = [f"resume-{i}-{uuid.uuid4().hex[:8]}" for i in range(builds)]
    for ref in refs:
        state.store.append(f"build-{ref}", _unfinished(ref, rootfs))
    n = 0
    while state.store.head() < total:
        events = build_of(100, f"old-{n}")  # whole builds: the last may pass ``total`` a little
        for i in range(0, len(events), 500):
            state.store.append(f"build-old-{n}", events[i : i + 500])
        n += 1
    state.runner.run_once()  # a daemon that was running kept its projections caught up
    return refs


def _raw(url: str) -> float:
    began = time.perf_counter()
    with psycopg.connect(url) as c:
        c.execute(
            "SELECT position, event_id, stream_id, stream_version, type, schema_version, payload, "
            "recorded_at, actor, trace_id, hash FROM events ORDER BY position"
        ).fetchall()
    return time.perf_counter() - began


def _restarted(state: State, refs: list[str]) -> list[datetime]:
    """When each build's step started again (empty until all have)."""
    found = []
    for ref in refs:
        again = [
            s.recorded_at
            for s in state.store.read_stream(f"build-{ref}")
            if s.type == ev.VertexStarted.type_name and s.payload.get("attempt") == 2
        ]
        if not again:
            return []
        found.append(again[0])
    return found


def _ended(state: State, refs: list[str]) -> bool:
    ends = (ev.SolveCompleted.type_name, ev.SolveFailed.type_name, ev.SolveCancelled.type_name)
    return all(any(s.type in ends for s in state.store.read_stream(f"build-{r}")) for r in refs)


def _wait(check: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _run(url: str, root: Path, builds: int, total: int) -> None:
    rootfs = Path(make_busybox_rootfs(str(root / "rootfs")))
    state = open_state(root / "state", url)
    try:
        refs = _fill(state, total, builds, rootfs)
        head = state.store.head()
    finally:
        state.close()
    raw = min(_raw(url) for _ in range(3))

    started_at = datetime.now(UTC)
    began = time.perf_counter()
    state = open_state(root / "state", url)
    engine = open_engine(state)
    try:
        recovery = take_up(engine, _Gate())
        took_up = time.perf_counter() - began
        watcher = open_state(root / "state", url, migrate=False)
        try:
            _wait(lambda: bool(_restarted(watcher, refs)), "the steps to start again")
            running = (max(_restarted(watcher, refs)) - started_at).total_seconds()
            _wait(lambda: _ended(watcher, refs), "the resumed builds to end")
        finally:
            watcher.close()
        for thread in recovery.threads:
            thread.join(60)
        print(
            f"resume, {len(recovery.resumed)} unfinished builds in {head} events: running again "
            f"{running * 1000:.0f} ms after the start (state, engine and recovery {took_up * 1000:.0f} ms); "
            f"raw read of the same events {raw * 1000:.0f} ms; ratio {running / raw:.2f}x (aim < 1 s)"
        )
    finally:
        engine.close(reason="benchmark done")
        state.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--builds", type=int, default=10)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the resume benchmark runs builds on runc and overlayfs: run it as root")
    admin = os.environ.get("BUILDSVC_TEST_PG_URL") or DEFAULT_PG_URL
    name = f"bench_resume_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        with tempfile.TemporaryDirectory() as root:
            _run(url, Path(root), args.builds, args.events)
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
