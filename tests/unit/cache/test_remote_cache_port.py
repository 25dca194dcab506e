"""The solver's remote-cache port (lazy cache imports): asked on a local miss, a hit only when it answers.

The solver and its event store are real (SQLite, projections attached) on a fake worker; the remote
cache here is a small fake that "unpacks" by committing a snapshot and recording it as the daemon's
``LazyImports`` does, so the cache index, the refs and the leak report are the real ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from buildsvc.events import catalog as ev
from buildsvc.solver.engine import SolveRequest
from buildsvc.solver.worker import Worker
from tests.unit.solver.test_solver_engine import Harness, chain


class FakeRemote:
    """Offers ``keys``; a hit on one commits a snapshot and records it in ``cache-import-test``."""

    def __init__(self, harness: Harness, keys: set[str], *, corrupt: bool = False) -> None:
        self.harness = harness
        self.keys = keys
        self.corrupt = corrupt
        self.asked: list[str] = []

    def materialize(
        self,
        cache_key: str,
        worker: Worker,
        build_ref: str,
        write_before: Callable[[Callable[[], None]], None] | None = None,
    ) -> Mapping[int, str]:
        self.asked.append(cache_key)
        if cache_key not in self.keys:
            return {}
        if self.corrupt:
            self.harness.store.append(
                "cache-import-test",
                [ev.CacheImportMiss(build_ref="imp", cache_key=cache_key, error="corrupt")],
            )
            return {}
        snapshot = f"imported-{uuid.uuid4().hex[:8]}"
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


def test_an_offered_key_is_a_hit_and_its_step_does_not_run(harness: Harness, tmp_path: Path) -> None:
    definition = chain("true a", "true b").marshal()
    # Learn the keys on a separate solver state, then offer the last one to a fresh solve.
    other = Harness(tmp_path / "other")
    try:
        other.solver.solve(SolveRequest(definition=definition, build_ref="learn"))
        first, last = keys_of(other, "learn")
    finally:
        other.close()
    remote = FakeRemote(harness, {last})
    harness.solver.remote_cache = remote
    done = harness.solver.solve(SolveRequest(definition=definition, build_ref="one"))
    # Keys are made bottom up: the first step is asked for, misses and runs; the last one hits.
    assert remote.asked == [first, last]
    assert sum(harness.ops.runs.values()) == 1
    cached = [e for e in harness.events("one") if isinstance(e, ev.VertexCached)]
    assert [e.cache_key for e in cached] == [last]
    assert done.output is not None and (done.output.snapshot_id or "").startswith("imported-")
    assert harness.leaks() == ([], [])

    # Now an ordinary record: the next solve does not ask the remote cache again.
    harness.solver.solve(SolveRequest(definition=definition, build_ref="two"))
    assert remote.asked == [first, last]


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
