"""Layers made ahead: only for solves that recorded a cache export, once their records commit.

The store is real (SQLite in a temp dir), the layer maker a recorder: what matters here is which
layers are asked for, and when.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.cache.ahead import LayersAhead, export_formats
from buildsvc.cache.layer_store import LayerFormat
from buildsvc.events import SqlEventStore
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from tests.support.databases import open_test_database, sqlite_url

LOCAL = {"type": "local", "dest": "/nowhere", "mode": "max", "compression": "uncompressed"}
PLAIN = LayerFormat("uncompressed", None, True)


class Recorder:
    def __init__(self) -> None:
        self.made: list[tuple[str, str, LayerFormat]] = []
        self.threads: set[str] = set()

    def __call__(self, worker: str, snapshot: str, fmt: LayerFormat) -> None:
        self.made.append((worker, snapshot, fmt))
        self.threads.add(threading.current_thread().name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlEventStore]:
    db = open_test_database(sqlite_url(tmp_path))
    yield SqlEventStore(db)
    db.dispose()


def watched(store: SqlEventStore) -> tuple[LayersAhead, Recorder]:
    made = Recorder()
    ahead = LayersAhead(made)
    store.add_hook(ahead.hook)
    store.on_commit(ahead.committed)
    return ahead, made


def idle(ahead: LayersAhead) -> None:
    """Wait until the background thread has made everything queued (a bound, not a timing)."""
    for _ in range(3000):
        with ahead._lock:
            if not ahead._queue and not ahead._running:
                return
        threading.Event().wait(0.01)
    raise AssertionError("the layers queued were never made")


def record(snapshot: str, build: str) -> Event:
    return ev.CacheRecordAdded(
        cache_key=f"k-{snapshot}", vertex="v", snapshot_id=snapshot, worker="w", build_ref=build
    )


def test_each_committed_record_of_a_solve_with_a_cache_export_is_made_in_the_background(
    store: SqlEventStore,
) -> None:
    ahead, made = watched(store)
    store.append("build-b1", [ev.SolveRequested(build_ref="b1", cache_exports=(LOCAL,))])
    assert ahead.watching("b1")
    store.append("build-b1", [record("s1", "b1"), record("s2", "b1")])
    idle(ahead)
    assert made.made == [("w", "s1", PLAIN), ("w", "s2", PLAIN)]
    assert made.threads == {"cache-layers-ahead"}
    store.append("build-b1", [ev.SolveCompleted(build_ref="b1")])
    store.append("build-b1", [record("s3", "b1")])  # after the end: nothing holds it for an export
    idle(ahead)
    assert [m[1] for m in made.made] == ["s1", "s2"] and not ahead.watching("b1")


def test_nothing_is_made_for_a_solve_without_a_cache_export(store: SqlEventStore) -> None:
    ahead, made = watched(store)
    store.append("build-b2", [ev.SolveRequested(build_ref="b2")])
    store.append("build-b3", [ev.SolveRequested(build_ref="b3", cache_exports=({"type": "inline"},))])
    store.append("build-b2", [record("s1", "b2")])
    store.append("build-b3", [record("s2", "b3")])
    assert not ahead._builds and not ahead._noted and not ahead._queue and not ahead._running
    assert made.made == []


def test_the_export_starting_drops_what_is_still_queued(store: SqlEventStore) -> None:
    release = threading.Event()
    made: list[str] = []

    def blocked(worker: str, snapshot: str, fmt: LayerFormat) -> None:
        release.wait(30)
        made.append(snapshot)

    ahead = LayersAhead(blocked)
    store.add_hook(ahead.hook)
    store.on_commit(ahead.committed)
    store.append("build-b4", [ev.SolveRequested(build_ref="b4", cache_exports=(LOCAL,))])
    store.append("build-b4", [record("s1", "b4"), record("s2", "b4"), record("s3", "b4")])
    ahead.finish("b4")  # the first may be under way; the others are the export's to make
    release.set()
    idle(ahead)
    assert made in ([], ["s1"])


def test_formats_are_one_per_compression_and_none_for_inline() -> None:
    gz = {**LOCAL, "compression": "gzip"}
    registry = {"type": "registry", "ref": "h/r:t", "compression": "uncompressed"}
    assert export_formats([LOCAL, registry, gz, {"type": "inline"}, {"type": "bogus"}]) == (
        PLAIN,
        LayerFormat("gzip", None, True),
    )
