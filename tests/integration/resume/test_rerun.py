"""``buildsvc build --rerun REF [--from-failure]`` against a real daemon: a recorded build runs
again with its recorded definition, options and local dir content (not what the host holds now),
as a new build whose SolveRequested records ``rerun_of``; ``--from-failure`` starts at the failed
step, taking what completed before it from the record even where the cache would not."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from tests.integration.api.conftest import Daemon, Daemons

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _marks(d: Daemon, cache_id: str) -> Path:
    key = hashlib.sha256(f"runc-overlay\0{cache_id}".encode()).hexdigest()[:32]
    return d.root / "solver" / "cache-mounts" / key


def copy_build(tmp_path: Path) -> tuple[Path, Path]:
    """A local dir ``data`` holding ``f`` ("recorded") and an LLB file that copies it into rootfs and
    runs a new step on it: a rerun must see "recorded" in ``/copied`` whatever ``f`` holds by then."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("recorded\n")
    step = (
        llb.local("rootfs")
        .file(llb.copy(llb.local("data"), "/f", "/f"), name="COPY f")
        .run(["sh", "-c", f": {uuid.uuid4().hex}; cat /f > /copied"], name="RUN copy")
    )
    definition = tmp_path / "build.json"
    definition.write_text(step.root().marshal().to_json(indent=None))
    return data, definition


def _ref_of(stderr: str) -> str:
    line = next(line for line in stderr.splitlines() if line.startswith("build ") and " completed" in line)
    return line.split()[1]


def _requested(d: Daemon, ref: str) -> ev.SolveRequested:
    found = next(e for e in d.events(ref) if isinstance(e, ev.SolveRequested))
    assert isinstance(found, ev.SolveRequested)
    return found


def test_a_rerun_uses_the_recorded_content_not_the_host_dirs(
    daemons: Daemons, rootfs: Path, tmp_path: Path
) -> None:
    d = daemons.start()
    data, definition = copy_build(tmp_path)
    first = d.cli(
        *("build", "--llb", str(definition), "--local", f"rootfs={rootfs}", "--local", f"data={data}"),
        *("--output", f"type=local,dest={tmp_path / 'one'}", "--progress", "quiet"),
    )
    original = _ref_of(first.stderr)
    (data / "f").write_text("changed on the host since\n")

    again = d.cli("build", "--rerun", original, "--output", f"type=local,dest={tmp_path / 'two'}")
    rerun = _ref_of(again.stderr)
    assert rerun != original and f"a rerun of {original}" in again.stderr
    assert (tmp_path / "two" / "copied").read_text() == "recorded\n"
    requested, recorded = _requested(d, rerun), _requested(d, original)
    assert requested.rerun_of == original and recorded.rerun_of == ""
    assert requested.definition == recorded.definition
    assert [e["type"] for e in requested.exporters] == ["local"]  # the -o given, not the recorded one
    assert requested.exporters != recorded.exporters
    received = [e for e in d.events(rerun) if isinstance(e, ev.LocalContextReceived)]
    original_received = [e for e in d.events(original) if isinstance(e, ev.LocalContextReceived)]
    assert {e.name: e.manifest_digest for e in received} == {
        e.name: e.manifest_digest for e in original_received
    }


def test_from_failure_starts_at_the_failed_step(daemons: Daemons, rootfs: Path, tmp_path: Path) -> None:
    d = daemons.start()
    cache_id = f"marks-{uuid.uuid4().hex}"
    marks = llb.cache_mount("/marks", cache_id)
    # RUN one is never cached (ignore_cache), so only the record can spare its second run.
    one = llb.local("rootfs").run(
        ["sh", "-c", "echo run >> /marks/one; echo one > /one"],
        mounts=[marks],
        name="RUN one",
        ignore_cache=True,
    )
    two = one.root().run(
        ["sh", "-c", "echo run >> /marks/two; test -e /marks/ok || exit 3; cat /one > /two"],
        mounts=[marks],
        name="RUN two",
    )
    definition = tmp_path / "build.json"
    definition.write_text(two.root().marshal().to_json(indent=None))
    failed = d.cli(
        "build",
        "--llb",
        str(definition),
        "--local",
        f"rootfs={rootfs}",
        "--ref",
        "failing" + cache_id[-8:],
        expect=1,
    )
    original = "failing" + cache_id[-8:]
    assert "exit" in failed.stderr.lower()
    runs = _marks(d, cache_id)
    assert (runs / "one").read_text().count("run") == 1

    # Without the fix, a plain rerun fails again at the same step, having run RUN one again.
    d.cli("build", "--rerun", original, expect=1)
    assert (runs / "one").read_text().count("run") == 2

    (runs / "ok").write_text("")  # the fix
    out = tmp_path / "out"
    fixed = d.cli("build", "--rerun", original, "--from-failure", "--output", f"type=local,dest={out}")
    rerun = _ref_of(fixed.stderr)
    assert (out / "two").read_text() == "one\n"
    assert (runs / "one").read_text().count("run") == 2  # taken from the record, not run
    assert (runs / "two").read_text().count("run") == 3
    events = d.events(rerun)
    assert [e.name for e in events if isinstance(e, ev.VertexStarted)] == ["RUN two"]
    assert any(isinstance(e, ev.VertexCached) and e.name == "RUN one" for e in events)
    assert _requested(d, rerun).rerun_of == original


def test_rerun_refusals_name_the_problem(daemons: Daemons, rootfs: Path, tmp_path: Path) -> None:
    d = daemons.start()
    step = llb.local("rootfs").run(["sh", "-c", f": {uuid.uuid4().hex}"], name="RUN ok")
    definition = tmp_path / "build.json"
    definition.write_text(step.root().marshal().to_json(indent=None))
    ok = _ref_of(d.cli("build", "--llb", str(definition), "--local", f"rootfs={rootfs}").stderr)
    assert "did not fail" in d.cli("build", "--rerun", ok, "--from-failure", expect=2).stderr
    assert "no build 'nosuchref'" in d.cli("build", "--rerun", "nosuchref", expect=1).stderr
    assert (
        "--rerun takes the build from the log"
        in d.cli("build", "--rerun", ok, "--llb", str(definition), expect=2).stderr
    )
    assert "goes with --rerun" in d.cli("build", "--from-failure", expect=2).stderr
