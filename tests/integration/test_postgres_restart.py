"""The event store survives a real PostgreSQL server going away and coming back under its writers.

Each test runs against a :class:`ThrowawayCluster` (a server of our own that we can stop with
``pg_ctl stop -m fast``), never the machine's shared one. What must hold:

- every append either returns (after retries) or raises ``StoreUnavailable``; nothing else leaks out;
- nothing acknowledged is lost, nothing is stored twice, positions stay gapless, the chains verify;
- a commit whose acknowledgement is lost is recognised by its event id when the append is retried;
- an outage longer than ``RetryPolicy.max_delay`` fails with ``StoreUnavailable`` naming the database,
  and the same store works again once the server is back.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg import sql

from buildsvc.errors import StoreUnavailable
from buildsvc.events import catalog as ev
from buildsvc.events import migrations
from buildsvc.events.database import Database, RetryPolicy, open_database
from buildsvc.events.envelope import NewEvent
from buildsvc.events.sql_store import SqlEventStore
from buildsvc.events.verify import verify_events
from tests.support.cutting_proxy import CuttingProxy
from tests.support.pgcluster import ThrowawayCluster

pytestmark = pytest.mark.postgres

_names = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    with ThrowawayCluster() as c:
        c.start()
        yield c


def _fresh_database(cluster: ThrowawayCluster) -> str:
    """A new, migrated database on the cluster; returns its URL."""
    name = f"restart_{next(_names)}"
    if not cluster.running:
        cluster.start()
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = cluster.url.rpartition("/")[0] + f"/{name}"
    db = open_database(url, retry=RetryPolicy(max_delay=10))
    try:
        migrations.upgrade(db)
    finally:
        db.dispose()
    return url


@pytest.fixture
def database(cluster: ThrowawayCluster) -> Iterator[tuple[str, Database]]:
    url = _fresh_database(cluster)
    db = open_database(url, retry=RetryPolicy(max_delay=20))
    yield url, db
    db.dispose()
    if not cluster.running:  # a failed test must not leave the next one without a server
        cluster.start()


def _event(n: int) -> NewEvent:
    return NewEvent(event=ev.VertexLogChunk(build_ref="b", vertex="v", data=f"line {n}\n".encode(), offset=n))


@dataclass
class Writer:
    """Appends one event per call, each with its own id, until stopped; records every outcome."""

    store: SqlEventStore
    stream: str
    acked: dict[uuid.UUID, int] = field(default_factory=dict)
    unavailable: list[uuid.UUID] = field(default_factory=list)
    unexpected: list[BaseException] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"writer-{self.stream}", daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), f"writer {self.stream} is stuck"

    def _run(self) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            new = _event(n)
            began = time.monotonic()
            try:
                result = self.store.append(self.stream, [new])
            except StoreUnavailable:
                self.unavailable.append(new.event_id)
            except BaseException as e:  # the test reports whatever else escaped
                self.unexpected.append(e)
                return
            else:
                self.acked[new.event_id] = result.positions[0]
            self.spans.append((began, time.monotonic()))


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def test_writers_survive_a_server_restart_without_loss_or_duplicates(
    cluster: ThrowawayCluster, database: tuple[str, Database]
) -> None:
    _, db = database
    store = SqlEventStore(db)
    writers = [Writer(store, "stream-a"), Writer(store, "stream-b")]
    for w in writers:
        w.start()
    try:
        _wait_for(lambda: all(len(w.acked) >= 20 for w in writers), "appends before the outage")
        stopped_at = time.monotonic()
        cluster.stop("fast")
        at_stop = sum(len(w.acked) for w in writers)
        time.sleep(2.0)  # the outage itself: the writers keep trying against a refused port
        assert not cluster.running
        during = sum(len(w.acked) for w in writers)
        cluster.start()
        restarted_at = time.monotonic()
        _wait_for(
            lambda: all(sum(1 for _, end in w.spans if end > restarted_at) >= 20 for w in writers),
            "appends after the restart",
        )
    finally:
        for w in writers:
            w.join()

    for w in writers:
        assert len(w.unexpected) == 0, (
            f"{w.stream}: only StoreUnavailable may escape an append: {w.unexpected!r}"
        )
        # The outage (2 s) is far inside the retry bound (20 s): every append must have come through.
        assert len(w.unavailable) == 0, (
            f"{w.stream}: {len(w.unavailable)} appends gave up during a 2 s outage"
        )
    # Some append really was held up by the outage and completed after it (i.e. it was retried).
    assert during - at_stop <= len(writers), "appends were acknowledged while the server was down"
    assert any(b < restarted_at and e > restarted_at and e - b > 1.5 for w in writers for b, e in w.spans), (
        "no append spanned the outage"
    )
    assert restarted_at - stopped_at >= 2.0

    stored = list(store.read_all(batch_size=500))
    ids = Counter(s.event_id for s in stored)
    assert [i for i, n in ids.items() if n > 1] == [], "an event id is stored more than once"
    assert [s.position for s in stored] == list(range(1, len(stored) + 1)), "positions are not gapless"
    acked = {i: p for w in writers for i, p in w.acked.items()}
    by_id = {s.event_id: s for s in stored}
    lost = [i for i in acked if i not in by_id]
    assert lost == [], f"{len(lost)} acknowledged appends are not stored"
    assert {i: by_id[i].position for i in acked} == acked, "an acknowledged position is not where it is"
    assert set(by_id) == set(acked), "the log holds events no writer appended"
    for w in writers:
        versions = [s.stream_version for s in stored if s.stream_id == w.stream]
        assert versions == list(range(1, len(w.acked) + 1))
    report = verify_events(stored)
    assert report.ok, report.problems
    assert report.events == len(acked)


def test_an_outage_longer_than_the_retry_bound_fails_naming_the_database_then_recovers(
    cluster: ThrowawayCluster, database: tuple[str, Database]
) -> None:
    url, _ = database
    db = open_database(url, retry=RetryPolicy(max_delay=1.5))
    try:
        store = SqlEventStore(db)
        # Fill the pool with live connections, so the outage leaves dead ones behind in it.
        for n in range(5):
            store.append("s", [_event(n)])
        cluster.stop("fast")
        failed = _event(5)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            store.append("s", [failed])
        elapsed = time.monotonic() - began
        message = str(caught.value)
        dbname = url.rpartition("/")[2]
        assert f"127.0.0.1:{cluster.port}/{dbname}" in message
        assert "did not answer within 1.5s" in message
        assert "append to s" in message
        assert 1.5 <= elapsed < 15, f"gave up after {elapsed:.1f}s with max_delay 1.5s"

        cluster.start()
        after = _event(6)
        result = store.append("s", [after])  # the same store: its pool must not hand out dead connections
        assert result.positions == (6,)
        assert result.stream_version == 6
        # The append that gave up wrote nothing; retrying it now writes it once, after the others.
        assert store.append("s", [failed]).positions == (7,)
        assert store.append("s", [failed]).duplicate
        stored = list(store.read_all())
        assert [s.position for s in stored] == list(range(1, 8))
        assert [s.event_id for s in stored][5:] == [after.event_id, failed.event_id]
        assert verify_events(stored).ok
    finally:
        db.dispose()


def test_a_commit_whose_acknowledgement_is_lost_is_not_duplicated_by_the_retry(
    cluster: ThrowawayCluster, database: tuple[str, Database]
) -> None:
    url, _ = database
    # Lets the next COMMIT through once armed, then cuts the connection before the server's answer
    # reaches the client: the commit happened, its ack was lost.
    proxy = CuttingProxy(cluster.port, b"COMMIT", armed=False)
    proxied = url.replace(f":{cluster.port}/", f":{proxy.port}/")
    db = open_database(proxied, retry=RetryPolicy(max_delay=10))
    try:
        store = SqlEventStore(db)
        first = store.append("s", [_event(0)])
        assert first.positions == (1,)
        lost_ack = _event(1)
        proxy.armed.set()
        result = store.append("s", [lost_ack])
        assert proxy.cuts == 1, "the proxy did not cut a COMMIT's answer: the test proved nothing"
        # The first attempt committed; the retry must find it by its id rather than write it again.
        assert result.positions == (2,)
        assert result.stream_version == 2
        assert result.duplicate
        later = store.append("s", [_event(2)])
        assert later.positions == (3,)
        stored = list(store.read_all())
        assert [s.event_id for s in stored].count(lost_ack.event_id) == 1
        assert [s.position for s in stored] == [1, 2, 3]
        assert verify_events(stored).ok
    finally:
        db.dispose()
        proxy.close()
