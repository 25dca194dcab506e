"""The projection runner's guarantees, on every backend: exactly once, one runner, resumable rebuilds."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from buildsvc.events import SqlEventStore
from buildsvc.events.catalog import (
    RefAcquired,
    RefReleased,
    SnapshotCommitted,
    SnapshotCreated,
    SolveCompleted,
    SolveFailed,
    SolveRequested,
    SolveStarted,
    VertexCompleted,
    VertexStarted,
)
from buildsvc.events.database import Database
from buildsvc.projections import ProjectionRunner, UnknownProjection, attach_projections, find_leaks
from buildsvc.projections.builds import get_build
from buildsvc.projections.schema import builds


def record_build(store: SqlEventStore, ref: str, vertices: int = 3, *, leak: bool = False) -> None:
    stream = f"build-{ref}"
    store.append(stream, [SolveRequested(build_ref=ref), SolveStarted(build_ref=ref, vertex_count=vertices)])
    for v in range(vertices):
        snap, holder = f"snap-{ref}-{v}", f"sha256:{ref}-{v}"
        store.append(
            stream,
            [
                SnapshotCreated(snapshot_id=snap, worker="runc-overlay"),
                RefAcquired(
                    ref_id=f"r-{ref}-{v}",
                    snapshot_id=snap,
                    holder_kind="vertex",
                    holder_id=holder,
                    build_ref=ref,
                ),
                VertexStarted(build_ref=ref, vertex=holder, worker="runc-overlay"),
                SnapshotCommitted(snapshot_id=snap, size_bytes=10),
                VertexCompleted(build_ref=ref, vertex=holder, exit_code=0),
            ],
        )
        if not (leak and v == 0):
            store.append(stream, [RefReleased(ref_id=f"r-{ref}-{v}", snapshot_id=snap)])
    store.append(
        stream, [SolveFailed(build_ref=ref, error="boom") if leak else SolveCompleted(build_ref=ref)]
    )


def test_inline_projection_is_current_when_the_append_returns(store: SqlEventStore, db: Database) -> None:
    runner = attach_projections(store)
    record_build(store, "a", leak=True)
    status = {s.name: s for s in runner.statuses()}
    assert status["refs"].position == store.head()  # applied inside the appends
    assert status["builds"].position == 0  # reporting projections follow the log
    with db.read() as conn:
        leaks = find_leaks(conn)
    assert [r.ref_id for r in leaks.refs] == ["r-a-0"]
    runner.run_once()
    with db.read() as conn:
        build = get_build(conn, "a")
    assert build is not None
    assert (build["status"], build["vertices_completed"], build["error"]) == ("failed", 3, "boom")


def test_a_second_runner_stands_by_while_the_first_holds_the_lease(
    store: SqlEventStore, db: Database
) -> None:
    first = attach_projections(store, owner="first")
    second = ProjectionRunner(store, list(first.projections.values()), owner="second")
    record_build(store, "a")
    assert first.catch_up("builds") > 0
    record_build(store, "b")
    assert second.catch_up("builds") == 0  # the lease is first's
    assert first.status("builds").owner == "first"
    first.release_lease("builds")
    assert second.catch_up("builds") > 0
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(builds)).scalar_one() == 2


def test_an_expired_lease_is_taken_over(store: SqlEventStore) -> None:
    first = attach_projections(store, owner="first", lease_seconds=0.05)
    second = ProjectionRunner(store, list(first.projections.values()), owner="second")
    record_build(store, "a")
    assert first.try_lease("builds")
    threading.Event().wait(0.1)
    assert second.try_lease("builds")
    # The old owner notices inside its transaction and applies nothing.
    assert first.apply_batch("builds") == 0
    assert second.apply_batch("builds") > 0


def test_concurrent_runners_apply_each_event_exactly_once(store: SqlEventStore, db: Database) -> None:
    base = attach_projections(store, owner="base")
    for i in range(12):
        record_build(store, str(i))
    runners = [
        ProjectionRunner(
            store, list(base.projections.values()), owner=f"r{i}", lease_seconds=0.01, batch_size=5
        )
        for i in range(3)
    ]
    errors: list[BaseException] = []

    def hammer(runner: ProjectionRunner) -> None:
        try:
            for _ in range(60):
                # Leases expire between calls, so runners really do alternate batches.
                if runner.try_lease("builds"):
                    runner.apply_batch("builds")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    base.lease = timedelta(seconds=30)
    threading.Event().wait(0.05)
    base.catch_up("builds")
    with db.read() as conn:
        rows = conn.execute(sa.select(builds.c.vertices_completed, builds.c.status)).all()
    assert len(rows) == 12
    assert all(r.vertices_completed == 3 and r.status == "completed" for r in rows)


def test_rebuild_gives_the_same_digest_and_resumes_after_a_kill(store: SqlEventStore, db: Database) -> None:
    runner = attach_projections(store, batch_size=7)
    for i in range(6):
        record_build(store, str(i), leak=i == 2)
    runner.run_once()
    before = {name: runner.digest(name) for name in runner.projections}

    # A rebuild that dies after two batches leaves the projection "rebuilding" mid-way...
    assert runner.start_rebuild("builds")
    runner.try_lease("builds")
    runner.apply_batch("builds")
    runner.apply_batch("builds")
    partial = runner.status("builds")
    assert (partial.status, partial.position) == ("rebuilding", 14)
    runner.release_all()

    # ...and another process continues it instead of starting over.
    other = ProjectionRunner(store, list(runner.projections.values()), owner="other", batch_size=7)
    assert not other.start_rebuild("builds")
    other.rebuild("builds")
    assert other.status("builds").status == "live"
    other.rebuild("refs")
    assert {name: other.digest(name) for name in other.projections} == before


def test_inline_projection_is_left_to_the_runner_while_it_rebuilds(store: SqlEventStore) -> None:
    runner = attach_projections(store, batch_size=5)
    record_build(store, "a")
    before = runner.digest("refs")
    assert runner.start_rebuild("refs")
    record_build(store, "b")  # appends must not apply onto the emptied tables
    assert runner.status("refs").position == 0
    runner.rebuild("refs")
    record_build(store, "c")
    assert runner.status("refs").position == store.head()  # inline again
    fresh = attach_projections(SqlEventStore(store.db), owner="fresh")
    fresh.start_rebuild("refs")
    fresh.rebuild("refs")
    assert fresh.digest("refs") == runner.digest("refs")
    assert before != runner.digest("refs")


def test_unknown_projection_names_the_known_ones(store: SqlEventStore) -> None:
    runner = attach_projections(store)
    with pytest.raises(UnknownProjection, match="builds, refs"):
        runner.rebuild("nosuch")
