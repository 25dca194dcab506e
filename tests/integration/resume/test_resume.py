"""A daemon killed with SIGKILL mid-build and started again on the same root and database resumes
the build: completed steps are not run again, interrupted ones run again on a fresh snapshot, the
output is the one an uninterrupted build makes, and no ref, snapshot or mount is left behind.

Executions are counted twice over: each step appends a line to a file in a cache mount (a host
directory outside every snapshot) before it sleeps, and the log has one VertexStarted per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from buildsvc.api.client import Client
from buildsvc.api.model import SolveOptions
from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.executors.mounts import mounts_under
from buildsvc.projections.refs import find_leaks
from buildsvc.solver import llb
from tests.integration.api.conftest import BUILDSVC, Daemon, Daemons, cli_env

pytestmark = [pytest.mark.root, pytest.mark.slow]


def restart(daemons: Daemons, dead: Daemon, *extra: str) -> Daemon:
    """A new daemon process on the root, database and address of ``dead`` (which must be gone)."""
    assert dead.proc.poll() is not None
    log = dead.log.with_name(f"daemon-{len(daemons.started)}.log")
    d = Daemon(dead.db_url, dead.root, dead.addr, log, list(extra))
    daemons.started.append(d)
    d.wait_listening()
    return d


def kill(d: Daemon) -> None:
    d.proc.kill()
    d.proc.wait(30)


class Build:
    """A two-step build (each step counts its runs, then sleeps) with a local export."""

    def __init__(
        self, rootfs: Path, tmp: Path, *, sleep_one: float, sleep_two: float, copy: Path | None = None
    ):
        self.ref = uuid.uuid4().hex[:25]
        self.cache_id = f"marks-{self.ref}"
        self.dest = tmp / f"out-{self.ref}"
        marks = llb.cache_mount("/marks", self.cache_id)
        base = llb.local("rootfs")
        one = base.run(
            ["sh", "-c", f"echo run >> /marks/one; sleep {sleep_one}; echo one > /out1"],
            mounts=[marks],
            name="RUN one",
        ).root()
        if copy is not None:
            one = one.file(llb.copy(llb.local("data"), "/", "/data"), name="COPY data")
        two = one.run(
            ["sh", "-c", f"echo run >> /marks/two; sleep {sleep_two}; echo two > /out2"],
            mounts=[marks],
            name="RUN two",
        ).root()
        self.definition = two.marshal().to_json(indent=None).encode()
        self.local_dirs = {"rootfs": rootfs, **({"data": copy} if copy is not None else {})}

    def options(self, *outputs: dict[str, str]) -> SolveOptions:
        return SolveOptions(
            build_ref=self.ref,
            definition_json=self.definition,
            local_dirs=self.local_dirs,
            exporters=outputs or ({"type": "local", "dest": str(self.dest)},),
            actor="tester",
        )

    def runs(self, d: Daemon, step: str) -> int:
        """Lines the step wrote to its marker file (one per execution)."""
        key = hashlib.sha256(f"runc-overlay\0{self.cache_id}".encode()).hexdigest()[:32]
        marker = d.root / "solver" / "cache-mounts" / key / step
        return len(marker.read_text().splitlines()) if marker.exists() else 0


def wait_for(what: str, check: Callable[[], bool], d: Daemon, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{d.output()}")
        time.sleep(0.05)


def events_of(d: Daemon, ref: str) -> list[Event]:
    return d.events(ref)


def started(events: list[Event], name: str) -> int:
    return sum(1 for e in events if isinstance(e, ev.VertexStarted) and e.name == name)


def completed(events: list[Event], name: str) -> bool:
    vertices = {e.vertex for e in events if isinstance(e, ev.VertexStarted) and e.name == name}
    return any(isinstance(e, ev.VertexCompleted) and e.vertex in vertices for e in events)


def ended(events: list[Event]) -> Event | None:
    return next(
        (e for e in events if isinstance(e, ev.SolveCompleted | ev.SolveFailed | ev.SolveCancelled)), None
    )


def wait_ended(d: Daemon, ref: str) -> Event:
    wait_for(f"build {ref} to end", lambda: ended(events_of(d, ref)) is not None, d)
    end = ended(events_of(d, ref))
    assert end is not None
    return end


def assert_no_leaks(d: Daemon) -> None:
    state = open_state(d.root, d.db_url, migrate=False)
    try:
        with state.db.read() as conn:
            report = find_leaks(conn)
    finally:
        state.close()
    assert report.empty, report
    assert mounts_under(str(d.root)) == []


def tree(root: Path) -> dict[str, str]:
    """Relative path -> what it is (file content digest, link target, or dir), for comparing outputs."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def expected_output(rootfs: Path, *, data: Path | None = None) -> dict[str, str]:
    want = tree(rootfs)
    want.update(
        {
            "marks": "dir",
            "out1": hashlib.sha256(b"one\n").hexdigest(),
            "out2": hashlib.sha256(b"two\n").hexdigest(),
        }
    )
    if data is not None:
        want["data"] = "dir"
        want.update({f"data/{k}": v for k, v in tree(data).items()})
    return want


