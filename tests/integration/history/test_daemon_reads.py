"""The read commands through a real daemon: ``history ls|inspect|logs|trace|replay|provenance`` and
``leaks`` with ``--addr`` ask it (``BuildEvents``, ``ListBuilds``, ``Leaks``) and never open a root or
database of their own; what they print is what the embedded commands print from the same log.

Also here: who the daemon's own events are recorded as (``daemon``, or the caller of a prune), and
that stopping the daemon closes its public socket.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from buildsvc.api.model import SolveOptions
from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from buildsvc.solver.errors import SolveError
from tests.integration.api.conftest import BUILDSVC, Daemon, Daemons, cli_env, daemons
from tests.integration.resume.test_resume import Build, _quiet, kill, restart, wait_ended, wait_for

__all__ = ["daemons"]


def _build(rootfs: Path, *, fail: bool) -> SolveOptions:
    nonce = uuid.uuid4().hex
    first = llb.local("rootfs").run(["sh", "-c", f": {nonce}; echo said-{nonce[:6]}"], name="speak").root()
    second = first.file(llb.mkfile("/made", nonce), name="write")
    last = second.run(["sh", "-c", "echo bye; exit 3" if fail else "echo bye"], name="finish").root()
    return SolveOptions(
        build_ref=f"dr-{nonce[:20]}",
        definition_json=last.marshal().to_json(indent=None).encode(),
        local_dirs={"rootfs": rootfs},
        actor="tester",
    )


def _embedded(d: Daemon, *args: str, expect: int = 0) -> str:
    """The same command run on the daemon's state in this process (no daemon asked)."""
    done = subprocess.run(
        [BUILDSVC, "--root", str(d.root), "--db", d.db_url, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == expect, done.stderr
    return done.stdout


def _remote(d: Daemon, *args: str, empty_state: Path, expect: int = 0) -> str:
    """``buildsvc --addr ADDR ...`` with a default root and database that hold nothing: a command
    that opened them would find no build (and leave a database file behind).
    """
    env = cli_env() | {"BUILDSVC_ROOT": str(empty_state), "BUILDSVC_DB_URL": f"sqlite:///{empty_state}/db"}
    done = subprocess.run(
        [BUILDSVC, "--addr", d.addr, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == expect, done.stderr
    return done.stdout


def test_read_commands_ask_the_daemon_and_print_what_the_embedded_ones_print(
    shared_daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    d = shared_daemon
    with d.client() as client:
        ok = _build(rootfs, fail=False)
        client.solve(ok)
        failed = _build(rootfs, fail=True)
        with pytest.raises(SolveError):
            client.solve(failed)
    empty = tmp_path / "empty-state"
    empty.mkdir()
    for ref in (failed.build_ref,):
        stored = d.stored(ref)
        middle = stored[len(stored) // 2].position
        for args in (
            ("history", "inspect", ref, "--format", "json"),
            ("history", "inspect", ref),
            ("history", "logs", ref),
            ("history", "trace", ref, "--format", "json"),
            ("history", "replay", ref, "--format", "json"),
            ("history", "replay", ref, "--position", str(middle), "--format", "json"),
            ("history", "provenance", ref),
            ("leaks", "--ref", ref, "--format", "json"),
            ("history", "ls", "--format", "json"),
            ("history", "ls"),
            ("history", "ls", "--limit", "1", "--format", "json"),
        ):
            assert _remote(d, *args, empty_state=empty) == _embedded(d, *args), args
    inspected = json.loads(
        _remote(d, "history", "inspect", failed.build_ref, "--format", "json", empty_state=empty)
    )
    assert inspected["status"] == "failed" and inspected["exit_code"] == 3
    assert {v["name"]: v["status"] for v in inspected["vertices"]}["finish"] == "failed"
    for args in (("history", "inspect", ok.build_ref, "--format", "json"), ("history", "logs", ok.build_ref)):
        assert _remote(d, *args, empty_state=empty) == _embedded(d, *args), args
    assert "said-" in _remote(d, "history", "logs", ok.build_ref, empty_state=empty)
    # The whole report (the disk scan runs in the daemon) agrees with the embedded one too.
    assert _remote(d, "leaks", "--format", "json", empty_state=empty) == _embedded(
        d, "leaks", "--format", "json"
    )
    # A deleted build leaves the history here as in the projection.
    with d.client() as client:
        client.update_build_history(ok.build_ref, delete=True)
    gone = subprocess.run(
        [BUILDSVC, "--addr", d.addr, "history", "inspect", ok.build_ref],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert gone.returncode == 1 and f"no build {ok.build_ref!r} in the history" in gone.stderr
    listed = [
        r["build_ref"] for r in json.loads(_remote(d, "history", "ls", "--format", "json", empty_state=empty))
    ]
    assert failed.build_ref in listed and ok.build_ref not in listed
    assert _remote(d, "history", "logs", "no-such-build", empty_state=empty, expect=1) == ""
    assert os.listdir(empty) == []  # nothing opened the default state


def test_the_daemons_own_events_are_the_daemons_and_a_prune_is_its_callers(
    daemons: Daemons, rootfs: Path
) -> None:
    d = daemons.start()
    with d.client() as client:
        daemon_id = client.info().daemon_id
        options = _build(rootfs, fail=False)
        client.solve(options)
        removed = [r for r in client.prune(all=True) if not hasattr(r, "reason")]
    assert removed
    own = d.stored(f"daemon-{daemon_id}")
    started = [s for s in own if s.type in (ev.DaemonStarted.type_name, ev.WorkerRegistered.type_name)]
    assert started and {s.actor for s in started} == {"daemon"}
    pruned = [s for s in own if s.type in (ev.SnapshotRemoved.type_name, ev.CacheRecordRemoved.type_name)]
    assert pruned and {s.actor for s in pruned} == {"uid=0 gid=0 (root)"}
    d.terminate()
    assert d.wait() == 0
    [stopped] = [s for s in d.stored(f"daemon-{daemon_id}") if s.type == ev.DaemonStopped.type_name]
    assert stopped.actor == "daemon"
    # Stopping the server closed the relay: its public socket is gone with it.
    assert not Path(d.addr.removeprefix("unix://")).exists()


def test_a_resumed_builds_recovery_is_the_daemons_and_its_steps_the_callers(
    daemons: Daemons, rootfs: Path, tmp_path: Path
) -> None:
    d = daemons.start()
    build = Build(rootfs, tmp_path, sleep_one=0, sleep_two=3)
    solving = threading.Thread(target=_quiet, args=(d.client().solve, build.options()), daemon=True)
    solving.start()
    wait_for("RUN two to start", lambda: build.runs(d, "two") == 1, d)
    kill(d)
    solving.join(60)
    again = restart(daemons, d)
    assert isinstance(wait_ended(again, build.ref), ev.SolveCompleted)
    stored = again.stored(build.ref)
    resumed_at = next(i for i, s in enumerate(stored) if s.type == ev.SolveResumed.type_name)
    caller = stored[0].actor
    assert caller.startswith("uid=0 gid=0")
    assert {s.actor for s in stored[:resumed_at]} == {caller}
    # The recovery (the resume, the interruption, the dead process's snapshot removed and refs
    # released) is the daemon's doing; the step that runs again is the caller's build again.
    recovery = [
        s
        for s in stored[resumed_at:]
        if s.type in (ev.SolveResumed.type_name, ev.VertexInterrupted.type_name)
        or (s.type == ev.SnapshotRemoved.type_name and "daemon restarted" in s.payload["reason"])
    ]
    assert len(recovery) >= 3 and {s.actor for s in recovery} == {"daemon"}
    rerun = [s for s in stored[resumed_at:] if s.type == ev.VertexStarted.type_name]
    assert rerun and {s.actor for s in rerun} == {caller}
