"""``buildsvc leaks`` against a real daemon's log and disk: each kind of leak injected, each reported."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.executors.mounts import unmount
from tests.integration.api.conftest import Daemon, Daemons, daemon, daemons, solve_options

__all__ = ["daemon", "daemons"]


def leaks(d: Daemon, *args: str, expect: int) -> dict[str, list[dict[str, object]]]:
    out = d.cli("leaks", "--format", "json", *args, expect=expect)  # the daemon scans its root
    found: dict[str, list[dict[str, object]]] = json.loads(out.stdout)
    return found


def _snapshot_store(d: Daemon) -> Path:
    return d.root / "workers" / "runc-overlay" / "snapshots"


def _committed(d: Daemon) -> tuple[str, str]:
    """(directory number, key) of a committed snapshot on disk."""
    for meta in sorted((_snapshot_store(d) / "metadata").glob("*.json")):
        found = json.loads(meta.read_text())
        if found["kind"] == "committed":
            return meta.stem, found["key"]
    raise AssertionError("no committed snapshot on disk")


def test_each_kind_of_leak_is_reported_and_a_clean_daemon_has_none(
    daemons: Daemons, daemon: Daemon, rootfs: Path
) -> None:
    daemons.check_releasable = False  # the injected leaked ref stays in the log: it is the point
    with daemon.client() as client:
        client.solve(solve_options(rootfs, "echo hi > /hi", "RUN hi"))
    assert leaks(daemon, expect=0) == {
        "refs": [],
        "snapshots": [],
        "untracked": [],
        "missing": [],
        "mounts": [],
    }
    text = daemon.cli("leaks").stdout
    assert text.strip() == "no leaks"

    # A ref released by no one: its holder (a build) ended while holding it.
    number, key = _committed(daemon)
    state = open_state(daemon.root, daemon.db_url, migrate=False)
    try:
        state.store.append(
            "build-leaky",
            [
                ev.RefAcquired(
                    ref_id="ref-leaky",
                    snapshot_id=key,
                    holder_kind="vertex",
                    holder_id="v",
                    build_ref="leaky",
                ),
                ev.SolveFailed(build_ref="leaky", error="gone"),
            ],
        )
    finally:
        state.close()
    found = leaks(daemon, expect=1)
    [ref] = found["refs"]
    assert ref["ref_id"] == "ref-leaky" and ref["holder_kind"] == "vertex" and ref["build_ref"] == "leaky"
    assert [e["type"] for e in ref["life"]] == ["RefAcquired", "SolveFailed"]  # type: ignore[attr-defined]
    assert leaks(daemon, "--ref", "leaky", expect=1)["refs"][0]["ref_id"] == "ref-leaky"

    # A directory under the root that no event made.
    stray = _snapshot_store(daemon) / "snapshots" / "9999"
    stray.mkdir()
    found = leaks(daemon, expect=1)
    assert [u["path"] for u in found["untracked"]] == [str(stray)]
    shutil.rmtree(stray)

    # A snapshot whose data was deleted: the snapshot and the cache record on it are reported.
    data = _snapshot_store(daemon) / "snapshots" / number
    moved = daemon.root / f"moved-{uuid.uuid4().hex}"
    shutil.move(data, moved)
    found = leaks(daemon, expect=1)
    assert {(m["kind"], m["snapshot_id"]) for m in found["missing"]} == {
        ("snapshot", key),
        ("cache_record", key),
    }
    shutil.move(moved, data)

    # A mount left behind on a snapshot's mount point.
    point = _snapshot_store(daemon) / "mounts" / number
    point.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
    try:
        found = leaks(daemon, expect=1)
        [mount] = found["mounts"]
        assert mount["path"] == str(point) and mount["snapshot_id"] == key
    finally:
        unmount(str(point))
    point.rmdir()
    final = leaks(daemon, expect=1)
    assert not final["untracked"] and not final["missing"] and not final["mounts"] and final["refs"]
