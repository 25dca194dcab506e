"""``BuildEvents`` on a real store: what it sends converts back to the events as stored, in order,
in bounded batches; and the leak report survives its trip as JSON (the ``Leaks`` answer)."""

from __future__ import annotations

import pytest

from buildsvc.api import convert, log_reads
from buildsvc.daemon.leak_report import (
    LeftMount,
    LifeEvent,
    MissingData,
    RefLeak,
    RootLeakReport,
    UntrackedData,
    report_from_json,
    report_to_json,
)
from buildsvc.errors import InvalidInput
from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent
from buildsvc.events.sql_store import SqlEventStore
from buildsvc.projections.leak_records import LeakedRef, UnreferencedSnapshot


def _received(batches: object) -> list[StoredEvent]:
    return [convert.stored_event_from_pb(m) for batch in batches for m in batch.events]  # type: ignore[attr-defined]


def _fill(store: SqlEventStore) -> None:
    for n in range(3):
        store.append(f"build-b{n}", [ev.SolveStarted(build_ref=f"b{n}", vertex_count=n)], actor=f"a{n}")
    store.append("build-b1", [ev.SolveCompleted(build_ref="b1")])


def test_a_stream_and_the_whole_log_arrive_as_stored(store: SqlEventStore) -> None:
    _fill(store)
    assert _received(log_reads.read_events(store, ref="b1")) == store.read_stream("build-b1")
    assert _received(log_reads.read_events(store, stream_id="build-b2")) == store.read_stream("build-b2")
    everything = list(store.read_all())
    assert _received(log_reads.read_events(store)) == everything
    assert _received(log_reads.read_events(store, after=1, until=3)) == everything[1:3]
    # Hash and canonical bytes survive: a client can check the chain of what it got.
    for got in _received(log_reads.read_events(store)):
        assert got.hash and got.canonical_bytes()


def test_batches_are_bounded(store: SqlEventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(store)
    monkeypatch.setattr(log_reads, "_BATCH", 2)
    batches = list(log_reads.read_events(store))
    assert [len(b.events) for b in batches] == [2, 2]


def test_bad_requests_say_what_is_wrong(store: SqlEventStore) -> None:
    with pytest.raises(InvalidInput, match="ref or stream_id"):
        list(log_reads.read_events(store, ref="a", stream_id="b"))
    with pytest.raises(InvalidInput, match="negative"):
        list(log_reads.read_events(store, after=-1))


def test_the_leak_report_round_trips_as_json() -> None:
    report = RootLeakReport(
        refs=(
            RefLeak(
                ref=LeakedRef(
                    ref_id="r",
                    snapshot_id="s",
                    holder_kind="vertex",
                    holder_id="v",
                    build_ref="b",
                    acquired_position=3,
                    holder_ended_position=9,
                ),
                life=(
                    LifeEvent(
                        position=3, type="RefAcquired", stream_id="build-b", recorded_at="t", actor="x"
                    ),
                ),
            ),
        ),
        unreferenced=(
            UnreferencedSnapshot(
                snapshot_id="u", worker="w", state="committed", size_bytes=1, created_position=2
            ),
        ),
        untracked=(UntrackedData(worker="w", path="/p", snapshot_id="", reason="why"),),
        missing=(MissingData(kind="snapshot", snapshot_id="m", worker="w", cache_key="", reason="gone"),),
        mounts=(LeftMount(path="/m", snapshot_id="", reason="left"),),
    )
    assert report_from_json(report_to_json(report)) == report
    with pytest.raises(ValueError, match="unknown shape"):
        report_from_json({"refs": [{"nope": 1}]})
