"""``Engine.remove_snapshot``: refused while anything holds the snapshot, recorded when done (root)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import pytest

from buildsvc.daemon.errors import SnapshotHolder, SnapshotInUse
from buildsvc.errors import Conflict, NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.solver import llb
from tests.integration.solver.conftest import Harness, Images
from tests.support.background import running_until

pytestmark = pytest.mark.root


def digest_of(state: llb.State) -> str:
    output = state.marshal().output
    assert output is not None
    return output.digest


def solving_until_started(
    h: Harness, state: llb.State, build_ref: str, step: str
) -> AbstractContextManager[None]:
    """Solve ``state`` in a thread; the block runs once step ``step`` has started."""
    return running_until(
        lambda: h.solve(state.marshal(), build_ref=build_ref),
        lambda: any(s.name == step for s in h.of_type(build_ref, ev.VertexStarted)),
        f"step {step} started",
    )


def daemon_events(h: Harness) -> list[Event]:
    return [e.decode() for e in h.state.store.read_stream(h.engine.stream)]


def assert_no_leaks(h: Harness) -> None:
    report = h.leaks()
    assert report.refs == ()
    assert report.snapshots == ()


def on_disk(h: Harness, snapshot_id: str) -> bool:
    return any(info.key == snapshot_id for info in h.engine.workers[0].snapshotter.list())


def test_a_cached_result_is_removed_with_its_cache_record(h: Harness) -> None:
    definition = llb.scratch().file(llb.mkfile("/a.txt", "A"), name="make a").marshal()
    first = h.solve(definition, build_ref="first")
    assert first.output is not None and first.output.snapshot_id is not None
    snapshot = first.output.snapshot_id
    worker = first.output.worker.info.name
    before = len(daemon_events(h))

    h.engine.remove_snapshot(worker, snapshot, reason="test removal")

    assert not on_disk(h, snapshot)
    added = daemon_events(h)[before:]
    # The record goes (and its ref with it) before the data; the removal is recorded after it.
    assert [type(e) for e in added] == [ev.CacheRecordRemoved, ev.RefReleased, ev.SnapshotRemoved]
    dropped, released, removed = added
    assert isinstance(dropped, ev.CacheRecordRemoved) and dropped.reason == "test removal"
    assert isinstance(released, ev.RefReleased) and released.snapshot_id == snapshot
    assert removed == ev.SnapshotRemoved(snapshot_id=snapshot, reason="test removal", size_bytes=0)
    assert_no_leaks(h)

    # The next solve does not find the record: it builds again, on a new snapshot.
    again = h.solve(definition, build_ref="again")
    assert len(h.of_type("again", ev.VertexStarted)) == 1
    assert h.of_type("again", ev.VertexCached) == []
    assert again.output is not None and again.output.snapshot_id not in (None, snapshot)
    assert_no_leaks(h)

    with pytest.raises(NotFound):
        h.engine.remove_snapshot(worker, snapshot, reason="twice")


def test_a_parent_layer_with_a_child_is_refused(h: Harness) -> None:
    base = llb.scratch().file(llb.mkfile("/base.txt", "B"), name="base")
    top = base.file(llb.mkfile("/top.txt", "T"), name="top")
    h.solve(top.marshal(), build_ref="layers")
    (base_done,) = [c for c in h.of_type("layers", ev.VertexCompleted) if c.vertex == digest_of(base)]
    (top_done,) = [c for c in h.of_type("layers", ev.VertexCompleted) if c.vertex == digest_of(top)]
    worker = base_done.worker
    before = len(daemon_events(h))

    with pytest.raises(SnapshotInUse) as info:
        h.engine.remove_snapshot(worker, base_done.snapshot_id, reason="test")
    assert isinstance(info.value, Conflict)
    assert info.value.holders == (SnapshotHolder(kind="child", id=top_done.snapshot_id, build="layers"),)
    assert top_done.snapshot_id in str(info.value)
    assert daemon_events(h)[before:] == []  # a refusal records nothing
    assert on_disk(h, base_done.snapshot_id)

    # Children first, then the parent: both go, and nothing is left behind.
    h.engine.remove_snapshot(worker, top_done.snapshot_id, reason="test")
    h.engine.remove_snapshot(worker, base_done.snapshot_id, reason="test")
    assert not on_disk(h, base_done.snapshot_id)
    assert_no_leaks(h)


def test_a_snapshot_a_running_build_holds_is_refused_naming_it(h: Harness, images: Images) -> None:
    made = llb.image(images.busybox).run("echo made > /made", name="made").root()
    slow = made.run("sleep 2; cat /made > /copy", name="slow").root()
    with solving_until_started(h, slow, "holding", "slow"):
        (done,) = [c for c in h.of_type("holding", ev.VertexCompleted) if c.vertex == digest_of(made)]
        with pytest.raises(SnapshotInUse) as info:
            h.engine.remove_snapshot(done.worker, done.snapshot_id, reason="test")
        holders = info.value.holders
        # The solve holds its result, and the running step's root is stacked on it.
        assert SnapshotHolder(kind="solve", id="holding", build="holding") in holders
        assert any(x.kind == "child" and x.build == "holding" for x in holders)
        assert "solve holding" in str(info.value)
    assert on_disk(h, done.snapshot_id)

    # Once the build is over only the cache record holds it, and that does not block removal.
    removed_top = [c for c in h.of_type("holding", ev.VertexCompleted) if c.vertex == digest_of(slow)]
    h.engine.remove_snapshot(done.worker, removed_top[0].snapshot_id, reason="test")
    h.engine.remove_snapshot(done.worker, done.snapshot_id, reason="test")
    assert not on_disk(h, done.snapshot_id)
    assert_no_leaks(h)


def test_an_unknown_snapshot_or_worker_is_not_found(h: Harness) -> None:
    worker = h.engine.workers[0].name
    with pytest.raises(NotFound, match="no-such-snapshot"):
        h.engine.remove_snapshot(worker, "no-such-snapshot", reason="test")
    with pytest.raises(NotFound, match="enabled"):
        h.engine.remove_snapshot("kata-zfs", "no-such-snapshot", reason="test")


def test_a_cached_result_is_held_by_the_solve_once_a_step_reads_it(h: Harness, images: Images) -> None:
    made = llb.image(images.busybox).run("echo made > /made", name="made").root()
    h.solve(made.marshal(), build_ref="first")
    (done,) = [c for c in h.of_type("first", ev.VertexCompleted) if c.vertex == digest_of(made)]

    # All cached: nothing read, so no ref of the solve is recorded (as BuildKit loads none).
    h.solve(made.marshal(), build_ref="again")
    assert [c.vertex for c in h.of_type("again", ev.VertexCached)][-1] == digest_of(made)
    assert h.of_type("again", ev.RefAcquired) == []

    # A step on the cached result: the solve's ref on it goes with the step's start.
    slow = made.run("sleep 2; cat /made > /copy", name="slow").root()
    with solving_until_started(h, slow, "reader", "slow"):
        held = [r for r in h.of_type("reader", ev.RefAcquired) if r.snapshot_id == done.snapshot_id]
        assert [(r.holder_kind, r.holder_id) for r in held] == [("solve", "reader")]
        with pytest.raises(SnapshotInUse) as info:
            h.engine.remove_snapshot(done.worker, done.snapshot_id, reason="test")
        assert SnapshotHolder(kind="solve", id="reader", build="reader") in info.value.holders
    assert_no_leaks(h)
