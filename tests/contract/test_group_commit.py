"""Group commit: appends that arrive while a commit is in flight share the next transaction, and each
caller still gets its own positions, conflicts and errors (every backend).

A hook holds the first append's transaction open until the others are queued behind it, so the
group is certain to form; the hook also records which rows each transaction carried.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence

import pytest
from sqlalchemy.engine import Connection

from buildsvc.events import (
    EventIdConflict,
    NewEvent,
    SqlEventStore,
    StreamVersionConflict,
    verify_events,
)
from buildsvc.events.catalog import SolveRequested, SolveStarted
from buildsvc.events.database import Database
from buildsvc.events.envelope import AppendResult, StoredEvent


class HoldFirst:
    """An append hook that keeps the first transaction open until released; records every call."""

    def __init__(self) -> None:
        self.armed = False
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []

    def __call__(self, conn: Connection, appended: Sequence[StoredEvent], head_before: int) -> None:
        self.calls.append([e.stream_id for e in appended])
        if self.armed and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)


def queued(store: SqlEventStore, n: int) -> None:
    deadline = time.monotonic() + 30
    while len(store._queue) < n:  # the appends waiting for the held transaction
        assert time.monotonic() < deadline, "the appends never queued"
        time.sleep(0.01)


def run_group(
    store: SqlEventStore, first: Callable[[], object], others: list[Callable[[], object]]
) -> tuple[object, list[object]]:
    """Run ``first`` (held open), queue ``others`` behind it, release: each one's result or error."""
    outcomes: dict[int, object] = {}

    def call(i: int, fn: Callable[[], object]) -> None:
        try:
            outcomes[i] = fn()
        except Exception as e:
            outcomes[i] = e

    hook = store._hooks[0]
    assert isinstance(hook, HoldFirst)
    hook.calls.clear()
    hook.armed = True
    threads = [threading.Thread(target=call, args=(0, first))]
    threads[0].start()
    assert hook.entered.wait(30)
    for i, fn in enumerate(others, start=1):
        threads.append(threading.Thread(target=call, args=(i, fn)))
        threads[-1].start()
        queued(store, i)  # one at a time: threads started together may queue in any order
    hook.release.set()
    for t in threads:
        t.join(60)
    return outcomes[0], [outcomes[i] for i in range(1, len(others) + 1)]


@pytest.fixture
def held(db: Database) -> tuple[SqlEventStore, HoldFirst]:
    hook = HoldFirst()
    return SqlEventStore(db, hooks=[hook]), hook


def test_queued_appends_share_one_transaction_and_each_gets_its_own_result(
    held: tuple[SqlEventStore, HoldFirst],
) -> None:
    store, hook = held
    store.append("build-a", [SolveRequested(build_ref="a")])  # version 1, remembered by the store
    first, others = run_group(
        store,
        lambda: store.append("build-z", [SolveRequested(build_ref="z")]),
        [
            lambda: store.append("build-a", [SolveStarted(build_ref="a", vertex_count=1)]),
            lambda: store.append("build-b", [SolveRequested(build_ref="b"), SolveStarted(build_ref="b")]),
            lambda: store.append("build-a", [SolveStarted(build_ref="a")], expected_version=1),
            lambda: store.append("build-a", [SolveStarted(build_ref="a", vertex_count=2)]),
        ],
    )
    assert isinstance(first, AppendResult) and first.positions == (2,)
    a1, b, stale, a2 = others
    # The three good appends went in one transaction, in arrival order, after the held one.
    assert hook.calls == [["build-z"], ["build-a", "build-b", "build-b", "build-a"]]
    assert isinstance(a1, AppendResult) and a1.positions == (3,) and a1.stream_version == 2
    assert isinstance(b, AppendResult) and b.positions == (4, 5) and b.stream_version == 2
    # Only the caller whose expectation was stale got the conflict: a1 had moved the stream on.
    assert isinstance(stale, StreamVersionConflict) and (stale.expected, stale.actual) == (1, 2)
    assert isinstance(a2, AppendResult) and a2.positions == (6,) and a2.stream_version == 3
    assert [e.position for e in store.read_all()] == [1, 2, 3, 4, 5, 6]
    assert [e.stream_version for e in store.read_stream("build-a")] == [1, 2, 3]
    assert verify_events(store.read_all()).ok


def test_a_refused_append_in_a_group_fails_only_its_own_caller(held: tuple[SqlEventStore, HoldFirst]) -> None:
    store, _ = held
    taken = uuid.uuid4()
    retried = uuid.uuid4()
    store.append("build-a", [NewEvent(event=SolveRequested(build_ref="a"), event_id=taken)])
    store.append("build-r", [NewEvent(event=SolveRequested(build_ref="r"), event_id=retried)])
    _, (reused, ok, retry, half) = run_group(
        store,
        lambda: store.append("build-z", [SolveRequested(build_ref="z")]),
        [
            lambda: store.append("build-b", [NewEvent(event=SolveRequested(build_ref="b"), event_id=taken)]),
            lambda: store.append("build-c", [SolveRequested(build_ref="c")]),
            lambda: store.append(
                "build-r", [NewEvent(event=SolveRequested(build_ref="r"), event_id=retried)]
            ),
            # A new first id but a taken second one: the database refuses the whole group, so each
            # append is done again in its own transaction.
            lambda: store.append(
                "build-d",
                [SolveRequested(build_ref="d"), NewEvent(event=SolveStarted(build_ref="d"), event_id=taken)],
            ),
        ],
    )
    assert isinstance(reused, EventIdConflict) and reused.event_id == str(taken)
    assert isinstance(ok, AppendResult) and not ok.duplicate
    # A retried append is still a no-op that returns where its event went the first time.
    assert isinstance(retry, AppendResult) and retry.duplicate and retry.positions == (2,)
    assert isinstance(half, EventIdConflict) and half.event_id == str(taken)
    assert [e.stream_id for e in store.read_all()] == ["build-a", "build-r", "build-z", "build-c"]
    assert store.read_stream("build-b") == []
    assert verify_events(store.read_all()).ok


def test_many_threads_appending_at_once_lose_nothing_and_keep_each_stream_in_order(db: Database) -> None:
    store = SqlEventStore(db)
    results: dict[int, list[AppendResult]] = {}

    def writer(n: int) -> None:
        results[n] = [
            store.append(f"build-{n % 3}", [SolveStarted(build_ref=str(n), vertex_count=i)])
            for i in range(15)
        ]

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    positions = sorted(p for rs in results.values() for r in rs for p in r.positions)
    assert positions == list(range(1, 91))  # every caller got its own, none shared, no gap
    for n in range(6):
        events = store.read_stream(f"build-{n % 3}")
        assert [e.stream_version for e in events] == list(range(1, 31))
        # Each writer's events are in its stream in the order it appended them.
        mine = [e.decode() for e in events if e.decode().build_ref == str(n)]  # type: ignore[attr-defined]
        assert [m.vertex_count for m in mine] == list(range(15))  # type: ignore[attr-defined]
    assert verify_events(store.read_all()).ok
