"""A command that talks to a daemon must not import the engine: that cost every ``buildsvc build``
about a second (issue 4's no-op rebuild benchmark). Checked in a fresh interpreter, by module name.

Beyond the engine, a plain or quiet build through a daemon (the no-op rebuild, whose whole cost is
the client process) loads no event catalog, no definition model, no rich and no output fetching.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from buildsvc.cli.main import _COMMANDS, cli, summary_of

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
    # The receiving side's store and the log's envelope (an error class of the event store's).
    "buildsvc.contexts.store",
    "buildsvc.events",
    "buildsvc.events.envelope",
    "tempfile",
    # Cache exports and imports, checked only when the build names one.
    "buildsvc.cache.options",
    "buildsvc.daemon.cache_specs",
    # The records of the other calls (workers, info, history, disk usage, prune).
    "buildsvc.api.records",
    "buildsvc.daemon.usage",
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


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_a_command_module_leaves_the_engine_to_its_embedded_path(name: str) -> None:
    # Each command imports the engine's modules where it runs without a daemon: through a daemon,
    # SQLAlchemy and the engine were 0.25-0.4 s of every `du`, `workers`, `prune`, `history ...`
    # (tests/integration/api/test_read_commands.py runs them against a daemon).
    loaded = _loaded_after(
        "from buildsvc.cli.main import cli\n"
        "import click\n"
        f"assert cli.get_command(click.Context(cli), {name!r}) is not None"
    )
    assert f"buildsvc.cli.{_COMMANDS[name][0]}" in loaded
    if name not in ("daemon", "db", "demo", "events"):  # they open the state itself: no daemon path
        assert sorted(loaded & set(SERVER_SIDE)) == []


@pytest.mark.parametrize("progress", ["quiet", "plain"])
def test_a_daemon_build_loads_only_what_its_options_use(progress: str) -> None:
    # What run_remote_build and send_local_dirs touch before the RPCs, for a build with no -o.
    loaded = _loaded_after(
        "import buildsvc.cli.main, buildsvc.cli.build_cmd as b, buildsvc.cli.progress as p\n"
        "import buildsvc.api.client, buildsvc.cli.local_contexts\n"
        f"p.make_printer({progress!r})\n"
        "assert b._outputs([]) == [] and b._for_daemon([]) == []\n"
        "assert b._cache_options((), (), (), {'target': 'x'}, []) == ([], [], None)\n"
        "import buildsvc.api.peercred as a; a.local_actor()"
    )
    assert sorted(loaded & set(BUILD_CLIENT_EXTRAS)) == []
    if progress == "quiet":  # asks for no Status stream: its updates are never made
        assert "buildsvc.api.progress_model" not in loaded
    top = {name.partition(".")[0] for name in loaded}
    assert "rich" not in top


def test_the_live_view_still_loads_rich() -> None:
    loaded = _loaded_after("import buildsvc.cli.progress as p, io\np.make_printer('tty', io.StringIO())")
    assert "rich.console" in loaded


def test_help_lists_every_command_without_importing_them() -> None:
    script = (
        "import json, sys\n"
        "sys.argv = ['buildsvc', '--help']\n"
        "from buildsvc.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    help_text, _, modules = done.stdout.rpartition("\n[")
    loaded = set(json.loads("[" + modules))
    assert sorted(m for m in loaded if m.startswith("buildsvc.cli.") and m.endswith("_cmd")) == []
    listed = help_text.partition("Commands:")[2].split()
    assert set(cli.list_commands(click.Context(cli))) <= set(listed)


@pytest.mark.parametrize("name", sorted(_COMMANDS))
@pytest.mark.parametrize("limit", [40, 80, 200])
def test_the_help_listing_says_what_each_command_says_of_itself(name: str, limit: int) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    assert summary_of(name).get_short_help_str(limit) == command.get_short_help_str(limit)


def test_main_leaves_what_it_made_to_the_process_end_not_to_the_collector() -> None:
    # The teardown of an unfrozen heap cost every command 30-150 ms (see buildsvc.cli.main.main).
    script = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
        "sys.argv = ['buildsvc', '--help']\n"
        "from buildsvc.cli.main import main\n"
        "main()"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    frozen = int(done.stdout.rpartition("frozen ")[2])
    assert frozen > 10_000


def test_a_build_that_names_a_cache_still_has_it_checked() -> None:
    from buildsvc.cli.build_cmd import _cache_options
    from buildsvc.errors import InvalidInput

    _, _, cache = _cache_options(("type=local,dest=/tmp/c",), (), (), {}, [])
    assert cache is not None and [e.type for e in cache.exports] == ["local"]
    _, _, from_option = _cache_options(
        (), (), (), {"cache-imports": '[{"type":"local","attrs":{"src":"/c"}}]'}, []
    )
    assert from_option is not None and [i.type for i in from_option.imports] == ["local"]
    with pytest.raises(InvalidInput):
        _cache_options(("type=inline",), (), (), {}, [{"type": "local", "dest": "/out"}])


# What the embedded engine never uses: the gRPC client and the generated protobuf modules.
CLIENT_ONLY = ("grpc", "google.protobuf", "buildsvc.api.client", "buildsvc.api.gen.control_pb2")


def test_an_embedded_build_leaves_the_grpc_client_unimported() -> None:
    # What `buildsvc --root R build` loads up to the engine: the command, the local contexts, the
    # choice of the embedded engine (--root given: no daemon is asked).
    loaded = _loaded_after(
        "import click\n"
        "from pathlib import Path\n"
        "import buildsvc.cli.main as m, buildsvc.cli.build_cmd, buildsvc.cli.local_contexts\n"
        "from buildsvc.cli.common import Options\n"
        "from buildsvc.cli.remote import ADDR_KEY, connect_from\n"
        "ctx = click.Context(m.cli, obj=Options(root=Path('/nonexistent'), db_url=None, db_timeout=1.0))\n"
        "ctx.meta[ADDR_KEY] = None\n"
        "assert connect_from(ctx) is None"
    )
    assert sorted(loaded & set(CLIENT_ONLY)) == []


def test_a_daemon_build_still_loads_the_client_when_it_connects() -> None:
    loaded = _loaded_after(
        "import click\n"
        "import buildsvc.cli.main as m\n"
        "from buildsvc.cli.remote import ADDR_KEY, connect_from\n"
        "from buildsvc.api.errors import DaemonUnavailable\n"
        "ctx = click.Context(m.cli)\n"
        "ctx.meta[ADDR_KEY] = 'unix:///nonexistent/buildsvc.sock'\n"
        "import buildsvc.cli.remote as r; r._CONNECT_SECONDS = 0.1\n"
        "try:\n    connect_from(ctx)\nexcept DaemonUnavailable:\n    pass\n"
        "else:\n    raise AssertionError('connected to nothing')"
    )
    assert {"grpc", "buildsvc.api.client"} <= loaded


def test_httpx_loads_without_its_command_line() -> None:
    # httpx._main pulls rich.syntax and pygments into every process that pulls an image.
    loaded = _loaded_after(
        "import buildsvc.cli.main\nimport httpx\nassert callable(httpx.main) and httpx.Client is not None\n"
        "sys.modules = {k: v for k, v in sys.modules.items() if v is not None}"
    )
    assert "httpx" in loaded
    assert sorted(m for m in loaded if m in ("httpx._main", "pygments", "rich.syntax")) == []


# As a command does: nothing has imported grpc before connect_from (not even the error's module).
CONNECT_TO_NOTHING = (
    "import click\n"
    "import buildsvc.cli.main as m\n"
    "from buildsvc.cli.remote import ADDR_KEY, connect_from\n"
    "ctx = click.Context(m.cli)\n"
    "ctx.meta[ADDR_KEY] = 'unix:///nonexistent/buildsvc.sock'\n"
    "import buildsvc.cli.remote as r; r._CONNECT_SECONDS = 0.1\n"
    "try:\n    connect_from(ctx)\n"
    "except Exception as e:\n    assert type(e).__name__ == 'DaemonUnavailable'\n"
)


def test_a_daemon_client_leaves_what_grpc_and_protobuf_never_use_unrun() -> None:
    # asyncio, grpc.aio and protobuf's pure-Python messages were ~45 ms of every client command.
    from buildsvc.cli.client_import import DEFERRED

    loaded = _loaded_after(CONNECT_TO_NOTHING)
    assert {"grpc", "buildsvc.api.client"} <= loaded
    assert loaded >= DEFERRED  # present, as lazy modules...
    # ...whose own imports never ran.
    assert sorted(loaded & {"asyncio.base_events", "grpc.aio._channel", "google.protobuf.text_format"}) == []


def test_the_deferred_modules_still_work_when_something_uses_them() -> None:
    loaded = _loaded_after(
        CONNECT_TO_NOTHING + "import asyncio, grpc, google.protobuf.internal.python_message as pm\n"
        "assert asyncio.run(asyncio.sleep(0, result=7)) == 7\n"
        "assert callable(grpc.aio.insecure_channel)\n"
        "assert pm.GeneratedProtocolMessageType is not None\n"
        "from buildsvc.api.gen import control_pb2 as pb\n"
        "m = pb.SolveRequest(ref='r'); assert pb.SolveRequest.FromString(m.SerializeToString()).ref == 'r'\n"
    )
    assert "asyncio.base_events" in loaded
