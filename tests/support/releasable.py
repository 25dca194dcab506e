"""``check_all_releasable``: after a test, everything a daemon made can be let go (BuildKit's
``checkAllReleasable`` in client/client_test.go).

It deletes every build's history entry, waits until no snapshot is held by anything but a cache
record (a build, an export, a gateway job), prunes everything, and then asserts that the daemon's disk
usage is empty, that nothing is left mounted under its root, and that the log's leak report is empty.
A ref some code path forgot to release keeps its snapshot in use, so the wait times out naming it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from buildsvc.api.client import Client
from buildsvc.daemon.leaks import scan_leaks
from buildsvc.daemon.state import open_state
from buildsvc.errors import NotFound
from buildsvc.executors.mounts import mounts_under
from buildsvc.projections import find_leaks

__all__ = ["check_all_releasable"]


def check_all_releasable(client: Client, *, root: Path, db_url: str, timeout: float = 60) -> None:
    """Delete the history, wait for no ref in use, prune all; then nothing may be left."""
    for event in list(client.build_history()):
        with contextlib.suppress(NotFound):  # deleted meanwhile
            client.update_build_history(event.record.build_ref, delete=True)
    deadline = time.monotonic() + timeout
    while in_use := [r for r in client.disk_usage() if r.in_use]:
        assert time.monotonic() < deadline, f"snapshots still in use after {timeout}s: {in_use}"
        time.sleep(0.1)
    list(client.prune(all=True))
    assert client.disk_usage() == []
    assert mounts_under(str(root)) == []
    state = open_state(root, db_url, migrate=False)
    try:
        with state.db.read() as conn:
            report = find_leaks(conn)
        # The log checked against the disk too: untracked or missing snapshot data, mounts left.
        on_disk = scan_leaks(state)
    finally:
        state.close()
    assert report.empty, f"leaks: {report}"
    assert on_disk.empty, f"leaks against the disk: {on_disk}"
