"""The real ``buildsvc`` console script, run as subprocesses against SQLite and a real PostgreSQL.

Each test gets a fresh migrated database (the ``db_url`` fixture) and passes ``--db URL --root DIR``;
the test process writes and tampers with the same database through the Python API and SQLAlchemy.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa

from buildsvc.daemon.state import State, open_state
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.events.envelope import NewEvent
from buildsvc.events.schema import events as events_table
from buildsvc.events.sql_store import SqlEventStore
from buildsvc.projections import ProjectionRunner, default_projections
from buildsvc.projections.schema import build_vertices, builds


def _find_buildsvc() -> str:
    beside = Path(sys.executable).parent / "buildsvc"
    if beside.is_file():
        return str(beside)
    found = shutil.which("buildsvc")
    assert found is not None, "the buildsvc console script is not installed (pip install -e .)"
    return found


BUILDSVC = _find_buildsvc()
APPLIED = re.compile(r"^builds: applied (\d+)$", re.MULTILINE)
EVENTS_PER_BUILD = 8


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDSVC_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Cli:
    """Runs ``buildsvc --db URL --root DIR ...`` and keeps track of the processes it starts."""

    def __init__(self, db_url: str, root: Path) -> None:
        self.db_url = db_url
        self.root = root
        self.processes: list[subprocess.Popen[Any]] = []

    def argv(self, *args: str) -> list[str]:
        return [BUILDSVC, "--db", self.db_url, "--root", str(self.root), *args]

    def run(
        self, *args: str, expect: int | None = 0, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, env=_env(), check=False
        )
        if expect is not None:
            assert result.returncode == expect, (
                f"buildsvc {' '.join(args)} exited {result.returncode}, expected {expect}\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--format", "json").stdout)

    def start(self, *args: str, stdout: int | IO[Any], stderr: int | IO[Any]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(self.argv(*args), stdout=stdout, stderr=stderr, text=True, env=_env())
        self.processes.append(proc)
        return proc

    def caught_up(self) -> bool:
        """Whether ``projections status`` shows every projection at lag 0."""
        statuses = self.json("projections", "status")
        assert {"builds", "refs"} <= {s["name"] for s in statuses}
        return all(s["lag"] == 0 for s in statuses)

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def _caught_up(state: State) -> bool:
    """The same question asked in-process: cheaper to poll than starting the CLI each time."""
    return all(s.lag == 0 for s in state.runner.statuses())


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Iterator[Cli]:
    c = Cli(db_url, tmp_path / "root")
    try:
        yield c
    finally:
        c.close()  # no orphan processes, whatever the test did


@pytest.fixture
def state(db_url: str, tmp_path: Path) -> Iterator[State]:
    """The same database opened in the test process, wired like the daemon wires it."""
    s = open_state(tmp_path / "root", db_url)
    yield s
    s.close()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0, every: float = 0.05) -> float:
    """Poll until ``condition`` holds; returns the seconds it took."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - began


def _build_events(ref: str) -> list[Event]:
    return [
        ev.SolveRequested(build_ref=ref, frontend="dockerfile.v0"),
        ev.SolveStarted(build_ref=ref, vertex_count=3),
        ev.VertexStarted(build_ref=ref, vertex="v1", name="RUN a", worker="w"),
        ev.VertexCompleted(build_ref=ref, vertex="v1", worker="w", duration_ms=1, exit_code=0),
        ev.VertexCached(build_ref=ref, vertex="v2", name="COPY b"),
        ev.VertexStarted(build_ref=ref, vertex="v3", name="RUN c", worker="w"),
        ev.VertexCompleted(build_ref=ref, vertex="v3", worker="w", duration_ms=1, exit_code=0),
        ev.SolveCompleted(build_ref=ref),
    ]


