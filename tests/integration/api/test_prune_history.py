"""Prune, UpdateBuildHistory and ``du --format json`` through the daemon (run as root)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from buildsvc.api.model import PruneSkipped, UsageRecord
from buildsvc.daemon.state import open_state
from buildsvc.errors import NotFound
from buildsvc.events import catalog as ev
from buildsvc.projections import find_leaks
from tests.integration.api.conftest import Daemon, solve_options

pytestmark = pytest.mark.root


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_du_and_prune_through_the_daemon(daemon: Daemon, rootfs: Path) -> None:
    client = daemon.client()
    client.solve(solve_options(rootfs, "echo one > /one", "RUN one"))
    usage = json.loads(daemon.cli("du", "--format", "json").stdout)["snapshots"]
    assert usage and all(r["cache_keys"] and not r["in_use"] for r in usage)
    assert {r["snapshot_id"] for r in usage} == {r.snapshot_id for r in client.disk_usage()}

    assert list(client.prune()) == []  # the newest build's results are kept
    results = list(client.prune(all=True))
    assert all(isinstance(r, UsageRecord) for r in results)
    assert {r.snapshot_id for r in results} == {r["snapshot_id"] for r in usage}
    assert client.disk_usage() == []
    assert json.loads(daemon.cli("du", "--format", "json").stdout)["snapshots"] == []
    assert not any(isinstance(r, PruneSkipped) for r in results)
    state = open_state(daemon.root, daemon.db_url, migrate=False)
    try:
        with state.db.read() as conn:
            assert find_leaks(conn).empty
    finally:
        state.close()


def test_update_build_history_pins_and_deletes(daemon: Daemon, rootfs: Path) -> None:
    client = daemon.client()
    options = solve_options(rootfs, "true", "RUN true")
    client.solve(options)
    ref = options.build_ref

    daemon.cli("history", "pin", ref)
    client.update_build_history(ref, pinned=False)
    client.update_build_history(ref, pinned=True)
    # The builds projection follows the log in the daemon: wait for it to fold the pin.
    wait_for(lambda: [e.record.pinned for e in client.build_history(build_ref=ref)] == [True])

    daemon.cli("history", "rm", ref)
    wait_for(lambda: [e.record.build_ref for e in client.build_history(build_ref=ref)] == [])
    assert ref not in [e.record.build_ref for e in client.build_history()]
    with pytest.raises(NotFound):
        client.update_build_history(ref, delete=True)
    with pytest.raises(NotFound):
        client.update_build_history("no-such-build", pinned=True)
    # The build's own events stay in the log.
    assert any(isinstance(e, ev.SolveCompleted) for e in daemon.events(ref))
