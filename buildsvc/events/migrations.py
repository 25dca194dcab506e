"""Schema migrations (alembic) run on a :class:`Database`: ``buildsvc db upgrade|downgrade|current``.

Two processes may start on a fresh database at once (two daemons, a daemon and a CLI); the
migration runs under a lock (a PostgreSQL advisory lock, SQLite's write lock) so one migrates and
the other then finds the schema current.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from buildsvc.events.database import Database

if TYPE_CHECKING:  # alembic (with mako) costs ~0.13 s to import: only when a migration runs
    from alembic.config import Config

__all__ = ["HEAD", "current_revision", "downgrade", "head_revision", "migrations_dir", "upgrade"]

HEAD = "0003"
"""The newest revision under ``migrations/versions`` (a test checks it against alembic's own head):
opening a database at it needs no alembic."""

_MIGRATION_LOCK_KEY = 0x6275696C646D6967  # "buildmig"


def migrations_dir() -> Path:
    """Where the alembic scripts are: inside the installed package, or the source checkout's top level."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("buildsvc's migrations directory is missing from this installation")


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str:
    """The newest revision this version of buildsvc ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    """The revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    def once() -> str | None:
        with db.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    return db.run(once, what="read the schema revision")


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision``."""
    from alembic import command

    _run(db, lambda cfg: command.upgrade(cfg, revision))


def downgrade(db: Database, revision: str) -> None:
    """Take the schema down to ``revision`` (``base`` drops everything)."""
    from alembic import command

    _run(db, lambda cfg: command.downgrade(cfg, revision))


def ensure_current(db: Database) -> None:
    """Upgrade to head unless the database is already there (the cheap check first: one query of
    alembic's version table, without importing alembic).
    """
    if _recorded_revision(db) != HEAD:
        upgrade(db)


def _recorded_revision(db: Database) -> str | None:
    """What ``alembic_version`` says, read with plain SQL (None when the table is not there yet)."""

    def once() -> str | None:
        with db.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
        return rows[0] if len(rows) == 1 else None  # several heads: let alembic sort it out

    return db.run(once, what="read the schema revision")


def _run(db: Database, action: object) -> None:
    def once() -> None:
        with db.engine.connect().execution_options(buildsvc_write=True) as conn, conn.begin():
            if db.is_postgres:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg = _config()
            cfg.attributes["connection"] = conn
            action(cfg)  # type: ignore[operator]

    db.run(once, what="migrate the schema")
