"""A daemon killed between two vertices of a build that imports a local cache: the resumed build
gets its imports again (read from its recorded options), so the steps the cache holds are served
from it, not run. The import's offers were in the dead process's memory only."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from buildsvc.api.client import Client
from buildsvc.api.model import SolveOptions
from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from tests.integration.api.conftest import Daemon, Daemons
from tests.integration.resume.test_resume import (
    _quiet,
    assert_no_leaks,
    completed,
    events_of,
    kill,
    restart,
    wait_ended,
    wait_for,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _definition(marks: llb.RunMount) -> bytes:
    """``first``, ``second`` (slow), then ``two``: the same definition, so the same cache keys, each time."""
    first = llb.local("rootfs").run(
        ["sh", "-c", "echo run >> /marks/first; echo a > /a"], mounts=[marks], name="RUN first"
    )
    second = first.root().run(
        ["sh", "-c", "echo run >> /marks/second; sleep 2; echo b > /b"], mounts=[marks], name="RUN second"
    )
    two = second.root().run(["sh", "-c", "cat /a /b > /two"], name="RUN two")
    return two.root().marshal().to_json(indent=None).encode()


def _runs(d: Daemon, name: str, *refs: str) -> int:
    return sum(
        1 for ref in refs for e in events_of(d, ref) if isinstance(e, ev.VertexStarted) and e.name == name
    )


def test_a_resumed_build_imports_its_cache_again(daemons: Daemons, rootfs: Path, tmp_path: Path) -> None:
    d = daemons.start()
    marks = llb.cache_mount("/marks", f"marks-{uuid.uuid4().hex}")
    cache = tmp_path / "cache"
    exported = SolveOptions(
        build_ref=f"exp-{uuid.uuid4().hex[:20]}",
        definition_json=_definition(marks),
        local_dirs={"rootfs": rootfs},
        # The result's record only: the steps before it run again after the prune below.
        cache_exports=({"type": "local", "dest": str(cache), "mode": "min"},),
        actor="tester",
    )
    with Client(d.addr) as client:
        client.solve(exported)
        list(client.prune(all=True))  # nothing left here: only the exported cache can serve a step
    assert _runs(d, "RUN two", exported.build_ref) == 1

    imported = SolveOptions(
        build_ref=f"imp-{uuid.uuid4().hex[:20]}",
        definition_json=_definition(marks),
        local_dirs={"rootfs": rootfs},
        exporters=({"type": "local", "dest": str(tmp_path / "out")},),
        cache_imports=({"type": "local", "src": str(cache)},),
        actor="tester",
    )
    with Client(d.addr) as client:
        thread = threading.Thread(target=lambda: _quiet(client.solve, imported), daemon=True)
        thread.start()
        # Between RUN first and RUN second (which sleeps): RUN two is not looked up yet.
        wait_for("RUN first to complete", lambda: completed(events_of(d, imported.build_ref), "RUN first"), d)
        kill(d)
        thread.join(60)
    events = events_of(d, imported.build_ref)
    served = any(isinstance(e, ev.VertexCached) and e.name == "RUN two" for e in events)
    assert not served and not completed(events, "RUN two")  # else the kill came too late to show it

    d2 = restart(daemons, d)
    assert isinstance(wait_ended(d2, imported.build_ref), ev.SolveCompleted)
    assert (tmp_path / "out" / "two").read_text() == "a\nb\n"
    # Served by the import after the restart, never run again.
    assert _runs(d2, "RUN two", exported.build_ref, imported.build_ref) == 1
    events = events_of(d2, imported.build_ref)
    assert any(isinstance(e, ev.VertexCached) and e.name == "RUN two" for e in events)
    imports = _imports_of(d2, imported.build_ref)
    assert len(imports) == 2 and all(not i.error for i in imports)  # before the kill, and on resume
    assert_no_leaks(d2)


def _imports_of(d: Daemon, ref: str) -> list[ev.CacheImported]:
    state = open_state(d.root, d.db_url, migrate=False)
    try:
        found = [s.decode() for s in state.store.read_all() if s.type == ev.CacheImported.type_name]
    finally:
        state.close()
    return [e for e in found if isinstance(e, ev.CacheImported) and e.build_ref == ref]