def _record_builds(store: SqlEventStore, count: int, *, per_append: int = 1) -> list[str]:
    """``count`` completed builds of three vertices each (2 run, 1 cached): EVENTS_PER_BUILD events each.

    Each append holds ``per_append`` whole builds, in a stream named after the first of them.
    """
    refs = [uuid.uuid4().hex[:12] for _ in range(count)]
    for i in range(0, count, per_append):
        chunk = refs[i : i + per_append]
        store.append(f"build-{chunk[0]}", [e for ref in chunk for e in _build_events(ref)])
    return refs


def _catch_up(state: State) -> None:
    """Catch the projections up from the test process, then let go of the leases (as a CLI command does)."""
    state.runner.run_once()
    state.runner.release_all()


def _assert_builds_exact(state: State, refs: list[str]) -> None:
    """Each build is counted exactly once: a double-applied event would double its counters."""
    with state.db.read() as conn:
        rows = {r.build_ref: r for r in conn.execute(sa.select(builds))}
        runs = conn.execute(
            sa.select(build_vertices.c.runs, sa.func.count()).group_by(build_vertices.c.runs)
        ).all()
    assert sorted(rows) == sorted(refs)
    for ref in refs:
        row = rows[ref]
        got = (row.status, row.vertices_total, row.vertices_completed, row.vertices_cached)
        assert got == ("completed", 3, 2, 1), f"build {ref}: {got}"
    assert {r: n for r, n in runs} == {1: 2 * len(refs), 0: len(refs)}


# --- demo, history, leaks ----------------------------------------------------------------------------


def test_demo_then_history_and_leaks(cli: Cli) -> None:
    demo = cli.run("demo")
    assert "build history" in demo.stdout
    assert demo.stdout.count("completed") >= 2
    assert "0 problems" in demo.stdout
    assert "DIFFERENT" not in demo.stdout

    history = cli.json("history", "ls")
    assert [b["status"] for b in history] == ["completed", "completed"]
    # The demo builds 4 vertices (a local root, two runs, a file), then rebuilds them all from the cache.
    assert sorted((b["vertices_completed"], b["vertices_cached"]) for b in history) == [(0, 4), (4, 0)]
    for b in history:
        assert b["build_ref"] in demo.stdout

    leaks = cli.run("leaks")
    assert leaks.stdout.strip() == "no leaks"


# --- events verify -----------------------------------------------------------------------------------


def test_verify_names_an_edited_and_a_deleted_event(cli: Cli, state: State) -> None:
    _record_builds(state.store, 3)
    ok = cli.run("events", "verify")
    assert ok.stdout.startswith(f"ok: {3 * EVENTS_PER_BUILD} events in 3 streams")

    target = next(e for e in state.store.read_all() if e.position == 11)
    with state.db.engine.begin() as conn:
        conn.execute(
            events_table.update()
            .where(events_table.c.position == target.position)
            .values(payload=target.payload | {"worker": "someone-else"})
        )
    edited = cli.run("events", "verify", expect=1)
    out = edited.stdout + edited.stderr
    assert f"edited: position 11, stream {target.stream_id!r} version {target.stream_version}" in out
    assert str(target.event_id) in out
    assert "1 problem(s)" in out

    with state.db.engine.begin() as conn:  # put it back: the log verifies again
        conn.execute(
            events_table.update()
            .where(events_table.c.position == target.position)
            .values(payload=target.payload)
        )
    cli.run("events", "verify")

    with state.db.engine.begin() as conn:
        conn.execute(events_table.delete().where(events_table.c.position == target.position))
    deleted = cli.run("events", "verify", expect=1)
    out = deleted.stdout + deleted.stderr
    assert "deleted: position 12" in out
    assert "position 11 missing from the global order" in out
    assert f"stream {target.stream_id!r} version {target.stream_version + 1}" in out
    assert f"stream versions {target.stream_version}..{target.stream_version} are missing" in out


# --- projections -------------------------------------------------------------------------------------


