"""``buildsvc db upgrade|downgrade|current``: the schema, by alembic migrations."""

from __future__ import annotations

import click

from buildsvc.cli.common import open_db_from
from buildsvc.events import migrations

__all__ = ["COMMANDS"]


@click.group("db")
def db_group() -> None:
    """Manage the database schema."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Migrate the schema up to REVISION (default: head)."""
    db = open_db_from(ctx)
    migrations.upgrade(db, revision)
    click.echo(f"database at {migrations.current_revision(db)}")


@db_group.command("downgrade")
@click.argument("revision")
@click.pass_context
def downgrade(ctx: click.Context, revision: str) -> None:
    """Migrate the schema down to REVISION (``base`` removes every table)."""
    db = open_db_from(ctx)
    migrations.downgrade(db, revision)
    click.echo(f"database at {migrations.current_revision(db) or 'base'}")


@db_group.command("current")
@click.pass_context
def current(ctx: click.Context) -> None:
    """Print the schema revision of the database and the newest one this buildsvc ships."""
    db = open_db_from(ctx)
    click.echo(f"current: {migrations.current_revision(db) or 'base'}")
    click.echo(f"head:    {migrations.head_revision()}")


COMMANDS = [db_group]
