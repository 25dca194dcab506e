"""``buildsvc history logs REF --follow`` prints a running build's output to its end, across a
daemon restart in the middle (it connects again and goes on after the last line it printed)."""

from __future__ import annotations

import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from buildsvc.api.client import Client
from buildsvc.api.model import SolveOptions
from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from tests.integration.api.conftest import BUILDSVC, Daemons, cli_env, solve_options
from tests.integration.resume.test_resume import _quiet, kill, restart, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_follow_prints_to_the_end_across_a_restart(daemons: Daemons, rootfs: Path) -> None:
    d = daemons.start()
    ref = uuid.uuid4().hex[:25]
    # The first run waits long enough to be killed in; the run after the restart does not wait.
    script = "echo before; if [ ! -e /marks/ran ]; then touch /marks/ran; sleep 60; fi; echo after"
    step = llb.local("rootfs").run(
        ["sh", "-c", script], mounts=[llb.cache_mount("/marks", f"marks-{ref}")], name="RUN talk"
    )
    options = SolveOptions(
        build_ref=ref,
        definition_json=step.root().marshal().to_json(indent=None).encode(),
        local_dirs={"rootfs": rootfs},
        actor="tester",
    )
    with Client(d.addr) as client:
        thread = threading.Thread(target=lambda: _quiet(client.solve, options), daemon=True)
        thread.start()
        wait_for(
            "RUN talk to start",
            lambda: any(isinstance(e, ev.VertexStarted) and e.name == "RUN talk" for e in d.events(ref)),
            d,
        )
        follower = subprocess.Popen(
            [BUILDSVC, "--addr", d.addr, "history", "logs", ref, "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        assert follower.stdout is not None
        printed: list[str] = []
        while not printed or not printed[-1].endswith(" RUN talk"):  # it started
            line = follower.stdout.readline()
            assert line, printed
            printed.append(line.rstrip("\n"))
        kill(d)
        thread.join(60)
    restart(daemons, d)
    rest, stderr = follower.communicate(timeout=120)
    assert follower.returncode == 0, stderr
    lines = [*printed, *rest.splitlines()]
    assert any(line.endswith(" after") for line in lines), lines
    assert any("INTERRUPTED" in line for line in lines), lines
    assert "DONE" in lines[-1], lines
    assert f"build {ref} completed" in stderr


def test_follow_of_a_failed_build_exits_1_with_its_error(daemons: Daemons, rootfs: Path) -> None:
    d = daemons.start()
    options = solve_options(rootfs, "echo oops; exit 3", "RUN fail")
    with Client(d.addr) as client:
        _quiet(client.solve, options)
    result = d.cli("history", "logs", options.build_ref, "--follow", expect=1)
    assert "oops" in result.stdout and "exit" in result.stderr.lower(), result
