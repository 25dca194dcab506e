"""No reader skips an event that commits after a later-numbered one (every backend).

Appends are serialized (see ``buildsvc.events.sql_store``), so an event can never become visible
below a position a reader has already passed. These tests hold a writer's transaction open while
another writer tries to commit, and race writers against a live reader.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from buildsvc.events import SqlEventStore, StoredEvent, Subscription
from buildsvc.events.catalog import SolveStarted
from buildsvc.events.database import Database


def test_a_writer_held_open_is_never_overtaken(db: Database) -> None:
    inside = threading.Event()
    release = threading.Event()

    def hold_open(conn: Connection, appended: Sequence[StoredEvent], head_before: int) -> None:
        if appended[0].stream_id == "slow":
            inside.set()
            assert release.wait(20)

    slow = SqlEventStore(db, hooks=[hold_open])
    fast = SqlEventStore(db)
    reader = SqlEventStore(db)
    observed: list[list[str]] = []
    stop_reading = threading.Event()

    def read_continuously() -> None:
        while not stop_reading.is_set():
            observed.append([e.stream_id for e in reader.read_all()])
            time.sleep(0.005)

    threads = [threading.Thread(target=lambda: slow.append("slow", [SolveStarted(build_ref="slow")]))]
    threads[0].start()
    assert inside.wait(10), "the slow writer never reached its open transaction"
    threads.append(threading.Thread(target=lambda: fast.append("fast", [SolveStarted(build_ref="fast")])))
    threads[1].start()
    watcher = threading.Thread(target=read_continuously)
    watcher.start()
    time.sleep(0.3)
    # The second writer is waiting for the first: nothing is visible while the first is open.
    assert threads[1].is_alive()
    assert reader.head() == 0
    release.set()
    for t in threads:
        t.join(20)
    stop_reading.set()
    watcher.join(5)
    observed.append([e.stream_id for e in reader.read_all()])

    final = list(reader.read_all())
    assert [(e.position, e.stream_id) for e in final] == [(1, "slow"), (2, "fast")]
    # Every snapshot any reader saw is a prefix of the final order: nothing appeared behind it.
    for seen in observed:
        assert seen == ["slow", "fast"][: len(seen)]


def test_concurrent_writers_and_a_live_reader_each_event_once_in_order(db: Database) -> None:
    store = SqlEventStore(db)
    committed: list[tuple[int, ...]] = []
    lock = threading.Lock()
    writers, per_writer = 4, 40

    def write(w: int) -> None:
        for i in range(per_writer):
            n = 1 + (i % 3)
            result = store.append(f"w{w}", [SolveStarted(build_ref=f"{w}-{i}-{k}") for k in range(n)])
            with lock:
                committed.append(result.positions)

    delivered: list[StoredEvent] = []
    subscription = Subscription(SqlEventStore(db), poll_interval=0.02, batch_size=7)
    reader = threading.Thread(target=lambda: delivered.extend(subscription))
    reader.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    total = sum(len(p) for p in committed)
    deadline = time.monotonic() + 20
    while len(delivered) < total and time.monotonic() < deadline:
        time.sleep(0.02)
    subscription.close()
    reader.join(10)

    positions = [e.position for e in delivered]
    assert positions == list(range(1, total + 1))
    assert sorted(p for batch in committed for p in batch) == positions
    assert len({e.event_id for e in delivered}) == total
    # Each writer's own events are in its stream's order, with no gaps.
    for w in range(writers):
        versions = [e.stream_version for e in delivered if e.stream_id == f"w{w}"]
        assert versions == list(range(1, len(versions) + 1))
