"""A command that talks to a daemon must not import the engine: that cost every ``buildsvc build``
about a second (issue 4's no-op rebuild benchmark). Checked in a fresh interpreter, by module name.

Beyond the engine, a plain or quiet build through a daemon (the no-op rebuild, whose whole cost is
the client process) loads no event catalog, no definition model, no rich and no output fetching.
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


# What a build through a daemon loads only when it uses it (--progress tty, -o, --llb, --ref).
BUILD_CLIENT_EXTRAS = (
    "rich",
    "buildsvc.events.catalog",
    "buildsvc.api.updates",
    "buildsvc.api.output_client",
    "buildsvc.daemon.outputs",
    "buildsvc.contexts.receive",
    "buildsvc.solver.definition",
    "buildsvc.cli.attach",
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


@pytest.mark.parametrize("progress", ["quiet", "plain"])
def test_a_daemon_build_loads_only_what_its_options_use(progress: str) -> None:
    # What run_remote_build and send_local_dirs touch before the RPCs, for a build with no -o.
    loaded = _loaded_after(
        "import buildsvc.cli.main, buildsvc.cli.build_cmd as b, buildsvc.cli.progress as p\n"
        f"p.make_printer({progress!r})\n"
        "assert b._outputs([]) == [] and b._for_daemon([]) == []\n"
        "import buildsvc.api.peercred as a; a.local_actor()"
    )
    assert sorted(loaded & set(BUILD_CLIENT_EXTRAS)) == []
    top = {name.partition(".")[0] for name in loaded}
    assert "rich" not in top


def test_the_live_view_still_loads_rich() -> None:
    loaded = _loaded_after("import buildsvc.cli.progress as p, io\np.make_printer('tty', io.StringIO())")
    assert "rich.console" in loaded
