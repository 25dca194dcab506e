"""The solver with a fake worker: caching, the shared graph, parallelism, cancel, failure, no leaks.

The event store is real (SQLite in a temp dir) with the projections attached, so cache hits come
from the cache-index projection and the leak report is the real one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from buildsvc.events import SqlEventStore
from buildsvc.events.catalog import (
    CacheRecordRemoved,
    SolveCancelled,
    SolveFailed,
    VertexCached,
    VertexFailed,
)
from buildsvc.events.envelope import StoredEvent
from buildsvc.projections import ProjectionRunner, SqlCacheIndex, attach_projections, find_leaks
from buildsvc.solver import llb
from buildsvc.solver.engine import Solver, SolveRequest
from buildsvc.solver.errors import (
    BuildRefInUse,
    NoMatchingWorker,
    SolveError,
)
from buildsvc.solver.errors import (
    SolveCancelled as SolveCancelledError,
)
from buildsvc.solver.handlers import Backends
from buildsvc.solver.ops import WorkerConstraints
from tests.support.databases import open_test_database, sqlite_url
from tests.support.fakeworker import CountingOps, FakeWorker, make_fake_worker


class Harness:
    def __init__(self, root: Path, *, max_parallel: int = 4) -> None:
        self.db = open_test_database(sqlite_url(root))
        self.store = SqlEventStore(self.db)
        self.runner: ProjectionRunner = attach_projections(self.store)
        self.ops = CountingOps()
        self.worker: FakeWorker = make_fake_worker(root)
        self.solver = Solver(
            self.store,
            SqlCacheIndex(self.db),
            [self.worker],
            Backends(files=None, layers=None),  # type: ignore[arg-type]
            state_dir=root / "state",
            max_parallel=max_parallel,
            handler_factory=self.ops,
        )

    def leaks(self) -> tuple[list[str], list[str]]:
        with self.db.read() as conn:
            report = find_leaks(conn)
        return [r.ref_id for r in report.refs], [s.snapshot_id for s in report.snapshots]

    def events(self, build_ref: str) -> list[object]:
        return [e.decode() for e in self.store.read_stream(f"build-{build_ref}")]

    def close(self) -> None:
        self.solver.close()
        self.db.dispose()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def chain(*steps: str) -> llb.State:
    state = llb.scratch()
    for step in steps:
        state = state.run(step.split(), name=step).root()
    return state


def test_a_chain_runs_once_then_is_cached(harness: Harness) -> None:
    definition = chain("true a", "true b", "true c").marshal()
    first = harness.solver.solve(SolveRequest(definition=definition, build_ref="one"))
    assert sorted(harness.ops.runs.values()) == [1, 1, 1]
    assert first.output is not None
    assert first.output.snapshot_id in harness.worker.snapshotter.snapshots

    second = harness.solver.solve(SolveRequest(definition=definition, build_ref="two"))
    assert sorted(harness.ops.runs.values()) == [1, 1, 1]  # nothing ran again
    assert second.output is not None
    assert second.output.snapshot_id == first.output.snapshot_id
    cached = [e for e in harness.events("two") if isinstance(e, VertexCached)]
    assert len(cached) == 3
    assert harness.leaks() == ([], [])


def test_forgetting_a_removed_snapshot_forgets_the_kept_file_digests(
    harness: Harness, tmp_path: Path
) -> None:
    # Engine.remove_snapshot calls forget: the removed snapshot's inode numbers may come back.
    (tmp_path / "f").write_text("f\n")
    kept = harness.solver.backends.digests
    kept.digest(str(tmp_path / "f"), os.lstat(tmp_path / "f"))
    assert len(kept) == 1
    harness.solver.forget("snap-gone")
    assert len(kept) == 0


def test_changing_a_step_reruns_it_and_what_follows_only(harness: Harness) -> None:
    harness.solver.solve(SolveRequest(definition=chain("true a", "true b", "true c").marshal()))
    harness.solver.solve(SolveRequest(definition=chain("true a", "true B", "true c").marshal()))
    assert sum(harness.ops.runs.values()) == 5  # a cached; B and the new c run


def test_concurrent_solves_share_a_vertex_and_run_it_once(harness: Harness) -> None:
    definition = chain("sleep 0.3", "true shared-tail").marshal()
    results = {}

    def solve(ref: str) -> None:
        results[ref] = harness.solver.solve(SolveRequest(definition=definition, build_ref=ref))

    threads = [threading.Thread(target=solve, args=(ref,)) for ref in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(harness.ops.runs.values()) == {1}
    assert len(harness.ops.runs) == 2
    left, right = results["left"].output, results["right"].output
    assert left is not None
    assert right is not None
    assert left.snapshot_id == right.snapshot_id
    assert harness.leaks() == ([], [])


def test_independent_vertices_run_in_parallel_up_to_the_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_parallel=2)
    try:
        branches = [llb.scratch().run(["sleep", "0.2", str(i)]).root() for i in range(5)]
        h.solver.solve(SolveRequest(definition=llb.merge(branches).marshal()))
        assert h.ops.max_running == 2
        assert sum(h.ops.runs.values()) == 6  # five branches and the merge
    finally:
        h.close()


def test_solves_sharing_the_vertex_threads_take_turns(tmp_path: Path) -> None:
    # One vertex thread: a solve with many ready steps gives it back between them (after a time
    # slice), so a solve that comes later does not wait for all of them.
    h = Harness(tmp_path, max_parallel=1)
    try:
        leaves = [llb.scratch().run(["sleep", "0.02", str(i)]).root() for i in range(40)]
        wide = llb.merge(leaves).marshal()
        narrow = chain("true narrow").marshal()
        assert narrow.output is not None
        wide_solve = threading.Thread(target=h.solver.solve, args=(SolveRequest(definition=wide),))
        wide_solve.start()
        while not h.ops.runs:
            threading.Event().wait(0.005)
        h.solver.solve(SolveRequest(definition=narrow))
        wide_solve.join(30)
        order = list(h.ops.runs)  # in the order the steps started
        leaf_digests = {d for d in wide.vertices if d != (wide.output.digest if wide.output else "")}
        after = [d for d in order[order.index(narrow.output.digest) :] if d in leaf_digests]
        assert after, "the later solve waited until every step of the first had run"
    finally:
        h.close()


def test_a_cancel_between_quick_steps_stops_the_chain_at_the_next_step(harness: Harness) -> None:
    # Set while the second step runs (when its start is recorded): the steps after it never start,
    # however quickly the chain would otherwise finish.
    cancel = threading.Event()

    def cancel_on_second_start(conn: object, appended: Sequence[StoredEvent], head_before: int) -> None:
        if any(e.type == "VertexStarted" and e.payload["name"] == "true b" for e in appended):
            cancel.set()

    harness.store.add_hook(cancel_on_second_start)
    definition = chain("true a", "true b", "true c", "true d", "true e").marshal()
    with pytest.raises(SolveCancelledError):
        harness.solver.solve(SolveRequest(definition=definition, build_ref="stopped"), cancel=cancel)
    assert sum(harness.ops.runs.values()) == 2
    assert isinstance(harness.events("stopped")[-1], SolveCancelled)
    assert harness.leaks() == ([], [])


def test_a_failed_vertex_fails_the_solve_with_its_exit_code_and_output(harness: Harness) -> None:
    definition = llb.merge([chain("fail 7"), chain("sleep 5")]).marshal()
    with pytest.raises(SolveError) as info:
        harness.solver.solve(SolveRequest(definition=definition, build_ref="bad"))
    assert info.value.exit_code == 7
    assert info.value.name == "fail 7"
    assert "something broke" in info.value.log_tail
    assert "fail 7" in str(info.value)
    events = harness.events("bad")
    assert isinstance(events[-1], SolveFailed)
    assert events[-1].exit_code == 7
    failed = [e for e in events if isinstance(e, VertexFailed)]
    assert {e.error for e in failed} >= {"cancelled"}  # the sleeping sibling was stopped, not awaited
    assert harness.leaks() == ([], [])


def test_cancel_stops_a_running_solve_and_leaks_nothing(harness: Harness) -> None:
    definition = chain("true first", "sleep 30").marshal()
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(SolveCancelledError):
        harness.solver.solve(SolveRequest(definition=definition, build_ref="stopped"), cancel=cancel)
    assert isinstance(harness.events("stopped")[-1], SolveCancelled)
    assert harness.leaks() == ([], [])


def test_a_cache_record_whose_data_is_gone_is_a_miss(harness: Harness) -> None:
    definition = chain("true a").marshal()
    first = harness.solver.solve(SolveRequest(definition=definition))
    assert first.output is not None
    assert first.output.snapshot_id is not None
    harness.worker.snapshotter.remove(first.output.snapshot_id)
    harness.solver.solve(SolveRequest(definition=definition, build_ref="again"))
    assert sum(harness.ops.runs.values()) == 2
    assert any(isinstance(e, CacheRecordRemoved) for e in harness.events("again"))
    assert harness.leaks() == ([], [])  # the dropped record's ref was released, its data recorded gone


def test_a_build_ref_cannot_be_reused(harness: Harness) -> None:
    definition = chain("true a").marshal()
    harness.solver.solve(SolveRequest(definition=definition, build_ref="same"))
    with pytest.raises(BuildRefInUse, match="same"):
        harness.solver.solve(SolveRequest(definition=definition, build_ref="same"))


def test_a_constraint_no_worker_meets_lists_the_workers(harness: Harness) -> None:
    state = llb.scratch().run(["true"], constraints=WorkerConstraints(worker="crun-overlay")).root()
    with pytest.raises(NoMatchingWorker, match="workers available: fake"):
        harness.solver.solve(SolveRequest(definition=state.marshal(), build_ref="picky"))
    assert isinstance(harness.events("picky")[-1], SolveFailed)


def test_solves_and_vertices_are_spans_whose_trace_id_is_in_the_events(harness: Harness) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from buildsvc.daemon.telemetry import configure_tracing

    exporter = InMemorySpanExporter()
    configure_tracing().add_span_processor(SimpleSpanProcessor(exporter))
    harness.solver.solve(SolveRequest(definition=chain("true a", "true b").marshal(), build_ref="traced"))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"solve", "vertex true a", "vertex true b"} <= set(spans)
    trace_id = format(spans["solve"].context.trace_id, "032x")
    assert spans["vertex true a"].context.trace_id == spans["solve"].context.trace_id
    assert spans["vertex true a"].parent is not None
    assert spans["vertex true a"].parent.span_id == spans["solve"].context.span_id
    assert {e.trace_id for e in harness.store.read_stream("build-traced")} == {trace_id}
