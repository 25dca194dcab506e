"""``plan_from_events``: what a restart does for a build, worked out from hand-built event lists."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event, canonical_json, encode_payload
from buildsvc.events.envelope import StoredEvent
from buildsvc.solver.resume import plan_from_events

REF = "b1"


def stored(*events: Event, actor: str = "alice", trace_id: str = "t1") -> list[StoredEvent]:
    return [
        StoredEvent(
            position=i + 1,
            event_id=uuid.uuid4(),
            stream_id=f"build-{REF}",
            stream_version=i + 1,
            type=e.type_name,
            schema_version=e.schema_version,
            payload_json=canonical_json(encode_payload(e)),
            recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
            actor=actor,
            trace_id=trace_id,
            hash=b"",
        )
        for i, e in enumerate(events)
    ]


REQUESTED = ev.SolveRequested(
    build_ref=REF,
    definition={"vertices": {}},
    local_dirs={"rootfs": "/src/rootfs"},
    exporters=({"type": "local", "dest": "/out"}, {"type": "tar", "dest": "/out.tar"}),
    cache_exports=({"type": "local", "dest": "/cache"},),
)
STARTED = ev.SolveStarted(build_ref=REF, vertex_count=3, daemon_id="d1")


def started(vertex: str, attempt: int = 1) -> ev.VertexStarted:
    return ev.VertexStarted(
        build_ref=REF, vertex=vertex, worker="w", cache_key=f"k-{vertex}", attempt=attempt
    )


def completed(vertex: str, snapshot: str) -> list[Event]:
    return [
        ev.CacheRecordAdded(cache_key=f"k-{vertex}", vertex=vertex, snapshot_id=snapshot, worker="w"),
        ev.VertexCompleted(
            build_ref=REF, vertex=vertex, worker="w", snapshot_id=snapshot, cache_key=f"k-{vertex}"
        ),
    ]


def test_an_ended_or_never_requested_build_has_no_plan() -> None:
    assert plan_from_events(REF, []) is None
    assert plan_from_events(REF, stored(STARTED)) is None
    for end in (
        ev.SolveCompleted(build_ref=REF),
        ev.SolveFailed(build_ref=REF, error="x"),
        ev.SolveCancelled(build_ref=REF),
    ):
        assert plan_from_events(REF, stored(REQUESTED, STARTED, end)) is None


def test_the_request_actor_and_trace_are_kept() -> None:
    plan = plan_from_events(REF, stored(REQUESTED, STARTED))
    assert plan is not None
    assert (plan.actor, plan.trace_id, plan.previous_daemon_id, plan.attempt) == ("alice", "t1", "d1", 2)
    assert plan.definition == {"vertices": {}}
    assert plan.local_dirs == {"rootfs": "/src/rootfs"}
    assert plan.exporters == REQUESTED.exporters and plan.cache_exports == REQUESTED.cache_exports
    assert (plan.completed, plan.interrupted, plan.failure) == ({}, (), None)


def test_completed_vertices_carry_their_outputs_and_started_ones_are_interrupted() -> None:
    plan = plan_from_events(
        REF, stored(REQUESTED, STARTED, started("a"), *completed("a", "snap-a"), started("b"))
    )
    assert plan is not None
    assert list(plan.completed) == ["a"]
    done = plan.completed["a"]
    assert (done.cache_key, done.worker, dict(done.outputs)) == ("k-a", "w", {0: "snap-a"})
    assert plan.interrupted == ("b",)
    assert plan.runs == {"a": 1, "b": 1}


def test_a_vertex_started_again_after_completing_is_not_completed() -> None:
    # A result found missing on an earlier resume ran again; the kill came during that run.
    plan = plan_from_events(
        REF,
        stored(
            REQUESTED,
            STARTED,
            started("a"),
            *completed("a", "snap-a"),
            ev.SolveResumed(build_ref=REF, daemon_id="d2", previous_daemon_id="d1", attempt=2),
            ev.VertexResultMissing(build_ref=REF, vertex="a", snapshot_id="snap-a"),
            started("a", attempt=2),
        ),
    )
    assert plan is not None
    assert plan.completed == {} and plan.interrupted == ("a",)
    assert plan.runs == {"a": 2}
    assert (plan.attempt, plan.previous_daemon_id) == (3, "d2")


def test_an_interrupted_vertex_is_not_interrupted_twice() -> None:
    plan = plan_from_events(
        REF,
        stored(
            REQUESTED,
            STARTED,
            started("a"),
            ev.SolveResumed(build_ref=REF, daemon_id="d2", attempt=2, interrupted=("a",)),
            ev.VertexInterrupted(build_ref=REF, vertex="a", reason="daemon restarted"),
        ),
    )
    assert plan is not None
    assert plan.interrupted == () and plan.runs == {"a": 1}


def test_uncommitted_snapshots_are_partial_and_committed_or_removed_ones_are_not() -> None:
    plan = plan_from_events(
        REF,
        stored(
            REQUESTED,
            STARTED,
            ev.SnapshotCreated(snapshot_id="act-1", worker="w", kind="active"),
            ev.SnapshotCommitted(snapshot_id="snap-1", from_active="act-1"),
            ev.SnapshotCreated(snapshot_id="view-1", worker="w", kind="view"),
            ev.SnapshotRemoved(snapshot_id="view-1"),
            ev.SnapshotCreated(snapshot_id="act-2", worker="w", kind="active"),
        ),
    )
    assert plan is not None
    assert [(p.snapshot_id, p.kind) for p in plan.partial_snapshots] == [("act-2", "active")]


def test_layers_recorded_as_made_whole_are_not_partial() -> None:
    # An image pull records each new layer as created committed and committed, in one append: a
    # resume that took it for partial would remove an image layer that records and steps still use.
    plan = plan_from_events(
        REF,
        stored(
            REQUESTED,
            STARTED,
            ev.SnapshotCreated(snapshot_id="layer-1", worker="w", kind="committed"),
            ev.SnapshotCommitted(snapshot_id="layer-1", size_bytes=10),
            ev.SnapshotCreated(snapshot_id="act-1", worker="w", kind="active", parent="layer-1"),
        ),
    )
    assert plan is not None
    assert [(p.snapshot_id, p.kind) for p in plan.partial_snapshots] == [("act-1", "active")]


def test_only_the_process_refs_left_open_are_released() -> None:
    def acquired(ref: str, kind: str) -> ev.RefAcquired:
        return ev.RefAcquired(ref_id=ref, snapshot_id=f"s-{ref}", holder_kind=kind, holder_id=REF)

    plan = plan_from_events(
        REF,
        stored(
            REQUESTED,
            STARTED,
            acquired("r1", "solve"),
            acquired("r2", "vertex"),
            acquired("r3", "cache"),  # a cache record's ref outlives the process
            acquired("r4", "gateway"),
            ev.RefReleased(ref_id="r2", snapshot_id="s-r2"),
        ),
    )
    assert plan is not None
    assert sorted(r.ref_id for r in plan.open_refs) == ["r1", "r4"]


def test_completed_exports_and_cache_exports_are_not_pending() -> None:
    plan = plan_from_events(
        REF,
        stored(
            REQUESTED,
            STARTED,
            ev.ExportCompleted(
                build_ref=REF, exporter="local", attrs={"type": "local", "dest": "/out"}, response={"a": "1"}
            ),
            ev.CacheExportStarted(build_ref=REF, export_id="e1", type="local"),
            ev.CacheExportCompleted(build_ref=REF, export_id="e1"),
            ev.CacheExportStarted(build_ref=REF, export_id="e2", type="local"),
        ),
    )
    assert plan is not None
    assert plan.pending_exports() == [{"type": "tar", "dest": "/out.tar"}]
    assert plan.done_export_response() == {"a": "1"}
    assert not plan.pending_cache_exports("e1")
    assert plan.pending_cache_exports("e2")


def test_a_recorded_vertex_failure_decides_the_build() -> None:
    plan = plan_from_events(
        REF,
        stored(
            REQUESTED,
            STARTED,
            started("a"),
            ev.VertexFailed(build_ref=REF, vertex="a", error="exit 3", exit_code=3, log_tail="boom"),
            started("b"),
            ev.VertexFailed(build_ref=REF, vertex="b", error="cancelled"),
        ),
    )
    assert plan is not None and plan.failure is not None
    assert (plan.failure.vertex, plan.failure.exit_code, plan.failure.log_tail) == ("a", 3, "boom")
    assert plan.interrupted == ()


def test_received_local_contexts_name_their_manifests() -> None:
    plan = plan_from_events(
        REF,
        stored(
            REQUESTED,
            ev.LocalContextReceived(
                build_ref=REF, name="rootfs", manifest_digest="sha256:abc", source="host", host_path="/src"
            ),
            STARTED,
        ),
    )
    assert plan is not None
    assert plan.local_manifests == {"rootfs": "sha256:abc"}
    assert plan.local_hosts == {"rootfs": "/src"}


def test_cache_exports_are_matched_by_spec_and_completed_ones_keep_their_digest() -> None:
    spec = {"type": "local", "dest": "/cache"}
    twice = ev.SolveRequested(build_ref=REF, definition={}, cache_exports=(spec, spec))
    plan = plan_from_events(
        REF,
        stored(
            twice,
            STARTED,
            ev.CacheExportStarted(build_ref=REF, export_id="e1", type="local", attrs=spec),
            ev.CacheExportCompleted(build_ref=REF, export_id="e1", manifest_digest="sha256:m1"),
            ev.CacheExportStarted(build_ref=REF, export_id="e2", type="local", attrs=spec),
        ),
    )
    assert plan is not None
    pending, response = plan.cache_exports_left()
    assert pending == [(1, spec)]  # the same spec twice is exported twice: the second is left
    assert response == {"cache.export.0.digest": "sha256:m1"}
