"""What every command shares: global options, opening the state, printing tables and JSON."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from buildsvc.daemon.state import State
    from buildsvc.events.database import Database

    console: Console

__all__ = [
    "FORMAT_OPTION",
    "Options",
    "console",
    "echo_json",
    "open_db_from",
    "open_from",
    "print_table",
    "root_from",
]


@functools.cache
def _console() -> Console:
    from rich.console import Console

    # Piped output is read by people in logs and by grep: do not squeeze tables into 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def __getattr__(name: str) -> Any:
    # ``console`` (rich) is made when a command prints with it: every command imports this module,
    # and a build through a daemon (the no-op rebuild) prints no table.
    if name == "console":
        return _console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


@dataclass(frozen=True, slots=True)
class Options:
    """The global options of the command line."""

    root: Path | None
    db_url: str | None
    db_timeout: float


def open_from(ctx: click.Context, *, migrate: bool = True) -> State:
    """Open the state store the global options name."""
    # Imported here: SQLAlchemy and alembic cost a command that talks to a daemon about 0.3 s.
    from buildsvc.daemon.state import open_state
    from buildsvc.events.database import RetryPolicy

    opts: Options = ctx.find_object(Options)  # type: ignore[assignment]
    state = open_state(opts.root, opts.db_url, migrate=migrate, retry=RetryPolicy(max_delay=opts.db_timeout))
    ctx.call_on_close(state.close)
    return state


def root_from(ctx: click.Context) -> Path:
    """The state root the global options name (the one :func:`open_from` opens)."""
    from buildsvc.daemon.state import default_root

    opts: Options = ctx.find_object(Options)  # type: ignore[assignment]
    return opts.root or default_root()


def open_db_from(ctx: click.Context) -> Database:
    """Open only the database (for schema commands, which must work on an empty one)."""
    from buildsvc.daemon.state import default_db_url, default_root
    from buildsvc.events.database import RetryPolicy, open_database

    opts: Options = ctx.find_object(Options)  # type: ignore[assignment]
    db = open_database(
        opts.db_url or default_db_url(opts.root or default_root()),
        retry=RetryPolicy(max_delay=opts.db_timeout),
    )
    ctx.call_on_close(db.dispose)
    return db


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        from buildsvc.events.envelope import format_time

        return format_time(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def echo_json(value: Any) -> None:
    """Print ``value`` as one JSON document."""
    click.echo(json.dumps(value, default=_plain, indent=2, sort_keys=False))


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as a table for people."""
    from rich.table import Table

    table = Table(title=title, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(_plain(v)) for v in row))
    _console().print(table)