def test_digest_is_the_same_before_and_after_a_rebuild(cli: Cli, state: State) -> None:
    empty = {n: state.runner.digest(n) for n in state.runner.projections}
    _record_builds(state.store, 5)
    _catch_up(state)
    before = cli.run("projections", "digest").stdout
    assert state.runner.digest("builds") != empty["builds"], "the digest does not see the rows"
    names = list(state.runner.projections)
    assert {"builds", "refs"} <= set(names)
    assert before == "".join(f"{n} sha256:{state.runner.digest(n)}\n" for n in names)

    rebuilt = cli.run("projections", "rebuild")
    for n in names:
        assert f"{n}: rebuilt from {5 * EVENTS_PER_BUILD} events" in rebuilt.stdout
    assert cli.run("projections", "digest").stdout == before


def test_a_rebuild_killed_midway_resumes_where_it_stopped(cli: Cli, state: State) -> None:
    refs = _record_builds(state.store, 400, per_append=10)
    head = state.store.head()
    assert head == 400 * EVENTS_PER_BUILD
    _catch_up(state)
    before = cli.run("projections", "digest", "builds").stdout

    # A rebuild that is killed after two batches: its lease is left behind, to lapse after 1 s.
    killed = ProjectionRunner(state.store, default_projections(), lease_seconds=1, batch_size=100)
    assert killed.start_rebuild("builds")
    assert killed.try_lease("builds")
    assert killed.apply_batch("builds") == 100
    assert killed.apply_batch("builds") == 100
    midway = {s["name"]: s for s in cli.json("projections", "status")}["builds"]
    assert (midway["status"], midway["position"], midway["lag"]) == ("rebuilding", 200, head - 200)
    assert f"builds sha256:{state.runner.digest('builds')}\n" != before

    resumed = cli.run("projections", "rebuild", "builds")
    # It went on from position 200: it neither dropped the rows again nor applied an event twice.
    assert f"builds: rebuilt from {head - 200} events" in resumed.stdout, resumed.stdout
    after = {s["name"]: s for s in cli.json("projections", "status")}["builds"]
    assert (after["status"], after["position"], after["lag"], after["owner"]) == ("live", head, 0, None)
    assert cli.run("projections", "digest", "builds").stdout == before
    _assert_builds_exact(state, refs)


def _applied(log: Path) -> list[int]:
    return [int(n) for n in APPLIED.findall(log.read_text())]


def test_two_runners_one_active_and_the_standby_takes_over(cli: Cli, state: State, tmp_path: Path) -> None:
    lease = 2.0
    logs = [tmp_path / "runner-0.log", tmp_path / "runner-1.log"]
    runners = []
    for log in logs:
        with log.open("w") as f:
            runners.append(
                cli.start(
                    "projections", "run", "--lease-seconds", str(lease), stdout=subprocess.DEVNULL, stderr=f
                )
            )
    owners: dict[int, str] = {}

    def started() -> bool:
        for i, log in enumerate(logs):
            assert runners[i].poll() is None, f"runner {i} exited:\n{log.read_text()}"
            found = re.search(r"^runner (\S+)$", log.read_text(), re.MULTILINE)
            if found:
                owners[i] = found.group(1)
        return len(owners) == 2

    _wait_for(started, "both runners to start")

    refs = _record_builds(state.store, 50)
    _wait_for(lambda: _caught_up(state), "the projections to catch up")
    assert cli.caught_up()
    _assert_builds_exact(state, refs)
    applied = [_applied(log) for log in logs]
    active = [i for i, lines in enumerate(applied) if lines]
    assert len(active) == 1, f"builds applied by runners {active}: {applied}"
    (first,) = active
    second = 1 - first
    assert sum(applied[first]) == 50 * EVENTS_PER_BUILD
    status = {s["name"]: s for s in cli.json("projections", "status")}
    assert status["builds"]["owner"] == owners[first]

    runners[first].send_signal(signal.SIGKILL)
    runners[first].wait(timeout=10)
    killed_at = time.monotonic()
    refs += _record_builds(state.store, 30)
    _wait_for(lambda: _caught_up(state), "the standby to take over")
    took = time.monotonic() - killed_at
    assert took < 4 * lease, f"the standby took {took:.1f}s to take over (lease {lease:g}s)"
    assert cli.caught_up()
    _assert_builds_exact(state, refs)
    assert _applied(logs[first]) == applied[first], "the killed runner applied something"
    assert sum(_applied(logs[second])) == 30 * EVENTS_PER_BUILD
    status = {s["name"]: s for s in cli.json("projections", "status")}
    assert status["builds"]["owner"] == owners[second]

    # SIGTERM stops the survivor cleanly, and it gives its leases up.
    runners[second].send_signal(signal.SIGTERM)
    assert runners[second].wait(timeout=10) == 0, logs[second].read_text()
    assert {s["owner"] for s in cli.json("projections", "status")} == {None}


