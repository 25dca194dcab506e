"""``check_all_releasable``: after a test, everything a daemon made can be let go (BuildKit's
``checkAllReleasable`` in client/client_test.go).

It deletes every build's history entry, waits until no snapshot is held by anything but a cache
record (a build, an export, a gateway job), prunes everything, and then asserts that the daemon's disk
usage is empty, that nothing is left mounted under its root, and that the log's leak report is empty.
A ref some code path forgot to release keeps its snapshot in use, so the wait times out naming it.

``check_engine_releasable`` is the same check for an engine a test runs in its own process (the
embedded mode): the same wait, prune and report, through the engine instead of the Control API.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from buildsvc.api.client import Client
from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.history import update_build_history
from buildsvc.daemon.leaks import scan_leaks
from buildsvc.daemon.prune import disk_usage, prune
from buildsvc.daemon.state import State, open_state
from buildsvc.errors import NotFound
from buildsvc.executors.mounts import mounts_under
from buildsvc.projections import find_leaks
from buildsvc.projections.builds import list_builds

__all__ = ["check_all_releasable", "check_engine_releasable", "check_state_releasable"]


def check_all_releasable(client: Client, *, root: Path, db_url: str, timeout: float = 60) -> None:
    """Delete the history, wait for no ref in use, prune all; then nothing may be left."""
    for event in list(client.build_history()):
        with contextlib.suppress(NotFound):  # deleted meanwhile
            client.update_build_history(event.record.build_ref, delete=True)
    deadline = time.monotonic() + timeout
    while in_use := [r for r in client.disk_usage() if r.in_use]:
        assert time.monotonic() < deadline, f"snapshots still in use after {timeout}s: {in_use}"
        time.sleep(0.1)
    pruned = list(client.prune(all=True))
    left = client.disk_usage()
    assert left == [], f"left after prune --all: {left}; prune said: {pruned}"
    state = open_state(root, db_url, migrate=False)
    try:
        _assert_nothing_left(state)
    finally:
        state.close()


def check_engine_releasable(engine: Engine, *, timeout: float = 60) -> None:
    """:func:`check_all_releasable` for an engine in this process (``open_engine``), left open."""
    state = engine.state
    state.runner.run_once()
    with state.db.read() as conn:
        refs = [row["build_ref"] for row in list_builds(conn, limit=1_000_000)]
    for ref in refs:
        with contextlib.suppress(NotFound):
            update_build_history(state.store, ref, delete=True)
    deadline = time.monotonic() + timeout
    while in_use := [r for r in disk_usage(engine) if r.in_use]:
        assert time.monotonic() < deadline, f"snapshots still in use after {timeout}s: {in_use}"
        time.sleep(0.1)
    report = prune(engine, all=True)
    assert not report.skipped, f"prune left: {report.skipped}"
    left = disk_usage(engine)
    assert left == [], f"left after prune --all: {left}"
    _assert_nothing_left(state)


def check_state_releasable(root: Path, db_url: str) -> None:
    """The check for a state the embedded ``buildsvc`` command used (nothing to do if it never ran)."""
    if not root.exists():
        return
    state = open_state(root, db_url, migrate=False)
    try:
        with open_engine(state) as engine:
            check_engine_releasable(engine)
    finally:
        state.close()


def _assert_nothing_left(state: State) -> None:
    """No mount under the root; the log's leak report and its check against the disk are empty."""
    assert mounts_under(str(state.root)) == []
    state.runner.run_once()
    with state.db.read() as conn:
        report = find_leaks(conn)
    assert report.empty, f"leaks: {report}"
    # The log checked against the disk too: untracked or missing snapshot data, mounts left.
    on_disk = scan_leaks(state)
    assert on_disk.empty, f"leaks against the disk: {on_disk}"
