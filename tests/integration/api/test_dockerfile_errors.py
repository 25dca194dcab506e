"""A failing Dockerfile step names its file and line, as BuildKit does, through the daemon and CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from buildsvc.api.model import SolveOptions
from buildsvc.events.catalog import SolveFailed
from buildsvc.solver.errors import SolveError
from tests.integration.api.conftest import Daemon

pytestmark = pytest.mark.root

DOCKERFILE = "FROM scratch\nCOPY rootfs/ /\n\nRUN echo about to fail; false\nRUN echo never\n"


def _context(tmp_path: Path, rootfs: Path, dockerfile: str) -> Path:
    ctx = tmp_path / "ctx"
    shutil.copytree(rootfs, ctx / "rootfs", symlinks=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def test_a_failing_run_names_the_dockerfile_line_on_the_command_line(
    daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    ctx = _context(tmp_path, rootfs, DOCKERFILE)
    result = daemon.cli("build", str(ctx), "--progress", "plain", "--ref", "dferr1", expect=1)
    lines = result.stderr.splitlines()
    assert "Dockerfile:4" in lines
    assert " 4 | >>> RUN echo about to fail; false" in lines
    assert " 3 |" in lines  # a line of context before it, unmarked
    assert " 5 |     RUN echo never" in lines
    (failed,) = [e for e in daemon.events("dferr1") if isinstance(e, SolveFailed)]
    assert failed.source_location == "Dockerfile:4"


def test_the_solve_error_carries_the_location_across_grpc(
    daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    ctx = _context(tmp_path, rootfs, DOCKERFILE)
    options = SolveOptions(
        build_ref="dferr2",
        definition_json=b"",
        frontend="dockerfile.v0",
        local_dirs={"context": ctx, "dockerfile": ctx},
        actor="tester",
    )
    with pytest.raises(SolveError) as info:
        daemon.client().solve(options)
    err = info.value
    assert err.exit_code == 1
    assert err.source_location == "Dockerfile:4"
    assert " 4 | >>> RUN echo about to fail; false" in err.source_excerpt.splitlines()


def test_an_unknown_flag_suggests_the_known_one(daemon: Daemon, rootfs: Path, tmp_path: Path) -> None:
    ctx = _context(tmp_path, rootfs, "FROM scratch\nCOPY rootfs/ /\nRUN --mout=type=cache,target=/c true\n")
    result = daemon.cli("build", str(ctx), expect=2)
    assert "Dockerfile:3: unknown flag: --mout (did you mean --mount?)" in result.stderr
