"""A command that talks to a daemon must not import the engine: that cost every ``buildsvc build``
about a second (issue 4's no-op rebuild benchmark). Checked in a fresh interpreter, by module name.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVER_SIDE = (
    "sqlalchemy",
    "alembic",
    "buildsvc.daemon.engine",
    "buildsvc.daemon.state",
    "buildsvc.solver.engine",
    "buildsvc.executors",
    "buildsvc.api.server",
    "buildsvc.api.gateway_client",
)


def _loaded_after(statement: str) -> set[str]:
    script = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    "statement",
    [
        "import buildsvc.cli.main",
        "import buildsvc.cli.build_cmd",
        "import buildsvc.api.client",
    ],
)
def test_the_client_path_leaves_the_server_side_unimported(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert sorted(loaded & set(SERVER_SIDE)) == []


def test_the_command_modules_still_load_when_their_command_is_asked_for() -> None:
    loaded = _loaded_after(
        "from buildsvc.cli.main import cli\n"
        "import click\n"
        "assert cli.get_command(click.Context(cli), 'prune') is not None"
    )
    assert "buildsvc.cli.prune_cmd" in loaded
    assert "buildsvc.daemon.engine" in loaded
