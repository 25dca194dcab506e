"""The solver's remote-cache port (lazy cache imports): asked on a local miss, a hit only when it answers.

The solver and its event store are real (SQLite, projections attached) on a fake worker; the remote
cache here is a small fake that "unpacks" by committing a snapshot and recording it as the daemon's
``LazyImports`` does, so the cache index, the refs and the leak report are the real ones.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from buildsvc.events import catalog as ev
from buildsvc.projections.build_rows import fold_build
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import ResultRef, SolveRequest
from buildsvc.solver.worker import Worker
from tests.unit.solver.test_solver_engine import Harness, chain


class FakeRemote:
    """Offers ``keys``; a hit on one commits a snapshot and records it in ``cache-import-test``."""

    def __init__(self, harness: Harness, keys: set[str], *, corrupt: bool = False) -> None:
        self.harness = harness
        self.keys = keys
        self.corrupt = corrupt
        self.asked: list[str] = []
        self.materialized: list[str] = []
        self.failed: set[str] = set()

    @staticmethod
    def snapshot_of(cache_key: str) -> str:
        return f"imported-{hashlib.sha256(cache_key.encode()).hexdigest()[:12]}"

    def offered(self, cache_key: str, worker: Worker) -> Mapping[int, str]:
        self.asked.append(cache_key)
        if cache_key not in self.keys or cache_key in self.failed:
            return {}
        return {0: self.snapshot_of(cache_key)}

    def materialize(
        self,
        cache_key: str,
        worker: Worker,
        build_ref: str,
        write_before: Callable[[Callable[[], None]], None] | None = None,
    ) -> Mapping[int, str]:
        self.materialized.append(cache_key)
        if cache_key not in self.keys or cache_key in self.failed:
            return {}
        if self.corrupt:
            self.failed.add(cache_key)
            self.harness.store.append(
                "cache-import-test",
                [ev.CacheImportMiss(build_ref="imp", cache_key=cache_key, error="corrupt")],
            )
            return {}
        snapshot = self.snapshot_of(cache_key)
        active = f"{snapshot}.active"
        worker.snapshotter.prepare(active, None)
        worker.snapshotter.commit(snapshot, active)
        self.harness.store.append(
            "cache-import-test",
            [
                ev.SnapshotCreated(
                    snapshot_id=snapshot,
                    worker=worker.info.name,
                    snapshotter=worker.snapshotter.name,
                    kind="committed",
                ),
                ev.SnapshotCommitted(snapshot_id=snapshot),
                ev.CacheRecordAdded(
                    cache_key=cache_key,
                    vertex="",
                    snapshot_id=snapshot,
                    worker=worker.info.name,
                    build_ref="imp",
                    source="import:local",
                ),
                ev.RefAcquired(
                    ref_id=f"ref-{uuid.uuid4().hex}",
                    snapshot_id=snapshot,
                    holder_kind="cache",
                    holder_id=cache_key,
                    build_ref="imp",
                ),
            ],
        )
        self.keys.discard(cache_key)  # the cache index answers for it now
        return {0: snapshot}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def keys_of(harness: Harness, build_ref: str) -> list[str]:
    return [
        e.cache_key for e in harness.events(build_ref) if isinstance(e, ev.VertexStarted | ev.VertexCached)
    ]


def learned_keys(tmp_path: Path, definition: Definition) -> list[str]:
    """The steps' cache keys, bottom up, learned on a separate solver state."""
    other = Harness(tmp_path / "other")
    try:
        other.solver.solve(SolveRequest(definition=definition, build_ref="learn"))
        return keys_of(other, "learn")
    finally:
        other.close()


def exported(result: ResultRef | None) -> Mapping[str, str]:
    """An export that reads the result, as an exporter does."""
    assert result is not None and result.snapshot_id is not None
    result.worker.snapshotter.stat(result.snapshot_id)  # raises if it is not there
    return {}


def test_an_offered_key_is_a_hit_its_step_does_not_run_and_an_export_fetches_it(
    harness: Harness, tmp_path: Path
) -> None:
    definition = chain("true a", "true b").marshal()
    first, last = learned_keys(tmp_path, definition)
    remote = FakeRemote(harness, {last})
    harness.solver.remote_cache = remote
    done = harness.solver.solve(SolveRequest(definition=definition, build_ref="one"), export=exported)
    # Keys are made bottom up: the first step is asked for, misses and runs; the last one hits.
    assert remote.asked == [first, last]
    assert sum(harness.ops.runs.values()) == 1
    cached = [e for e in harness.events("one") if isinstance(e, ev.VertexCached)]
    assert [e.cache_key for e in cached] == [last]
    assert remote.materialized == [last]  # the export read it
    assert done.output is not None and done.output.snapshot_id == FakeRemote.snapshot_of(last)
    assert harness.leaks() == ([], [])

    # Now an ordinary record: the next solve does not ask the remote cache again.
    harness.solver.solve(SolveRequest(definition=definition, build_ref="two"))
    assert remote.asked == [first, last]


