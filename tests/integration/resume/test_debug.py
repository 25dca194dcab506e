"""``buildsvc history debug REF -- CMD`` on a real daemon: CMD runs where REF's failed step ran (its
recorded input snapshot, env, cwd and mounts), its output and exit status come back, its changes
never reach the recorded snapshots, and the session is recorded (who debugged what)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from tests.integration.api.conftest import BUILDSVC, Daemon, Daemons, cli_env

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _snapshot_file(root: Path, snapshot_id: str, name: str) -> Path:
    for meta in (root / "workers").glob("*/**/metadata/*.json"):
        if json.loads(meta.read_text()).get("key") == snapshot_id:
            return meta.parent.parent / "snapshots" / meta.stem / "fs" / name
    raise AssertionError(f"snapshot {snapshot_id} not found under {root}")


def _debug_ref(stderr: str) -> str:
    line = next(line for line in stderr.splitlines() if line.startswith("debug build "))
    return line.split()[2].rstrip(":")


def _failed_build(d: Daemon, rootfs: Path, tmp_path: Path) -> tuple[str, ev.VertexCompleted]:
    ref = "dbg" + uuid.uuid4().hex[:12]
    one = llb.local("rootfs").run(["sh", "-c", f": {ref}; echo one > /one"], name="RUN one")
    two = one.root().run(
        ["sh", "-c", "exit 3"],
        env={"FOO": "bar"},
        cwd="/tmp",
        mounts=[llb.cache_mount("/marks", f"marks-{ref}")],
        name="RUN two",
    )
    definition = tmp_path / "build.json"
    definition.write_text(two.root().marshal().to_json(indent=None))
    d.cli("build", "--llb", str(definition), "--local", f"rootfs={rootfs}", "--ref", ref, expect=1)
    events = d.events(ref)
    first = next(e.vertex for e in events if isinstance(e, ev.VertexStarted) and e.name == "RUN one")
    done = next(e for e in events if isinstance(e, ev.VertexCompleted) and e.vertex == first)
    assert isinstance(done, ev.VertexCompleted)
    return ref, done


def test_debug_runs_a_command_on_the_failed_steps_inputs(
    daemons: Daemons, rootfs: Path, tmp_path: Path
) -> None:
    d = daemons.start()
    ref, one = _failed_build(d, rootfs, tmp_path)
    script = 'cat /one; echo "$FOO"; pwd; test -d /marks && echo marks; echo changed > /one; cat /one'
    result = d.cli("history", "debug", ref, "--", "sh", "-c", script)
    assert result.stdout.splitlines() == ["one", "bar", "/tmp", "marks", "changed"], result
    # The change went to the debug build's own snapshot: the recorded one is as it was.
    assert _snapshot_file(d.root, one.snapshot_id, "one").read_text() == "one\n"
    assert d.cli("history", "debug", ref, "--", "cat", "/one").stdout == "one\n"

    debug_ref = _debug_ref(result.stderr)
    events = d.events(debug_ref)
    requested = next(e for e in events if isinstance(e, ev.SolveRequested))
    assert isinstance(requested, ev.SolveRequested) and requested.rerun_of == ref
    recorded = [e for e in events if isinstance(e, ev.BuildDebugged)]
    failed = next(e for e in d.events(ref) if isinstance(e, ev.SolveFailed))
    assert isinstance(failed, ev.SolveFailed)
    assert [(e.debugged, e.vertex, e.command) for e in recorded] == [
        (ref, failed.vertex, ("sh", "-c", script))
    ]
    actor = d.stored(debug_ref)[0].actor
    assert actor and not actor.startswith("unverified"), actor  # who debugged: the peer's uid
    assert [e.name for e in events if isinstance(e, ev.VertexStarted)] == ["debug RUN two"]


def test_debug_pipes_stdin_and_returns_the_exit_status(
    daemons: Daemons, rootfs: Path, tmp_path: Path
) -> None:
    d = daemons.start()
    ref, _ = _failed_build(d, rootfs, tmp_path)
    piped = subprocess.run(
        [BUILDSVC, "--addr", d.addr, "history", "debug", ref],
        input="cat /one; echo to-stderr >&2",
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert (piped.returncode, piped.stdout) == (0, "one\n"), piped
    assert "to-stderr" in piped.stderr
    assert d.cli("history", "debug", ref, "--", "sh", "-c", "exit 7", expect=7).stdout == ""


def test_debug_refusals_name_the_problem(daemons: Daemons, rootfs: Path, tmp_path: Path) -> None:
    d = daemons.start()
    step = llb.local("rootfs").run(["sh", "-c", f": {uuid.uuid4().hex}"], name="RUN ok")
    definition = tmp_path / "build.json"
    definition.write_text(step.root().marshal().to_json(indent=None))
    d.cli("build", "--llb", str(definition), "--local", f"rootfs={rootfs}", "--ref", "okbuild")
    assert "did not fail" in d.cli("history", "debug", "okbuild", "--", "true", expect=2).stderr
