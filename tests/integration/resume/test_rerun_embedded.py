"""``buildsvc build --rerun REF [--from-failure]`` with the embedded engine (no daemon): the recorded
definition and local dir content come from the log and the root's context store, as a daemon's
rerun takes them (see test_rerun.py), and ``--from-failure`` takes what completed from the record."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import pytest

from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.solver import llb
from tests.integration.api.conftest import rootfs
from tests.integration.resume.test_rerun import _ref_of, copy_build
from tests.integration.test_cli import Cli, cli

__all__ = ["cli", "rootfs"]  # fixtures

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _events(cli: Cli, ref: str) -> list[Event]:
    state = open_state(cli.root, cli.db_url, migrate=False)
    try:
        return [s.decode() for s in state.store.read_stream(f"build-{ref}")]
    finally:
        state.close()


def test_an_embedded_rerun_uses_the_recorded_content(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    data, definition = copy_build(tmp_path)
    first = cli.run(
        *("build", "--llb", str(definition), "--local", f"rootfs={rootfs}", "--local", f"data={data}"),
        *("--output", f"type=local,dest={tmp_path / 'one'}", "--progress", "quiet"),
    )
    original = _ref_of(first.stderr)
    (data / "f").write_text("changed on the host since\n")

    again = cli.run("build", "--rerun", original, "--output", f"type=local,dest={tmp_path / 'two'}")
    rerun = _ref_of(again.stderr)
    assert rerun != original and f"a rerun of {original}" in again.stderr
    assert (tmp_path / "two" / "copied").read_text() == "recorded\n"
    [requested] = [e for e in _events(cli, rerun) if isinstance(e, ev.SolveRequested)]
    [recorded] = [e for e in _events(cli, original) if isinstance(e, ev.SolveRequested)]
    assert requested.rerun_of == original and requested.definition == recorded.definition
    assert "no-such-build" in cli.run("build", "--rerun", "no-such-build", expect=1).stderr


def test_an_embedded_rerun_keeps_the_recorded_outputs_and_cache_export(
    cli: Cli, rootfs: Path, tmp_path: Path
) -> None:
    data, definition = copy_build(tmp_path)
    out, store = tmp_path / "one", tmp_path / "cache"
    first = cli.run(
        *("build", "--llb", str(definition), "--local", f"rootfs={rootfs}", "--local", f"data={data}"),
        *("--output", f"type=local,dest={out}", "--export-cache", f"type=local,dest={store}"),
    )
    original = _ref_of(first.stderr)
    [recorded] = [e for e in _events(cli, original) if isinstance(e, ev.SolveRequested)]
    assert [dict(e) for e in recorded.exporters] == [{"type": "local", "dest": str(out)}]
    assert [dict(c) for c in recorded.cache_exports] == [{"type": "local", "dest": str(store)}]
    shutil.rmtree(out)
    shutil.rmtree(store)

    again = cli.run("build", "--rerun", original)  # no --output: the recorded ones
    assert (out / "copied").read_text() == "recorded\n"
    assert (store / "index.json").is_file()
    [requested] = [e for e in _events(cli, _ref_of(again.stderr)) if isinstance(e, ev.SolveRequested)]
    assert requested.exporters == recorded.exporters and requested.cache_exports == recorded.cache_exports


def test_an_embedded_rerun_from_failure_starts_at_the_failed_step(
    cli: Cli, rootfs: Path, tmp_path: Path
) -> None:
    cache_id = f"marks-{uuid.uuid4().hex}"
    marks = llb.cache_mount("/marks", cache_id)
    one = llb.local("rootfs").run(
        ["sh", "-c", "echo run >> /marks/one; echo one > /one"],
        mounts=[marks],
        name="RUN one",
        ignore_cache=True,
    )
    two = one.root().run(
        ["sh", "-c", "test -e /marks/ok || exit 3; cat /one > /two"], mounts=[marks], name="RUN two"
    )
    definition = tmp_path / "build.json"
    definition.write_text(two.root().marshal().to_json(indent=None))
    original = "failing" + cache_id[-8:]
    cli.run("build", "--llb", str(definition), "--local", f"rootfs={rootfs}", "--ref", original, expect=1)
    key = hashlib.sha256(f"runc-overlay\0{cache_id}".encode()).hexdigest()[:32]
    runs = cli.root / "solver" / "cache-mounts" / key
    (runs / "ok").write_text("")  # the fix

    out = tmp_path / "out"
    fixed = cli.run("build", "--rerun", original, "--from-failure", "--output", f"type=local,dest={out}")
    assert (out / "two").read_text() == "one\n"
    assert (runs / "one").read_text().count("run") == 1  # taken from the record, not run again
    events = _events(cli, _ref_of(fixed.stderr))
    assert [e.name for e in events if isinstance(e, ev.VertexStarted)] == ["RUN two"]
