"""``buildsvc prune`` and ``buildsvc du`` with the embedded engine, on both databases (run as root).

Builds run through the console script as in ``test_build_cli.py``; the running-build case uses an
engine in this process so the prune happens while a step holds its input.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from buildsvc.daemon.engine import open_engine
from buildsvc.daemon.prune import prune
from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.projections import find_leaks
from buildsvc.projections.schema import cache_records
from buildsvc.solver import llb
from buildsvc.solver.engine import SolveRequest
from tests.integration.test_build_cli import Cli, cli, hello_definition, rootfs, write_definition
from tests.support.background import running_until

pytestmark = pytest.mark.root

__all__ = ["cli", "rootfs"]  # fixtures


def du(c: Cli) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(c.run("du", "--format", "json").stdout)["snapshots"]
    return found


def prune_json(c: Cli, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(c.run("prune", *args, "--format", "json").stdout)
    return found


def build(c: Cli, definition_file: Path, rootfs_dir: Path, ref: str) -> str:
    return c.run(
        "build", "--llb", str(definition_file), "--local", f"rootfs={rootfs_dir}", "--ref", ref,
        "--progress", "plain",
    ).stderr  # fmt: skip


def test_prune_all_removes_cached_results_and_the_next_build_reruns(
    cli: Cli, rootfs: Path, tmp_path: Path
) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    build(cli, llb_file, rootfs, "first")
    before = du(cli)
    cached = [r for r in before if r["cache_keys"]]
    assert cached, before
    assert all(not r["in_use"] for r in before)

    # The newest build's results are kept unless --all.
    assert prune_json(cli)["removed"] == []
    assert du(cli) == before

    report = prune_json(cli, "--all")
    removed = [r["snapshot_id"] for r in report["removed"]]
    assert set(removed) == {r["snapshot_id"] for r in before}
    assert report["skipped"] == []
    assert report["reclaimed_bytes"] == sum(r["size_bytes"] for r in before)
    # Children go before their parents.
    for i, r in enumerate(report["removed"]):
        assert r["parent"] not in removed[:i], report
    assert du(cli) == []
    state = open_state(cli.root, cli.db_url)
    try:
        with state.db.read() as conn:
            assert conn.execute(cache_records.select()).first() is None
    finally:
        state.close()
    cli.assert_no_leaks()

    again = build(cli, llb_file, rootfs, "second")
    assert "CACHED" not in again
    assert " DONE " in again
    cli.assert_no_leaks()


def test_prune_keeps_young_records_and_honours_filters(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    build(cli, llb_file, rootfs, "first")
    before = du(cli)
    assert prune_json(cli, "--all", "--keep-duration", "3600")["removed"] == []
    assert prune_json(cli, "--all", "--filter", "worker=no-such-worker")["removed"] == []
    assert du(cli) == before
    err = cli.run("prune", "--filter", "colour=blue", expect=2).stderr
    assert "colour=blue" in err
    worker = before[0]["worker"]
    time.sleep(1.1)
    report = prune_json(cli, "--all", "--keep-duration", "1", "--filter", f"worker={worker}")
    assert {r["snapshot_id"] for r in report["removed"]} == {r["snapshot_id"] for r in before}
    cli.assert_no_leaks()


def test_prune_without_all_removes_older_builds_results_only(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    old = llb.local("rootfs").run("echo old > /old.txt", name="old").root()
    new = llb.local("rootfs").run("echo new > /new.txt", name="new").root()
    build(cli, write_definition(old.marshal(), tmp_path / "old.json"), rootfs, "older")
    first = {r["snapshot_id"] for r in du(cli)}
    build(cli, write_definition(new.marshal(), tmp_path / "new.json"), rootfs, "newer")
    report = prune_json(cli)
    gone = {r["snapshot_id"] for r in report["removed"]}
    # The "old" step's result goes; the local source both builds share was recorded again by the newer.
    assert gone and gone <= first
    left = du(cli)
    assert gone.isdisjoint(r["snapshot_id"] for r in left)
    again = build(cli, write_definition(new.marshal(), tmp_path / "new.json"), rootfs, "newest")
    assert re.search(r"^#\d+ CACHED$", again, re.MULTILINE), again
    cli.assert_no_leaks()


def test_a_snapshot_held_by_a_running_build_is_not_removed(db_url: str, rootfs: Path, tmp_path: Path) -> None:
    state = open_state(tmp_path / "root", db_url)
    engine = open_engine(state)
    made = llb.local("rootfs").run("echo made > /made", name="made").root()
    slow = made.run("sleep 3; cat /made > /copy", name="slow").root()
    try:
        engine.solver.solve(
            SolveRequest(definition=made.marshal(), local_dirs={"rootfs": rootfs}, build_ref="a")
        )
        events = [s.decode() for s in state.store.read_stream("build-a")]
        output = made.marshal().output
        assert output is not None
        made_digest = output.digest
        (made_done,) = [e for e in events if isinstance(e, ev.VertexCompleted) and e.vertex == made_digest]

        request = SolveRequest(definition=slow.marshal(), local_dirs={"rootfs": rootfs}, build_ref="b")
        with running_until(
            lambda: engine.solver.solve(request),
            lambda: any(
                isinstance(e, ev.VertexStarted) and e.name == "slow"
                for e in (s.decode() for s in state.store.read_stream("build-b"))
            ),
            "the slow step's start",
        ):
            report = prune(engine, all=True)
        removed = {r.snapshot_id for r in report.removed}
        assert made_done.snapshot_id not in removed
        assert made_done.snapshot_id in {s.snapshot_id for s in report.skipped}
        snapshotter = engine.workers[0].snapshotter
        assert made_done.snapshot_id in {info.key for info in snapshotter.list()}

        # Once the build is over, nothing but cache records holds it: it goes, and nothing is left.
        after = prune(engine, all=True)
        assert made_done.snapshot_id in {r.snapshot_id for r in after.removed}
        assert after.skipped == ()
        assert made_done.snapshot_id not in {info.key for info in snapshotter.list()}
        with state.db.read() as conn:
            assert find_leaks(conn).empty
    finally:
        engine.close()
        state.close()