def test_a_hit_nothing_reads_is_never_fetched(harness: Harness, tmp_path: Path) -> None:
    definition = chain("true a", "true b", "true c").marshal()
    keys = learned_keys(tmp_path, definition)
    remote = FakeRemote(harness, set(keys))
    harness.solver.remote_cache = remote
    done = harness.solver.solve(SolveRequest(definition=definition, build_ref="one"))
    assert sum(harness.ops.runs.values()) == 0
    assert remote.materialized == []  # no step, content key or export read a result: nothing moved
    cached = [e.cache_key for e in harness.events("one") if isinstance(e, ev.VertexCached)]
    assert cached == keys
    assert done.output is not None and done.output.snapshot_id == FakeRemote.snapshot_of(keys[-1])
    assert harness.leaks() == ([], [])


def test_a_step_that_runs_on_a_lazy_hit_fetches_it_first(harness: Harness, tmp_path: Path) -> None:
    keys = learned_keys(tmp_path, chain("true a", "true b", "true c").marshal())
    remote = FakeRemote(harness, set(keys[:2]))  # a and b offered; c is not: it runs, on b
    harness.solver.remote_cache = remote
    harness.solver.solve(
        SolveRequest(definition=chain("true a", "true b", "true c").marshal(), build_ref="one")
    )
    assert remote.materialized == [keys[1]]  # b's record only: a is never read (b's layers hold it)
    assert sum(harness.ops.runs.values()) == 1
    events = harness.events("one")
    started = next(e for e in events if isinstance(e, ev.VertexStarted))
    assert started.cache_key == keys[2]
    held = [e for e in events if isinstance(e, ev.RefAcquired) and e.holder_kind == "solve"]
    assert FakeRemote.snapshot_of(keys[1]) in {e.snapshot_id for e in held}  # c read the fetched b
    assert harness.leaks() == ([], [])


def test_a_lazy_hit_that_fails_its_check_when_read_runs_after_all(harness: Harness, tmp_path: Path) -> None:
    keys = learned_keys(tmp_path, chain("true a", "true b", "true c").marshal())
    remote = FakeRemote(harness, set(keys[:2]), corrupt=True)
    harness.solver.remote_cache = remote
    done = harness.solver.solve(
        SolveRequest(definition=chain("true a", "true b", "true c").marshal(), build_ref="one"),
        export=exported,
    )
    # c reads b: b's record fails its check, so b runs after all, and so does a under it.
    assert sum(harness.ops.runs.values()) == 3
    assert set(remote.materialized) == set(keys[:2])
    misses = [e.decode() for e in harness.store.read_stream("cache-import-test")]
    assert [type(e).__name__ for e in misses] == ["CacheImportMiss", "CacheImportMiss"]
    events = harness.events("one")
    # Each ran after its lazy hit, inputs first; no result was taken from the corrupt records.
    assert [e.cache_key for e in events if isinstance(e, ev.VertexStarted)] == keys
    build = fold_build(harness.store.read_stream("build-one"), "one")  # the history projection's fold
    assert build is not None
    assert (build["vertices_cached"], build["vertices_completed"]) == (0, 3)
    assert done.output is not None and not (done.output.snapshot_id or "").startswith("imported-")
    assert harness.leaks() == ([], [])


def test_a_remote_miss_or_a_corrupt_record_runs_the_step(harness: Harness, tmp_path: Path) -> None:
    definition = chain("true a", "true b").marshal()
    remote = FakeRemote(harness, set(), corrupt=True)
    harness.solver.remote_cache = remote
    harness.solver.solve(SolveRequest(definition=definition, build_ref="one"))
    assert sum(harness.ops.runs.values()) == 2 and len(remote.asked) == 2
    remote.asked.clear()
    remote.keys = set(keys_of(harness, "one"))
    harness.solver._records.clear()  # the index still has them: no remote lookup
    harness.solver.solve(SolveRequest(definition=definition, build_ref="two"))
    assert remote.asked == [] and sum(harness.ops.runs.values()) == 2
    assert harness.leaks() == ([], [])
