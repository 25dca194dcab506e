"""The leak report: what the log says was left behind, checked against the daemon root's disk.

The projections (pure functions of the log) give refs whose holder ended without releasing them
and snapshots nothing references. This module adds what only the disk can tell, by reading each
worker's snapshot layout (``workers/<name>/snapshots/{metadata,snapshots,mounts}``, see
``executors.snapshot_index``) *without opening the snapshotter*, which would repair what it finds:

* **untracked**: a snapshot directory no metadata names, or a snapshot the log says does not exist
  (never created, or removed) that is still on disk: data no event accounts for;
* **missing**: a snapshot the log says exists whose metadata or directory is gone, and a cache record
  whose snapshot is gone (from the log or from the disk): results the cache would hand out but
  cannot;
* **mounts**: mount points under the root (``/proc/self/mountinfo``) that no live holder needs: a
  snapshot mount whose snapshot no unended holder refers to, or any other mount when no build runs.

For each leaked ref the report carries the events of its life (its acquisition, the end of its
holder, and any other event of the log naming it), read from the log by position.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from buildsvc.daemon.leak_report import (
    LeftMount,
    LifeEvent,
    MissingData,
    RefLeak,
    RootLeakReport,
    UntrackedData,
)
from buildsvc.daemon.state import State
from buildsvc.events.envelope import StoredEvent, format_time
from buildsvc.executors.mounts import mounts_under
from buildsvc.projections.leak_records import LeakedRef
from buildsvc.projections.refs import find_leaks
from buildsvc.projections.schema import builds, cache_records, refs, snapshots

# The report's records and its JSON are buildsvc.daemon.leak_report's.
__all__ = ["scan_leaks"]


@dataclass(slots=True)
class _WorkerDisk:
    """One worker's snapshot layout as found on disk: key -> directory, and the unnamed dirs."""

    root: Path
    by_key: dict[str, Path] = field(default_factory=dict)
    by_dir: dict[str, str] = field(default_factory=dict)
    """Directory number -> key."""
    unnamed: list[Path] = field(default_factory=list)


