"""A build's ``write_before_appends`` (how a lazy cache import's held hits reach the log first).

The store is real (SQLite): what is registered is written before each of the build's appends (a
deferred fact's included), registered once however often it is handed over, and a store outage
while writing it keeps the build's batch for the next append rather than losing it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.errors import StoreUnavailable
from buildsvc.events import SqlEventStore
from buildsvc.events.catalog import RefReleased
from buildsvc.events.codec import Event
from buildsvc.solver.recording import BuildRecorder
from tests.support.databases import open_test_database, sqlite_url


def fact(n: int) -> Event:
    return RefReleased(ref_id=f"r{n}", snapshot_id="s", reason=str(n))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlEventStore]:
    db = open_test_database(sqlite_url(tmp_path))
    try:
        yield SqlEventStore(db)
    finally:
        db.dispose()


class Held:
    """Facts held for another stream (as ``LazyImports`` holds hits), written when asked."""

    def __init__(self, store: SqlEventStore) -> None:
        self.store = store
        self.facts: list[Event] = []
        self.calls = 0
        self.fail = False

    def write(self) -> None:
        self.calls += 1
        if self.fail:
            raise StoreUnavailable("the database is away")
        if self.facts:
            facts, self.facts = self.facts, []
            self.store.append("cache-import-x", facts)


def order(store: SqlEventStore) -> list[tuple[str, str]]:
    return [(s.stream_id, s.decode().reason) for s in store.read_all()]  # type: ignore[attr-defined]


def test_what_is_held_is_written_before_the_builds_next_append(store: SqlEventStore) -> None:
    recorder = BuildRecorder(store, "b")
    held = Held(store)
    held.facts.append(fact(0))
    recorder.write_before_appends(held.write)
    recorder.write_before_appends(held.write)  # handed over again by the next hit: once
    recorder.defer([fact(1)])
    assert order(store) == []  # nothing written until the build appends
    recorder.append([fact(2)])
    assert held.calls == 1
    assert order(store) == [("cache-import-x", "0"), ("build-b", "1"), ("build-b", "2")]
    held.facts.append(fact(3))
    recorder.settle()  # an append with nothing of the build's own still writes what is held
    assert order(store)[-1] == ("cache-import-x", "3")


def test_an_outage_while_writing_what_is_held_keeps_the_builds_batch(store: SqlEventStore) -> None:
    recorder = BuildRecorder(store, "b")
    held = Held(store)
    held.facts.append(fact(0))
    recorder.write_before_appends(held.write)
    held.fail = True
    with pytest.raises(StoreUnavailable):
        recorder.append([fact(1)])
    assert order(store) == []
    held.fail = False
    recorder.append([fact(2)])
    assert order(store) == [("cache-import-x", "0"), ("build-b", "1"), ("build-b", "2")]
