"""LogWriter: output becomes VertexLogChunk events; its ticker thread exists only for steps with output.

The store is real (SQLite in a temp dir).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.events import SqlEventStore
from buildsvc.events.catalog import VertexLogChunk
from buildsvc.solver.recording import BuildRecorder, LogWriter
from tests.support.databases import open_test_database, sqlite_url

VERTEX = "sha256:" + "ab" * 32


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlEventStore]:
    db = open_test_database(sqlite_url(tmp_path))
    yield SqlEventStore(db)
    db.dispose()


def tickers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("log-")]


def chunks(store: SqlEventStore) -> list[tuple[int, bytes]]:
    decoded = [e.decode() for e in store.read_stream("build-b1")]
    return [(e.stream, e.data) for e in decoded if isinstance(e, VertexLogChunk)]


def test_a_step_without_output_starts_no_ticker_and_writes_nothing(store: SqlEventStore) -> None:
    log = LogWriter(BuildRecorder(store, "b1"), VERTEX)
    with log.ticking():
        assert tickers() == []
    assert tickers() == []
    assert store.read_stream("build-b1") == []


def test_output_starts_the_ticker_and_every_byte_is_written_in_order(store: SqlEventStore) -> None:
    log = LogWriter(BuildRecorder(store, "b1"), VERTEX, interval=3600)
    with log.ticking():
        log.stdout(b"one ")
        assert len(tickers()) == 1  # a quiet process's output still shows while it runs
        log.stderr(b"err")
        log.stdout(b"two")
    assert tickers() == []
    assert chunks(store) == [(1, b"one "), (2, b"err"), (1, b"two")]
    assert log.tail == "one errtwo"