def test_kill_during_a_long_run_resumes_without_running_a_completed_step_again(
    daemons: Daemons, rootfs: Path, tmp_path: Path
) -> None:
    d = daemons.start()
    build = Build(rootfs, tmp_path, sleep_one=0, sleep_two=3)
    llb_file = tmp_path / "build.json"
    llb_file.write_bytes(build.definition)
    client = subprocess.Popen(
        [
            *(BUILDSVC, "--addr", d.addr, "build", "--llb", str(llb_file), "--local", f"rootfs={rootfs}"),
            *("--output", f"type=local,dest={build.dest}", "--ref", build.ref, "--progress", "plain"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    wait_for("RUN two to start", lambda: build.runs(d, "two") == 1, d)
    kill(d)
    _, stderr = client.communicate(timeout=60)
    assert client.returncode == 1 and f"buildsvc build --ref {build.ref}" in stderr, stderr
    assert "restarted" in stderr

    d2 = restart(daemons, d)
    attached = d2.cli("build", "--ref", build.ref, "--progress", "plain")  # follows it to the end
    assert f"build {build.ref} completed" in attached.stderr
    end = wait_ended(d2, build.ref)
    assert isinstance(end, ev.SolveCompleted), end
    events = events_of(d2, build.ref)
    assert (build.runs(d2, "one"), started(events, "RUN one")) == (1, 1)
    assert (build.runs(d2, "two"), started(events, "RUN two")) == (2, 2)
    assert [e.vertex for e in events if isinstance(e, ev.VertexInterrupted)] == [
        e.vertex for e in events if isinstance(e, ev.VertexStarted) and e.name == "RUN two"
    ][:1]
    resumed = [e for e in events if isinstance(e, ev.SolveResumed)]
    assert len(resumed) == 1 and resumed[0].attempt == 2
    assert any(isinstance(e, ev.SnapshotRemoved) and "daemon restarted" in e.reason for e in events)
    assert sum(isinstance(e, ev.ExportCompleted) for e in events) == 1
    assert tree(build.dest) == expected_output(rootfs)
    assert_no_leaks(d2)


def test_kill_between_two_vertices(daemons: Daemons, rootfs: Path, tmp_path: Path) -> None:
    d = daemons.start()
    build = Build(rootfs, tmp_path, sleep_one=1, sleep_two=0)
    with Client(d.addr) as client:
        thread = threading.Thread(target=lambda: _quiet(client.solve, build.options()), daemon=True)
        thread.start()
        wait_for("RUN one to complete", lambda: completed(events_of(d, build.ref), "RUN one"), d)
        kill(d)
        thread.join(60)
    d2 = restart(daemons, d)
    assert isinstance(wait_ended(d2, build.ref), ev.SolveCompleted)
    events = events_of(d2, build.ref)
    assert (build.runs(d2, "one"), started(events, "RUN one")) == (1, 1)
    # RUN two may or may not have begun before the kill; a start is recorded before its container
    # runs, so the dead process may have recorded one that never ran.
    assert 1 <= build.runs(d2, "two") <= started(events, "RUN two")
    assert tree(build.dest) == expected_output(rootfs)
    assert_no_leaks(d2)


def test_kill_during_a_file_copy(daemons: Daemons, rootfs: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(400):
        (data / f"f{i:04}").write_bytes(os.urandom(256 * 1024))
    d = daemons.start()
    build = Build(rootfs, tmp_path, sleep_one=0, sleep_two=0, copy=data)
    with Client(d.addr) as client:
        thread = threading.Thread(target=lambda: _quiet(client.solve, build.options()), daemon=True)
        thread.start()
        wait_for("COPY data to start", lambda: started(events_of(d, build.ref), "COPY data") == 1, d)
        kill(d)
        thread.join(60)
    d2 = restart(daemons, d)
    assert isinstance(wait_ended(d2, build.ref), ev.SolveCompleted)
    events = events_of(d2, build.ref)
    assert (build.runs(d2, "one"), started(events, "RUN one")) == (1, 1)
    assert build.runs(d2, "two") == started(events, "RUN two") == 1
    assert tree(build.dest) == expected_output(rootfs, data=data)
    assert_no_leaks(d2)


def test_kill_during_an_export_exports_again(daemons: Daemons, rootfs: Path, tmp_path: Path) -> None:
    d = daemons.start()
    build = Build(rootfs, tmp_path, sleep_one=0, sleep_two=0)
    first = {"type": "local", "dest": str(tmp_path / "first")}
    second = {"type": "tar", "dest": str(tmp_path / "second.tar")}
    with Client(d.addr) as client:
        thread = threading.Thread(
            target=lambda: _quiet(client.solve, build.options(first, second)), daemon=True
        )
        thread.start()
        wait_for(
            "an export view",
            lambda: any(
                isinstance(e, ev.SnapshotCreated) and e.snapshot_id.startswith("export-")
                for e in events_of(d, build.ref)
            ),
            d,
        )
        kill(d)
        thread.join(60)
    d2 = restart(daemons, d)
    end = wait_ended(d2, build.ref)
    assert isinstance(end, ev.SolveCompleted), end
    events = events_of(d2, build.ref)
    exported = [e.exporter for e in events if isinstance(e, ev.ExportCompleted)]
    assert sorted(exported) == ["local", "tar"]  # each exactly once, whichever the kill interrupted
    assert end.exporter_response["local.dest"] == first["dest"]
    assert end.exporter_response["tar.dest"] == second["dest"]
    assert build.runs(d2, "one") == build.runs(d2, "two") == 1
    assert tree(tmp_path / "first") == expected_output(rootfs)
    assert (tmp_path / "second.tar").stat().st_size > 0
    assert_no_leaks(d2)


def test_a_second_kill_during_the_resume(daemons: Daemons, rootfs: Path, tmp_path: Path) -> None:
    d = daemons.start()
    build = Build(rootfs, tmp_path, sleep_one=0, sleep_two=3)
    with Client(d.addr) as client:
        thread = threading.Thread(target=lambda: _quiet(client.solve, build.options()), daemon=True)
        thread.start()
        wait_for("RUN two to start", lambda: build.runs(d, "two") == 1, d)
        kill(d)
        thread.join(60)
    d2 = restart(daemons, d)
    wait_for("RUN two to start again", lambda: build.runs(d2, "two") == 2, d2)
    kill(d2)
    d3 = restart(daemons, d2)
    assert isinstance(wait_ended(d3, build.ref), ev.SolveCompleted)
    events = events_of(d3, build.ref)
    assert (build.runs(d3, "one"), started(events, "RUN one")) == (1, 1)
    assert (build.runs(d3, "two"), started(events, "RUN two")) == (3, 3)
    assert [e.attempt for e in events if isinstance(e, ev.SolveResumed)] == [2, 3]
    assert sum(isinstance(e, ev.VertexInterrupted) for e in events) == 2
    assert tree(build.dest) == expected_output(rootfs)
    assert_no_leaks(d3)


def test_no_resume_records_unfinished_builds_cancelled(
    daemons: Daemons, rootfs: Path, tmp_path: Path
) -> None:
    d = daemons.start()
    build = Build(rootfs, tmp_path, sleep_one=0, sleep_two=30)
    with Client(d.addr) as client:
        thread = threading.Thread(target=lambda: _quiet(client.solve, build.options()), daemon=True)
        thread.start()
        wait_for("RUN two to start", lambda: build.runs(d, "two") == 1, d)
        kill(d)
        thread.join(60)
    d2 = restart(daemons, d, "--no-resume")
    end = wait_ended(d2, build.ref)
    assert isinstance(end, ev.SolveCancelled) and "--no-resume" in end.reason
    events = events_of(d2, build.ref)
    assert build.runs(d2, "two") == started(events, "RUN two") == 1
    assert any(isinstance(e, ev.VertexInterrupted) for e in events)
    assert not any(isinstance(e, ev.SolveResumed) for e in events)
    assert_no_leaks(d2)


def test_a_missing_local_dir_fails_the_resumed_build_naming_it(
    daemons: Daemons, rootfs: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    d = daemons.start()
    build = Build(rootfs, tmp_path, sleep_one=3, sleep_two=0, copy=data)
    with Client(d.addr) as client:
        thread = threading.Thread(target=lambda: _quiet(client.solve, build.options()), daemon=True)
        thread.start()
        wait_for("RUN one to start", lambda: build.runs(d, "one") == 1, d)
        kill(d)
        thread.join(60)
    # Gone from the host and from the daemon's context store: nothing is left to read it from.
    shutil.rmtree(data)
    shutil.rmtree(d.root / "contexts")
    d2 = restart(daemons, d)
    end = wait_ended(d2, build.ref)
    assert isinstance(end, ev.SolveFailed), end
    assert "local dir 'data'" in end.error and str(data) in end.error
    assert_no_leaks(d2)


def _quiet(call: Callable[[SolveOptions], object], options: SolveOptions) -> None:
    # The daemon is killed under it: the test reads the log instead.
    with contextlib.suppress(Exception):
        call(options)


def _delete_snapshot(root: Path, snapshot_id: str) -> None:
    """Remove a committed snapshot behind the daemon's back (its metadata file and its files)."""
    for meta in (root / "workers").glob("*/**/metadata/*.json"):
        if json.loads(meta.read_text()).get("key") == snapshot_id:
            shutil.rmtree(meta.parent.parent / "snapshots" / meta.stem)
            meta.unlink()
            return
    raise AssertionError(f"snapshot {snapshot_id} not found under {root}")


def test_a_completed_step_whose_snapshot_is_gone_runs_again(
    daemons: Daemons, rootfs: Path, tmp_path: Path
) -> None:
    d = daemons.start()
    build = Build(rootfs, tmp_path, sleep_one=0, sleep_two=3)
    with Client(d.addr) as client:
        thread = threading.Thread(target=lambda: _quiet(client.solve, build.options()), daemon=True)
        thread.start()
        wait_for("RUN two to start", lambda: build.runs(d, "two") == 1, d)
        kill(d)
        thread.join(60)
    events = events_of(d, build.ref)
    one = next(e.vertex for e in events if isinstance(e, ev.VertexStarted) and e.name == "RUN one")
    result = next(e.snapshot_id for e in events if isinstance(e, ev.VertexCompleted) and e.vertex == one)
    _delete_snapshot(d.root, result)

    d2 = restart(daemons, d)
    assert isinstance(wait_ended(d2, build.ref), ev.SolveCompleted)
    events = events_of(d2, build.ref)
    missing = [e for e in events if isinstance(e, ev.VertexResultMissing)]
    assert [(e.vertex, e.snapshot_id) for e in missing] == [(one, result)]
    assert (build.runs(d2, "one"), started(events, "RUN one")) == (2, 2)
    assert (build.runs(d2, "two"), started(events, "RUN two")) == (2, 2)
    assert tree(build.dest) == expected_output(rootfs)
    assert_no_leaks(d2)
