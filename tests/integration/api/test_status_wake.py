"""Status is woken by the daemon's own commits and, on PostgreSQL, by LISTEN/NOTIFY for what other
processes append; its poll stays the fallback.

The servicer runs in this process with a fallback (and poll) interval of an hour: a Status stream that
follows a real build on runc to its end can only have been woken by the commits of its appends.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.api.client import Client
from buildsvc.api.model import StatusUpdate
from buildsvc.api.serve import parse_address, start_server
from buildsvc.api.server import ControlServicer, SolveGate
from buildsvc.api.status_wake import StreamWaker
from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.events.sql_store import SqlEventStore
from buildsvc.events.store import NO_STREAM
from buildsvc.executors.mounts import mounts_under, unmount
from tests.integration.api.conftest import solve_options
from tests.support.databases import PostgresTemplates, open_test_database

pytestmark = [pytest.mark.root]

_NEVER = 3600.0  # the fallback interval: a test that needed it would time out instead


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    state = open_state(tmp_path / "root", db_url)
    engine = open_engine(state)
    try:
        yield engine
    finally:
        engine.close()
        state.close()
        leaked = mounts_under(str(tmp_path))
        for point in sorted(leaked, key=len, reverse=True):
            unmount(point)
        assert leaked == [], f"mounts left behind: {leaked}"


@pytest.mark.postgres
def test_another_processs_append_wakes_the_waker_through_notify(pg_templates: PostgresTemplates) -> None:
    with pg_templates.fresh() as url:
        db, other = open_test_database(url), open_test_database(url)
        try:
            _wakes_on_append(StreamWaker(SqlEventStore(db), follow=True), SqlEventStore(other))
        finally:
            db.dispose()
            other.dispose()


def test_the_daemons_own_commit_wakes_the_waker(engine: Engine) -> None:
    store = engine.state.store
    _wakes_on_append(StreamWaker(store, follow=False), store)


def _wakes_on_append(waker: StreamWaker, store: SqlEventStore) -> None:
    try:
        done = threading.Event()
        woken: list[bool] = []

        def wait() -> None:
            woken.append(waker.wait("build-wake", 0, _NEVER))
            done.set()

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        # Another stream's event does not wake it.
        store.append("build-other", [ev.SolveCancelled(build_ref="other")], expected_version=NO_STREAM)
        assert not done.wait(0.5)
        store.append("build-wake", [ev.SolveCancelled(build_ref="wake")], expected_version=NO_STREAM)
        assert done.wait(60), "not woken by the append"
        assert woken == [True]
    finally:
        waker.close()


def test_status_follows_a_build_to_its_end_on_wake_ups(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    servicer = ControlServicer(engine, SolveGate(), wake_fallback=_NEVER, poll_interval=_NEVER)
    server = start_server(servicer, parse_address(f"unix://{tmp_path}/d.sock"))
    try:
        with Client(f"unix://{tmp_path}/d.sock") as client:
            ref = uuid.uuid4().hex[:25]
            stream = client.status(ref)  # before the build exists: it waits for it to appear
            updates: list[StatusUpdate] = []
            ended = threading.Event()

            def follow() -> None:
                updates.extend(stream)
                ended.set()

            threading.Thread(target=follow, daemon=True).start()
            client.solve(
                solve_options(rootfs, "echo step one; sleep 0.2; echo step two", "RUN it", build_ref=ref)
            )
            assert ended.wait(60), "Status did not follow the build to its end"
    finally:
        server.stop(None).wait()
        servicer.close()
    types = [u.type for u in updates]
    assert types[0] == "SolveRequested"
    assert types[-1] == "SolveCompleted"
    logs = b"".join(u.log.data for u in updates if u.log is not None)
    assert b"step one" in logs and b"step two" in logs
