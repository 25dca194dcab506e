"""A restart removes snapshot data no event accounts for (a kill between a snapshotter's write and
its event leaves such data); left there, it would block the removal of the layer it is stacked on."""

from __future__ import annotations

from pathlib import Path

from buildsvc.daemon.leaks import scan_leaks
from buildsvc.daemon.state import open_state
from buildsvc.executors.overlay import OverlaySnapshotter
from tests.integration.api.conftest import Daemon, Daemons, daemons, rootfs, solve_options
from tests.integration.history.test_leaks import _committed, _snapshot_store, leaks

__all__ = ["daemons", "rootfs"]


def test_a_restart_removes_unrecorded_snapshots_so_their_parents_can_go(
    daemons: Daemons, rootfs: Path
) -> None:
    first = daemons.start()
    with first.client() as client:
        client.solve(solve_options(rootfs, "echo hi > /hi", "RUN hi"))
    _, parent = _committed(first)
    first.proc.kill()
    first.proc.wait()

    # What the dead process could leave: a committed layer on disk, stacked on a recorded one, whose
    # SnapshotCommitted never reached the log.
    snapshotter = OverlaySnapshotter(str(_snapshot_store(first)))
    snapshotter.prepare("active-unrecorded", parent)
    snapshotter.commit("snap-unrecorded", "active-unrecorded")
    state = open_state(first.root, first.db_url, migrate=False)
    try:
        assert [u.snapshot_id for u in scan_leaks(state).untracked] == ["snap-unrecorded"]
    finally:
        state.close()

    again = Daemon(first.db_url, first.root, first.addr, first.log.with_name("again.log"), first.extra)
    daemons.started.append(again)
    again.wait_listening()
    assert "1 unrecorded snapshot(s)" in again.output()
    assert leaks(again, expect=0)["untracked"] == []
    # The fixture's check_all_releasable then prunes everything: the parent goes too.
