"""PostgreSQL going away in the middle of a build, with a real daemon on a throwaway cluster.

- An outage shorter than the retry bound (``--db-timeout``) pauses the build's appends; it goes
  on and completes, no step running twice.
- A longer outage fails the build; its end is kept on the daemon's disk and recorded when the
  database answers again, by the same daemon, or at the latest by the next start on the root
  (which records it failed, and does not resume it).
"""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from buildsvc.api.client import Client
from buildsvc.events import catalog as ev
from buildsvc.events import migrations
from buildsvc.events.database import RetryPolicy, open_database
from tests.integration.api.conftest import BUILDSVC, Daemon, cli_env
from tests.integration.resume.test_resume import (
    Build,
    _quiet,
    assert_no_leaks,
    events_of,
    expected_output,
    kill,
    started,
    tree,
    wait_ended,
    wait_for,
)
from tests.support.pgcluster import ThrowawayCluster

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.postgres]

_names = itertools.count()
StartDaemon = Callable[..., Daemon]


class BoundedDaemon(Daemon):
    """A daemon whose database retries give up after ``db_timeout`` seconds."""

    def __init__(self, db_url: str, root: Path, addr: str, log: Path, db_timeout: float) -> None:
        self.db_url, self.root, self.addr, self.log = db_url, root, addr, log
        self._log_file = log.open("a")
        self.proc = subprocess.Popen(
            [
                *(BUILDSVC, "--db-timeout", str(db_timeout), "daemon", "--root", str(root)),
                *("--db", db_url, "--addr", addr),
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=cli_env(),
        )
        self._clients = []


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    with ThrowawayCluster() as c:
        c.start()
        yield c


@pytest.fixture
def db_url(cluster: ThrowawayCluster) -> str:
    if not cluster.running:  # a failed test must not leave the next one without a server
        cluster.start()
    name = f"outage_{next(_names)}"
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
def start(db_url: str, tmp_path: Path) -> Iterator[StartDaemon]:
    started_daemons: list[Daemon] = []

    def start_daemon(db_timeout: float, root: Path | None = None) -> Daemon:
        n = len(started_daemons)
        root = root or tmp_path / "root"
        d = BoundedDaemon(
            db_url, root, f"unix://{tmp_path}/d{n}.sock", tmp_path / f"daemon{n}.log", db_timeout
        )
        started_daemons.append(d)
        d.wait_listening()
        return d

    yield start_daemon
    for d in started_daemons:
        d.close()


def _begin(d: Daemon, build: Build) -> threading.Thread:
    client = d.client()
    thread = threading.Thread(target=lambda: _quiet(client.solve, build.options()), daemon=True)
    thread.start()
    return thread


def test_a_short_outage_pauses_the_build_and_it_goes_on(
    start: StartDaemon, cluster: ThrowawayCluster, rootfs: Path, tmp_path: Path
) -> None:
    d: Daemon = start(60)
    build = Build(rootfs, tmp_path, sleep_one=2, sleep_two=0)
    thread = _begin(d, build)
    wait_for("RUN one to start", lambda: build.runs(d, "one") == 1, d)
    cluster.stop()  # RUN one ends, and RUN two would start, while the database is away
    time.sleep(4)
    cluster.start()
    thread.join(120)
    end = wait_ended(d, build.ref)
    assert isinstance(end, ev.SolveCompleted), end
    events = events_of(d, build.ref)
    assert (build.runs(d, "one"), started(events, "RUN one")) == (1, 1)
    assert (build.runs(d, "two"), started(events, "RUN two")) == (1, 1)
    assert tree(build.dest) == expected_output(rootfs)
    assert d.proc.poll() is None
    assert_no_leaks(d)


def test_a_long_outage_fails_the_build_recorded_when_the_database_is_back(
    start: StartDaemon, cluster: ThrowawayCluster, rootfs: Path, tmp_path: Path
) -> None:
    d: Daemon = start(2)
    build = Build(rootfs, tmp_path, sleep_one=1, sleep_two=0)
    thread = _begin(d, build)
    wait_for("RUN one to start", lambda: build.runs(d, "one") == 1, d)
    cluster.stop()
    kept = d.root / "solver" / "unrecorded" / f"{build.ref}.json"
    wait_for("the build's end to be kept on disk", kept.exists, d)
    cluster.start()
    thread.join(60)
    end = wait_ended(d, build.ref)  # written by the same daemon once the database answers
    assert isinstance(end, ev.SolveFailed), end
    assert "did not answer" in end.error, end.error
    wait_for("the kept end to be removed", lambda: not kept.exists(), d)
    events = events_of(d, build.ref)
    assert build.runs(d, "two") == started(events, "RUN two") == 0
    assert not any(isinstance(e, ev.SolveResumed) for e in events)
    assert d.proc.poll() is None
    # The daemon goes on building once the database is back.
    again = Build(rootfs, tmp_path, sleep_one=0, sleep_two=0)
    with Client(d.addr) as client:
        client.solve(again.options())
    assert_no_leaks(d)


def test_a_failure_kept_through_a_restart_is_recorded_by_the_next_start_not_resumed(
    start: StartDaemon, cluster: ThrowawayCluster, rootfs: Path, tmp_path: Path
) -> None:
    d: Daemon = start(2)
    build = Build(rootfs, tmp_path, sleep_one=1, sleep_two=0)
    thread = _begin(d, build)
    wait_for("RUN one to start", lambda: build.runs(d, "one") == 1, d)
    cluster.stop()
    kept = d.root / "solver" / "unrecorded" / f"{build.ref}.json"
    wait_for("the build's end to be kept on disk", kept.exists, d)
    kill(d)  # dies before the database comes back: only the file knows the build failed
    thread.join(60)
    cluster.start()
    d2 = start(30, d.root)
    assert not kept.exists()
    end = wait_ended(d2, build.ref)
    assert isinstance(end, ev.SolveFailed) and "did not answer" in end.error, end
    events = events_of(d2, build.ref)
    assert not any(isinstance(e, ev.SolveResumed) for e in events)
    assert build.runs(d2, "two") == 0
    assert "kept through a database outage" in d2.output()
    assert_no_leaks(d2)


def test_a_second_daemon_on_a_live_daemons_root_refuses_to_start(
    start: StartDaemon, db_url: str, tmp_path: Path
) -> None:
    d: Daemon = start(30)
    second = BoundedDaemon(db_url, d.root, f"unix://{tmp_path}/other.sock", tmp_path / "other.log", 30)
    try:
        assert second.proc.wait(60) != 0
    finally:
        second.close()
    assert "another buildsvc daemon" in second.output() and str(d.proc.pid) in second.output()
    assert d.proc.poll() is None
