"""The read commands through a real daemon answer without loading the engine or SQLAlchemy.

Each runs as ``buildsvc --addr ... CMD`` in a fresh interpreter that reports, at its exit, which
modules it loaded. Before, every one of them imported the embedded engine's modules at the top
(0.25-0.4 s of SQLAlchemy, alembic, the projections' tables) only to ask the daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.api.conftest import Daemon, cli_env, solve_options
from tests.unit.cli.test_client_imports import SERVER_SIDE

pytestmark = pytest.mark.root

_RUN_AND_REPORT = (
    "import atexit, json, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
    "from buildsvc.cli.main import main\n"
    "sys.argv[0] = 'buildsvc'\n"
    "main()\n"
)


def _run(daemon: Daemon, *args: str) -> tuple[str, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN_AND_REPORT, "--addr", daemon.addr, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        check=False,
    )
    assert done.returncode == 0, f"buildsvc {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    modules = json.loads(done.stderr.rpartition("MODULES ")[2])
    return done.stdout, set(modules)


def test_the_read_commands_ask_the_daemon_without_the_engine(daemon: Daemon, rootfs: Path) -> None:
    options = solve_options(rootfs, "echo hello from the step", "RUN hello")
    daemon.client().solve(options)
    ref = options.build_ref

    answers = {}
    for args in (
        ("workers", "--format", "json"),
        ("du", "--format", "json"),
        ("history", "ls", "--format", "json"),
        ("history", "inspect", ref, "--format", "json"),
        ("history", "logs", ref),
        ("history", "trace", ref, "--format", "json"),
        ("history", "replay", ref, "--format", "json"),
        ("history", "provenance", ref),
        ("history", "pin", ref),
        ("leaks", "--format", "json"),
        ("prune", "--keep-duration", "3600", "--format", "json"),
    ):
        out, modules = _run(daemon, *args)
        assert sorted(modules & set(SERVER_SIDE)) == [], args
        answers[args[:2]] = out

    # ...and they still say what they said before.
    assert json.loads(answers[("workers", "--format")])[0]["name"] == "runc-overlay"
    assert ref in {b["build_ref"] for b in json.loads(answers[("history", "ls")])}
    inspected = json.loads(answers[("history", "inspect")])
    assert inspected["status"] == "completed" and inspected["vertices_completed"] >= 1
    assert "hello from the step" in answers[("history", "logs")]
    assert json.loads(answers[("history", "trace")])[0]["kind"] == "solve"
    assert json.loads(answers[("history", "provenance")])["predicateType"].startswith("https://slsa.dev")
    assert json.loads(answers[("prune", "--keep-duration")])["removed"] == []
    assert json.loads(answers[("du", "--format")])["snapshots"]
    assert json.loads(answers[("leaks", "--format")]) == {
        "refs": [],
        "snapshots": [],
        "untracked": [],
        "missing": [],
        "mounts": [],
    }
