"""A rebuild with nothing to run and nothing to export is two commits on the daemon: its start, then
its cached steps with its end (run as root)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from buildsvc.api.model import SolveOptions
from buildsvc.solver import llb
from tests.integration.api.conftest import Daemon

pytestmark = pytest.mark.root


def test_a_cached_build_with_no_outputs_records_its_steps_with_its_end(daemon: Daemon, rootfs: Path) -> None:
    step = llb.local("rootfs").run(["sh", "-c", f": {uuid.uuid4().hex}"], name="RUN step").root()
    built = step.file(llb.mkfile("/made", "x"), name="write").marshal()
    first = SolveOptions(
        build_ref=uuid.uuid4().hex[:25],
        definition_json=built.to_json(indent=None).encode(),
        local_dirs={"rootfs": rootfs},
        actor="tester",
    )
    with daemon.client() as client:
        client.solve(first)
        again = replace(first, build_ref=uuid.uuid4().hex[:25])
        client.solve(again)
    stored = daemon.stored(f"build-{again.build_ref}")
    commits = [
        sorted({s.type for s in stored if s.recorded_at == t})
        for t in dict.fromkeys(s.recorded_at for s in stored)
    ]
    assert commits[0][-1] == "SolveStarted" and "VertexStarted" not in {t for c in commits for t in c}
    # The cached steps are not written on their own before an export step there is no need for.
    assert len(commits) == 2 and "SolveCompleted" in commits[1] and "VertexCached" in commits[1], commits
