"""The EventStore contract, run against every backend (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from buildsvc.errors import StoreUnavailable
from buildsvc.events import (
    NO_STREAM,
    EventIdConflict,
    EventSchemaError,
    InvalidDatabaseURL,
    NewEvent,
    RetryPolicy,
    SqlEventStore,
    StreamVersionConflict,
    Subscription,
    UnknownEventType,
    open_database,
    verify_events,
)
from buildsvc.events.catalog import SolveCompleted, SolveRequested, SolveStarted, VertexLogChunk
from buildsvc.events.database import Database
from buildsvc.events.schema import events as events_table
from tests.support.databases import PostgresTemplates


def test_append_then_read_stream_and_all(store: SqlEventStore) -> None:
    result = store.append(
        "build-a",
        [
            SolveRequested(build_ref="a", frontend="dockerfile.v0"),
            SolveStarted(build_ref="a", vertex_count=2),
        ],
        expected_version=NO_STREAM,
        actor="alice",
        trace_id="t1",
    )
    assert result.positions == (1, 2)
    assert result.stream_version == 2
    store.append("build-b", [SolveRequested(build_ref="b")])

    stream = store.read_stream("build-a")
    assert [e.stream_version for e in stream] == [1, 2]
    assert stream[0].decode() == SolveRequested(build_ref="a", frontend="dockerfile.v0")
    assert stream[0].actor == "alice" and stream[0].trace_id == "t1"
    assert stream[1].decode() == SolveStarted(build_ref="a", vertex_count=2)
    assert [e.position for e in store.read_all()] == [1, 2, 3]
    assert [e.stream_id for e in store.read_all(after=2)] == ["build-b"]
    assert store.head() == 3


def test_bytes_survive_the_round_trip(store: SqlEventStore) -> None:
    data = bytes(range(256))
    store.append("build-a", [VertexLogChunk(build_ref="a", vertex="sha256:v", data=data, stream=2)])
    (stored,) = store.read_stream("build-a")
    decoded = stored.decode()
    assert isinstance(decoded, VertexLogChunk)
    assert decoded.data == data


@pytest.mark.parametrize("size", [1, 7, 600])  # with the lock, over arrays, and by COPY on PostgreSQL
def test_a_batch_reads_back_as_written_whatever_path_inserts_it(store: SqlEventStore, size: int) -> None:
    store.append("build-first", [SolveStarted(build_ref="first")], actor="a", trace_id="t")
    batch = [
        VertexLogChunk(build_ref="b", vertex=f"sha256:{i}", data=bytes([i % 256]) * (i % 5), stream=1 + i % 2)
        for i in range(size)
    ]
    result = store.append("build-b", batch, actor="somebody", trace_id="trace-1")
    assert result.positions == tuple(range(2, size + 2)) and result.stream_version == size
    stored = list(store.read_stream("build-b"))
    assert [s.decode() for s in stored] == batch
    assert [(s.position, s.stream_version) for s in stored] == [(i + 2, i + 1) for i in range(size)]
    assert {(s.actor, s.trace_id, s.recorded_at) for s in stored} == {
        ("somebody", "trace-1", stored[0].recorded_at)
    }
    assert verify_events(store.read_all()).ok


def test_read_all_in_batches_sees_everything_once(store: SqlEventStore) -> None:
    for i in range(25):
        store.append(f"s-{i % 3}", [SolveStarted(build_ref=str(i))])
    positions = [e.position for e in store.read_all(batch_size=4)]
    assert positions == list(range(1, 26))
    assert [e.position for e in store.read_all(after=10, limit=5, batch_size=2)] == [11, 12, 13, 14, 15]


def test_wrong_expected_version_names_stream_and_versions(store: SqlEventStore) -> None:
    store.append("build-a", [SolveRequested(build_ref="a")], expected_version=NO_STREAM)
    with pytest.raises(StreamVersionConflict) as info:
        store.append("build-a", [SolveStarted(build_ref="a")], expected_version=NO_STREAM)
    assert info.value.stream_id == "build-a"
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert "build-a" in str(info.value) and "expected version 0" in str(info.value)
    assert store.head() == 1


def test_retried_append_is_a_no_op_returning_the_stored_positions(store: SqlEventStore) -> None:
    batch = [NewEvent(event=SolveRequested(build_ref="a")), NewEvent(event=SolveStarted(build_ref="a"))]
    first = store.append("build-a", batch, expected_version=NO_STREAM)
    store.append("build-b", [SolveRequested(build_ref="b")])
    again = store.append("build-a", batch, expected_version=NO_STREAM)
    assert again.positions == first.positions
    assert again.duplicate
    assert store.head() == 3


def test_reusing_an_event_id_in_another_stream_is_refused(store: SqlEventStore) -> None:
    event_id = uuid.uuid4()
    store.append("build-a", [NewEvent(event=SolveRequested(build_ref="a"), event_id=event_id)])
    with pytest.raises(EventIdConflict) as info:
        store.append("build-b", [NewEvent(event=SolveRequested(build_ref="b"), event_id=event_id)])
    assert str(event_id) in str(info.value)
    with pytest.raises(EventIdConflict):
        # A batch mixing a stored id with new ones is not a retry: refuse it whole.
        store.append(
            "build-a",
            [
                NewEvent(event=SolveStarted(build_ref="a")),
                NewEvent(event=SolveStarted(build_ref="a"), event_id=event_id),
            ],
        )
    assert store.head() == 1


def test_an_invalid_event_in_a_batch_writes_nothing(store: SqlEventStore) -> None:
    bad = SolveStarted(build_ref="a", vertex_count="three")  # type: ignore[arg-type]
    with pytest.raises(EventSchemaError) as info:
        store.append("build-a", [SolveRequested(build_ref="a"), bad])
    assert "SolveStarted" in str(info.value) and "vertex_count" in str(info.value)
    assert store.head() == 0


def test_unknown_stored_type_and_bad_payload_are_named_on_read(store: SqlEventStore, db: Database) -> None:
    store.append("build-a", [SolveRequested(build_ref="a")])
    store.append("build-b", [SolveStarted(build_ref="b")])
    with db.write() as conn:
        conn.execute(sa.update(events_table).where(events_table.c.position == 1).values(type="SolveExploded"))
        conn.execute(
            sa.update(events_table).where(events_table.c.position == 2).values(payload={"build_ref": 7})
        )
    first, second = store.read_all()
    with pytest.raises(UnknownEventType, match="SolveExploded"):
        first.decode()
    with pytest.raises(EventSchemaError, match="build_ref"):
        second.decode()


def test_concurrent_appends_with_the_same_expected_version_one_wins(store: SqlEventStore) -> None:
    store.append("build-a", [SolveRequested(build_ref="a")])
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            store.append("build-a", [SolveStarted(build_ref="a")], expected_version=1)
            outcomes.append("ok")
        except StreamVersionConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "ok"]
    assert [e.stream_version for e in store.read_stream("build-a")] == [1, 2]


def test_hash_chain_verifies_and_catches_edits_deletes_and_reorders(
    store: SqlEventStore, db: Database
) -> None:
    for i in range(3):
        store.append("build-a", [SolveStarted(build_ref="a", vertex_count=i)])
    store.append("build-b", [SolveCompleted(build_ref="b")])
    assert verify_events(store.read_all()).ok

    with db.write() as conn:
        conn.execute(
            sa.update(events_table)
            .where(events_table.c.position == 2)
            .values(payload={"build_ref": "a", "vertex_count": 99, "daemon_id": ""})
        )
    report = verify_events(store.read_all())
    assert [(p.kind, p.position) for p in report.problems] == [("edited", 2)]

    with db.write() as conn:
        conn.execute(sa.delete(events_table).where(events_table.c.position == 2))
    report = verify_events(store.read_all())
    assert report.problems[0].kind == "deleted"
    assert report.problems[0].position == 3


def test_swapped_events_are_reported(store: SqlEventStore, db: Database) -> None:
    for i in range(3):
        store.append("build-a", [SolveStarted(build_ref="a", vertex_count=i)])
    with db.write() as conn:
        t = events_table
        conn.execute(sa.update(t).where(t.c.position == 2).values(position=-2))
        conn.execute(sa.update(t).where(t.c.position == 3).values(position=2))
        conn.execute(sa.update(t).where(t.c.position == -2).values(position=3))
    report = verify_events(store.read_all())
    assert not report.ok
    assert report.problems[0].position == 2
    assert {p.kind for p in report.problems} >= {"reordered"}


def test_subscription_catches_up_then_follows_live(store: SqlEventStore) -> None:
    store.append("build-a", [SolveRequested(build_ref="a")])
    sub = Subscription(store, after=0, poll_interval=0.05)
    seen: list[int] = []
    done = threading.Event()

    def follow() -> None:
        for ev in sub:
            seen.append(ev.position)
            if len(seen) == 3:
                done.set()
                sub.close()

    t = threading.Thread(target=follow)
    t.start()
    store.append("build-a", [SolveStarted(build_ref="a")])
    store.append("build-b", [SolveRequested(build_ref="b")])
    assert done.wait(10)
    t.join(5)
    assert seen == [1, 2, 3]
    assert sub.position == 3


def test_bad_database_urls_are_named() -> None:
    with pytest.raises(InvalidDatabaseURL, match="not a url"):
        open_database("not a url")
    with pytest.raises(InvalidDatabaseURL, match="mysql"):
        open_database("mysql://root@localhost/db")


@pytest.mark.postgres
def test_a_server_that_does_not_answer_fails_within_the_bound() -> None:
    db = open_database("postgresql://postgres@127.0.0.1:1/none", retry=RetryPolicy(max_delay=0.5))
    store = SqlEventStore(db)
    with pytest.raises(StoreUnavailable) as info:
        store.append("build-a", [SolveRequested(build_ref="a")])
    assert "127.0.0.1:1" in str(info.value) and "did not answer" in str(info.value)


@pytest.mark.postgres
def test_postgres_subscribers_wake_on_notify_not_on_the_poll(pg_templates: PostgresTemplates) -> None:
    with pg_templates.fresh() as url:
        db = open_database(url)
        store = SqlEventStore(db)
        # A poll interval far longer than the test's deadline: only NOTIFY can deliver in time.
        sub = Subscription(store, poll_interval=60)
        got = threading.Event()

        def follow() -> None:
            for _ in sub:
                got.set()
                sub.close()

        t = threading.Thread(target=follow)
        t.start()
        threading.Event().wait(0.5)  # let it catch up (nothing) and start waiting
        store.append("build-a", [SolveRequested(build_ref="a")])
        assert got.wait(10)
        t.join(70)
        db.dispose()


def test_stores_that_remember_state_never_write_over_each_other(db: Database) -> None:
    # Each store remembers what its own appends left and inserts without reading when it can; the
    # other store's appends make that memory stale, which must be detected every time.
    first, second = SqlEventStore(db), SqlEventStore(db)
    for i in range(10):
        (first if i % 2 == 0 else second).append("shared", [SolveStarted(build_ref="a", vertex_count=i)])
        (second if i % 2 == 0 else first).append(f"other-{i % 3}", [SolveStarted(build_ref="b")])
    stream = first.read_stream("shared")
    assert [e.stream_version for e in stream] == list(range(1, 11))
    assert [e.decode().vertex_count for e in stream] == list(range(10))  # type: ignore[attr-defined]
    assert verify_events(first.read_all()).ok
    # A stale memory of the version is not trusted for the optimistic check either.
    with pytest.raises(StreamVersionConflict) as info:
        first.append("shared", [SolveStarted(build_ref="a")], expected_version=9)
    assert info.value.actual == 10