def _read_worker(root: Path) -> _WorkerDisk:
    disk = _WorkerDisk(root=root)
    metadata_dir, snapshots_dir = root / "metadata", root / "snapshots"
    if metadata_dir.is_dir():
        for entry in os.scandir(metadata_dir):
            if not entry.name.endswith(".json"):
                continue
            number = entry.name.removesuffix(".json")
            try:
                with open(entry.path, encoding="utf-8") as f:
                    key = json.load(f)["key"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable metadata: its directory is reported as unnamed below
            disk.by_dir[number] = key
            disk.by_key[key] = snapshots_dir / number
    if snapshots_dir.is_dir():
        for entry in os.scandir(snapshots_dir):
            if entry.name not in disk.by_dir:
                disk.unnamed.append(Path(entry.path))
    return disk


def _read_disk(state_root: Path) -> dict[str, _WorkerDisk]:
    workers = state_root / "workers"
    if not workers.is_dir():
        return {}
    return {
        entry.name: _read_worker(Path(entry.path) / "snapshots")
        for entry in os.scandir(workers)
        if entry.is_dir()
    }


def _life(state: State, leaked: LeakedRef) -> tuple[LifeEvent, ...]:
    wanted = {leaked.acquired_position, leaked.holder_ended_position}
    found: list[StoredEvent] = []
    for position in sorted(wanted):
        found.extend(state.store.read_all(after=position - 1, limit=1))
    return tuple(
        LifeEvent(
            position=s.position,
            type=s.type,
            stream_id=s.stream_id,
            recorded_at=format_time(s.recorded_at),
            actor=s.actor,
        )
        for s in found
    )


def scan_leaks(state: State, *, build_ref: str | None = None) -> RootLeakReport:
    """The leak report of ``state`` (only one build's refs with ``build_ref``; disk checks skipped)."""
    with state.db.read() as conn:
        report = find_leaks(conn, build_ref=build_ref)
        live = {
            r.snapshot_id: r.worker
            for r in conn.execute(
                sa.select(snapshots.c.snapshot_id, snapshots.c.worker).where(snapshots.c.state != "removed")
            )
        }
        held_live = {
            r.snapshot_id
            for r in conn.execute(
                sa.select(refs.c.snapshot_id).where(
                    refs.c.released_position.is_(None),
                    refs.c.holder_ended_position.is_(None),
                    # The cache keeps committed layers, which are never mounted themselves.
                    refs.c.holder_kind != "cache",
                )
            )
        }
        records = list(conn.execute(sa.select(cache_records)))
        running = conn.execute(
            sa.select(sa.func.count())
            .select_from(builds)
            .where(builds.c.status.in_(("requested", "running")))
        ).scalar_one()
    leaked_refs = tuple(RefLeak(ref=r, life=_life(state, r)) for r in report.refs)
    if build_ref is not None:
        return RootLeakReport(refs=leaked_refs, unreferenced=())
    disk = _read_disk(state.root)
    untracked: list[UntrackedData] = []
    missing: list[MissingData] = []
    for worker, found in sorted(disk.items()):
        for path in sorted(found.unnamed):
            untracked.append(
                UntrackedData(
                    worker=worker, path=str(path), snapshot_id="", reason="no snapshot names this directory"
                )
            )
        for key, path in sorted(found.by_key.items()):
            if key not in live:
                untracked.append(
                    UntrackedData(
                        worker=worker,
                        path=str(path),
                        snapshot_id=key,
                        reason="on disk, but not a live snapshot in the log",
                    )
                )
    for sid, worker in sorted(live.items()):
        reason = _data_gone(disk.get(worker), sid)
        if reason:
            missing.append(
                MissingData(kind="snapshot", snapshot_id=sid, worker=worker, cache_key="", reason=reason)
            )
    for r in records:
        if r.snapshot_id not in live:
            reason = "its snapshot was removed (per the log)"
        else:
            reason = _data_gone(disk.get(r.worker), r.snapshot_id)
        if reason:
            missing.append(
                MissingData(
                    kind="cache_record",
                    snapshot_id=r.snapshot_id,
                    worker=r.worker,
                    cache_key=r.cache_key,
                    reason=reason,
                )
            )
    mounts = _left_mounts(state.root, disk, held_live, builds_running=running > 0)
    return RootLeakReport(
        refs=leaked_refs,
        unreferenced=report.snapshots,
        untracked=tuple(untracked),
        missing=tuple(missing),
        mounts=tuple(mounts),
    )


def _data_gone(worker: _WorkerDisk | None, snapshot_id: str) -> str:
    if worker is None:
        return "its worker has no snapshot directory under the root"
    path = worker.by_key.get(snapshot_id)
    if path is None:
        return "no snapshot metadata on disk"
    if not path.is_dir():
        return f"snapshot directory {path} is gone"
    return ""


def _left_mounts(
    root: Path, disk: dict[str, _WorkerDisk], held: set[str], *, builds_running: bool
) -> list[LeftMount]:
    left: list[LeftMount] = []
    for point in sorted(mounts_under(str(root))):
        snapshot_id = ""
        for found in disk.values():
            mounts_dir = os.path.realpath(found.root / "mounts")
            if os.path.dirname(point) == mounts_dir:
                snapshot_id = found.by_dir.get(os.path.basename(point), "")
                break
        if snapshot_id and snapshot_id in held:
            continue
        if not snapshot_id and builds_running:
            continue  # a container's or an export's mount while a build runs
        reason = (
            f"snapshot {snapshot_id} is mounted but no live holder refers to it"
            if snapshot_id
            else "no snapshot of the log is mounted here"
        )
        left.append(LeftMount(path=point, snapshot_id=snapshot_id, reason=reason))
    return left
