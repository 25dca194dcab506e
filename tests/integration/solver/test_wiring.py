"""``open_engine``: the daemon's and workers' events, worker choice, and the exports (run as root)."""

from __future__ import annotations

import importlib.metadata
import tarfile
from pathlib import Path

import pytest

import buildsvc
from buildsvc.daemon.engine import open_engine
from buildsvc.daemon.state import open_state
from buildsvc.errors import InvalidInput
from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from buildsvc.solver.engine import SolveRequest
from tests.integration.solver.conftest import Harness

pytestmark = pytest.mark.root

ALL_WORKERS = ["runc-overlay", "crun-overlay", "runc-native"]


def test_the_daemon_and_its_workers_are_recorded(db_url: str, tmp_path: Path) -> None:
    state = open_state(tmp_path / "root", db_url)
    try:
        engine = open_engine(state)
        assert [w.name for w in engine.workers] == ALL_WORKERS
        assert [w.info.name for w in engine.solver.workers] == ALL_WORKERS
        engine.close()
        engine.close()  # a second close records nothing more
        events = [e.decode() for e in state.store.read_stream(f"daemon-{engine.daemon_id}")]
        started, *registered, stopped = events
        assert isinstance(started, ev.DaemonStarted)
        assert started.daemon_id == engine.daemon_id
        assert started.pid > 0 and started.hostname and started.root == str(tmp_path / "root")
        # The version is the package's own, the one its installed distribution was built with.
        assert started.version == buildsvc.__version__ == importlib.metadata.version("buildsvc")
        assert [(type(e), getattr(e, "worker", "")) for e in registered] == [
            (ev.WorkerRegistered, name) for name in ALL_WORKERS
        ]
        crun = registered[1]
        assert isinstance(crun, ev.WorkerRegistered)
        assert crun.executor == "crun" and crun.snapshotter == "overlay"
        assert crun.daemon_id == engine.daemon_id and crun.platforms
        assert isinstance(stopped, ev.DaemonStopped)
    finally:
        state.close()


def test_worker_names_choose_and_order_the_workers(db_url: str, tmp_path: Path) -> None:
    state = open_state(tmp_path / "root", db_url)
    try:
        engine = open_engine(state, worker_names=["crun-overlay", "runc-native"])
        try:
            assert [w.name for w in engine.workers] == ["crun-overlay", "runc-native"]
            definition = llb.scratch().file(llb.mkfile("/x", "x")).marshal()
            result = engine.solver.solve(SolveRequest(definition=definition))
            assert result.output is not None and result.output.worker.info.name == "crun-overlay"
        finally:
            engine.close()
        with pytest.raises(InvalidInput) as info:
            open_engine(state, worker_names=["runc-overlay", "gvisor"])
        assert "gvisor" in str(info.value)
        for name in ALL_WORKERS:
            assert name in str(info.value)
    finally:
        state.close()


def test_export_tar_records_its_view_and_leaves_nothing(h: Harness, tmp_path: Path) -> None:
    state = llb.scratch().file(
        llb.mkdir("/d", 0o700).mkfile("/d/f", "data", mode=0o640).symlink("/d/f", "/link"), name="files"
    )
    result = h.solve(state.marshal(), build_ref="tarred")
    dest = tmp_path / "out" / "result.tar"
    h.engine.export_tar(result.output, dest, build_ref=result.build_ref)
    with tarfile.open(dest) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["d", "d/f", "link"]
        assert members["d"].isdir() and members["d"].mode == 0o700
        assert members["d/f"].mode == 0o640
        f = tar.extractfile("d/f")
        assert f is not None and f.read() == b"data"
        assert members["link"].issym() and members["link"].linkname == "/d/f"

    events = h.events("tarred")
    tail = events[events.index(next(e for e in events if isinstance(e, ev.SolveCompleted))) + 1 :]
    assert [type(e) for e in tail] == [ev.SnapshotCreated, ev.RefAcquired, ev.RefReleased, ev.SnapshotRemoved]
    created, acquired = tail[0], tail[1]
    assert isinstance(created, ev.SnapshotCreated) and created.kind == "view"
    assert result.output is not None and created.parent == result.output.snapshot_id
    assert isinstance(acquired, ev.RefAcquired) and acquired.holder_kind == "export"
    assert acquired.build_ref == "tarred"
    report = h.leaks()
    assert report.refs == () and report.snapshots == ()


def test_exporting_an_empty_result_writes_nothing(h: Harness, tmp_path: Path) -> None:
    result = h.solve(llb.scratch().marshal(), build_ref="empty")
    assert result.output is None
    h.engine.export_local(result.output, tmp_path / "dir", build_ref="empty")
    assert list((tmp_path / "dir").iterdir()) == []
