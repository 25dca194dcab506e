"""How many appends a solve costs, and in what order its facts reach the log.

A step's end (its commit, cache record, refs, VertexCompleted) announces no side effect: it rides
with the build's next append instead of costing one, and the log still has it before anything that
builds on it. The store is real (SQLite); appends are counted by wrapping the store's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.events import SqlEventStore
from buildsvc.events.catalog import VertexCached, VertexCompleted, VertexStarted
from buildsvc.events.codec import Event
from buildsvc.solver.engine import SolveRequest
from buildsvc.solver.recording import BuildRecorder
from tests.support.databases import open_test_database, sqlite_url
from tests.unit.solver.test_solver_engine import Harness, chain


class CountedHarness(Harness):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.appends: list[str] = []
        real = self.store.append

        def counted(stream_id, events, **kwargs):  # type: ignore[no-untyped-def]
            self.appends.append(stream_id)
            return real(stream_id, events, **kwargs)

        self.store.append = counted  # type: ignore[method-assign]

    def stream(self, build_ref: str) -> list[tuple[int, object]]:
        return [(s.position, s.decode()) for s in self.store.read_stream(f"build-{build_ref}")]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[CountedHarness]:
    h = CountedHarness(tmp_path)
    yield h
    h.close()


def test_a_chain_costs_one_append_per_step_and_each_end_precedes_the_next_start(
    harness: CountedHarness,
) -> None:
    steps = [f"true {i}" for i in range(6)]
    harness.solver.solve(SolveRequest(definition=chain(*steps).marshal(), build_ref="c"))
    # The solve's start, one per step (its start, carrying the previous step's end), the end.
    assert harness.appends.count("build-c") == len(steps) + 2
    events = [e for _, e in harness.stream("c")]
    started = [i for i, e in enumerate(events) if isinstance(e, VertexStarted)]
    completed = [i for i, e in enumerate(events) if isinstance(e, VertexCompleted)]
    assert len(started) == len(completed) == len(steps)
    for n in range(len(steps)):
        assert started[n] < completed[n]
        if n + 1 < len(steps):
            assert completed[n] < started[n + 1]
    assert harness.leaks() == ([], [])


def test_an_end_with_no_append_to_ride_is_written_while_the_solve_waits(harness: CountedHarness) -> None:
    # "true a" ends while "sleep" (quiet, no output) still runs: its end must not wait for the solve's.
    from buildsvc.solver import llb

    definition = llb.merge([chain("true a"), chain("sleep 60")]).marshal()
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            harness.solver.solve(SolveRequest(definition=definition, build_ref="w"), cancel=cancel)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        seen = threading.Event()
        while not seen.wait(0.02):
            if any(isinstance(e, VertexCompleted) for _, e in harness.stream("w")):
                seen.set()
    finally:
        cancel.set()
        t.join(30)
    assert outcome  # cancelled: the end of "true a" was in the log before the solve's end


def test_a_solve_sharing_a_run_names_its_result_only_after_the_runs_end_is_written(
    harness: CountedHarness,
) -> None:
    definition = chain("sleep 0.3", "true tail").marshal()
    threads = [
        threading.Thread(
            target=harness.solver.solve, args=(SolveRequest(definition=definition, build_ref=ref),)
        )
        for ref in ("left", "right")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    by_position = {
        ref: [(p, e) for p, e in harness.stream(ref) if isinstance(e, VertexCached | VertexCompleted)]
        for ref in ("left", "right")
    }
    cached = [(p, e) for events in by_position.values() for p, e in events if isinstance(e, VertexCached)]
    assert cached  # one solve took the other's runs
    for position, hit in cached:
        owner = next(
            p
            for events in by_position.values()
            for p, e in events
            if isinstance(e, VertexCompleted) and e.vertex == hit.vertex
        )
        assert owner < position
    assert harness.leaks() == ([], [])


class SlowStore(SqlEventStore):
    """Holds the first append until released, so the appends asked for meanwhile queue up."""

    def __init__(self, db: object) -> None:
        super().__init__(db)  # type: ignore[arg-type]
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []

    def append(self, stream_id, events, **kwargs):  # type: ignore[no-untyped-def]
        self.batches.append(len(events))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(30)
        return super().append(stream_id, events, **kwargs)


def test_appends_asked_for_during_a_write_go_together_in_the_order_asked(tmp_path: Path) -> None:
    from buildsvc.events.catalog import RefReleased

    db = open_test_database(sqlite_url(tmp_path))
    try:
        store = SlowStore(db)
        recorder = BuildRecorder(store, "g")

        def fact(n: int) -> Event:
            return RefReleased(ref_id=f"r{n}", snapshot_id="s", reason=str(n))

        first = threading.Thread(target=recorder.append, args=([fact(0)],))
        first.start()
        assert store.entered.wait(30)
        later = []
        for n in range(1, 5):
            t = threading.Thread(target=recorder.append, args=([fact(n)],))
            t.start()
            while len(recorder._waiting) < n:  # queued in this order
                threading.Event().wait(0.005)
            later.append(t)
        store.release.set()
        for t in [first, *later]:
            t.join(30)
        assert store.batches == [1, 4]
        reasons = [e.decode().reason for e in store.read_stream("build-g")]  # type: ignore[attr-defined]
        assert reasons == ["0", "1", "2", "3", "4"]
    finally:
        db.dispose()
