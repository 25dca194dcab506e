"""The ``buildsvc`` command (modeled on buildctl). Exit status: 0 ok, 1 failed, 2 bad usage or input."""

from __future__ import annotations

import gc
import importlib
import sys
from pathlib import Path

import click

from buildsvc.cli import startup
from buildsvc.cli.common import Options
from buildsvc.cli.remote import ADDR_KEY, TLS_KEY, TlsOptions
from buildsvc.errors import BuildsvcError, InvalidInput

__all__ = ["cli", "main"]

# httpx (the registry client, HTTP sources) imports its own command line when it is imported, if it
# can (httpx._main: rich.syntax, pygments...): 70-100 ms of every command that pulls an image or runs
# the engine, for a program buildsvc never runs. A None entry makes that import fail, which httpx
# allows for (its ``main`` then only says that its CLI's dependencies are missing).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


# Command name -> the module (under buildsvc.cli) whose COMMANDS holds it, and the first sentence of
# its help (``buildsvc --help`` lists them without importing every command; a test holds these to
# the commands' own help). Modules are imported when their command runs: importing them all (the
# engine, SQLAlchemy, alembic...) cost a client command about a second, which a no-op ``build``
# through the daemon paid every time.
_COMMANDS = {
    "build": (
        "build_cmd",
        "Build a definition (--llb) or a Dockerfile (CONTEXT, or --frontend dockerfile.v0 with "
        "--local context=DIR --local dockerfile=DIR) on a daemon or with the embedded engine.",
    ),
    "daemon": ("daemon_cmd", "Run the build daemon until SIGTERM."),
    "db": ("db_cmd", "Manage the database schema."),
    "events": ("events_cmd", "Read and check the event log."),
    "projections": ("projections_cmd", "Rebuild, check and run the projections (read models) of the log."),
    "history": ("history_cmd", "Builds as the log recorded them."),
    "leaks": ("history_cmd", "Report what was left behind: from the log, checked against the root's disk."),
    "demo": ("demo_cmd", "Run a real build and its cached rebuild, then read them back from the log."),
    "workers": ("workers_cmd", "List the workers (executor + snapshotter) builds run on."),
    "du": ("du_cmd", "Show the disk usage of the build cache (every snapshot not removed)."),
    "prune": ("prune_cmd", "Remove cached results that no build uses (children before their parents)."),
}


def summary_of(name: str) -> click.Command:
    """A stand-in for command ``name`` that holds only its summary (for the listing in --help)."""
    return click.Command(name, help=_COMMANDS[name][1])


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(f"buildsvc.cli.{entry[0]}")
        commands: list[click.Command] = module.COMMANDS
        return next((c for c in commands if c.name == cmd_name), None)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own listing imports each command for its help: that is every module above.
        limit = formatter.width - 6 - max(len(name) for name in _COMMANDS)
        rows = [(name, summary_of(name).get_short_help_str(limit)) for name in sorted(_COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="BUILDSVC_ROOT",
    help="State directory [env BUILDSVC_ROOT; default /var/lib/buildsvc as root].",
)
@click.option(
    "--db",
    "db_url",
    envvar="BUILDSVC_DB_URL",
    help="SQLAlchemy database URL [env BUILDSVC_DB_URL; default sqlite:///ROOT/state.db].",
)
@click.option(
    "--db-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to keep retrying an unreachable database before failing.",
)
@click.option(
    "--addr",
    envvar="BUILDSVC_ADDR",
    help="The daemon: unix:///PATH or tcp://HOST:PORT [env BUILDSVC_ADDR; default: the default "
    "socket if a daemon answers there, else the engine runs in this process].",
)
@click.option(
    "--tlscacert",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="BUILDSVC_TLS_CACERT",
    help="CA that signed the daemon's certificate (tcp:// daemons) [env BUILDSVC_TLS_CACERT].",
)
@click.option(
    "--tlscert",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="BUILDSVC_TLS_CERT",
    help="Client certificate [env BUILDSVC_TLS_CERT].",
)
@click.option(
    "--tlskey",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="BUILDSVC_TLS_KEY",
    help="Client key [env BUILDSVC_TLS_KEY].",
)
@click.option(
    "--tlsservername",
    envvar="BUILDSVC_TLS_SERVER_NAME",
    help="Server name the daemon's certificate must carry, when not the --addr host "
    "[env BUILDSVC_TLS_SERVER_NAME].",
)
@click.pass_context
def cli(
    ctx: click.Context,
    root: Path | None,
    db_url: str | None,
    db_timeout: float,
    addr: str | None,
    tlscacert: Path | None,
    tlscert: Path | None,
    tlskey: Path | None,
    tlsservername: str | None,
) -> None:
    """buildsvc: builds whose whole history is an event log."""
    ctx.obj = Options(root=root, db_url=db_url, db_timeout=db_timeout)
    ctx.meta[ADDR_KEY] = addr
    # Checked when a command connects: a partial set must not break commands that never do.
    ctx.meta[TLS_KEY] = TlsOptions(tlscacert, tlscert, tlskey, tlsservername)


def main() -> None:
    """Entry point: run the CLI, turning buildsvc errors into a message and an exit status."""
    # The command's imports (the engine's, grpc's) are most of its start: see buildsvc.cli.startup.
    startup.begin()
    try:
        _run()
    finally:
        # Everything still alive lives until the process ends: out of the collector's sight, the
        # interpreter's teardown no longer walks it (30 ms of every client command, 150 ms of an
        # embedded build). Nothing is left unflushed: the command closed what it opened.
        gc.freeze()


def _run() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if isinstance(e, click.UsageError) else e.exit_code)
    except InvalidInput as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except BuildsvcError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