# --- bad input ---------------------------------------------------------------------------------------


def test_a_database_url_that_does_not_parse(tmp_path: Path) -> None:
    result = Cli("not a url", tmp_path).run("events", "verify", expect=2)
    assert "invalid database URL 'not a url'" in result.stderr


@pytest.mark.postgres
def test_a_database_that_does_not_answer(tmp_path: Path) -> None:
    began = time.monotonic()
    result = Cli("postgresql://postgres@127.0.0.1:1/x", tmp_path).run(
        "--db-timeout", "1", "events", "verify", expect=None
    )
    assert result.returncode == 1, result.stderr
    assert "did not answer within 1s" in result.stderr
    assert "127.0.0.1:1/x" in result.stderr
    assert time.monotonic() - began < 15


def test_unknown_names(cli: Cli) -> None:
    rebuild = cli.run("projections", "rebuild", "nosuch", expect=None)
    assert rebuild.returncode != 0
    assert "no projection named 'nosuch'" in rebuild.stderr
    assert "builds" in rebuild.stderr
    assert "refs" in rebuild.stderr
    inspect = cli.run("history", "inspect", "nosuch", expect=None)
    assert inspect.returncode != 0
    assert "no build 'nosuch'" in inspect.stderr


# --- events tail -------------------------------------------------------------------------------------


def test_tail_prints_json_lines_and_follows_new_events(cli: Cli, state: State, tmp_path: Path) -> None:
    _record_builds(state.store, 2)
    stored = list(state.store.read_all())
    last_ten = [
        json.loads(line)
        for line in cli.run("events", "tail", "--no-follow", "--format", "json").stdout.splitlines()
    ]
    assert [e["position"] for e in last_ten] == list(range(7, 17))
    everything = cli.run("events", "tail", "--no-follow", "--format", "json", "--after", "0").stdout
    assert [json.loads(line)["event_id"] for line in everything.splitlines()] == [
        str(e.event_id) for e in stored
    ]

    errors = tmp_path / "tail.stderr"
    with errors.open("w") as err:
        follow = cli.start("events", "tail", "--format", "json", stdout=subprocess.PIPE, stderr=err)
    lines: queue.Queue[str] = queue.Queue()
    assert follow.stdout is not None
    pipe = follow.stdout

    def pump() -> None:
        for line in pipe:
            lines.put(line)

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()

    def next_line(timeout: float) -> dict[str, Any]:
        try:
            return dict(json.loads(lines.get(timeout=timeout)))
        except queue.Empty:
            raise AssertionError(
                f"events tail printed nothing within {timeout:g}s; stderr:\n{errors.read_text()}"
            ) from None

    assert [next_line(20)["position"] for _ in range(10)] == list(range(7, 17))
    new = NewEvent(event=ev.SolveRequested(build_ref="late", frontend="dockerfile.v0"))
    state.store.append("build-late", [new])
    printed = next_line(10)
    assert printed["event_id"] == str(new.event_id)
    assert (printed["position"], printed["stream_id"], printed["type"]) == (
        17,
        "build-late",
        "SolveRequested",
    )
    follow.terminate()
    follow.wait(timeout=10)
    pumping.join(timeout=10)
