"""Open the state of a buildsvc root: database, event store, projections.

Used by the daemon and by the command line when it runs without a daemon (the embedded default:
SQLite in the root directory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from buildsvc.events import migrations
from buildsvc.events.database import Database, RetryPolicy, open_database
from buildsvc.events.sql_store import SqlEventStore
from buildsvc.projections import ProjectionRunner, attach_projections

__all__ = ["State", "default_db_url", "default_root", "open_state"]


def default_root() -> Path:
    """``$BUILDSVC_ROOT``, else /var/lib/buildsvc for root and ~/.local/share/buildsvc for others."""
    env = os.environ.get("BUILDSVC_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/buildsvc")
    return Path.home() / ".local" / "share" / "buildsvc"


def default_db_url(root: Path) -> str:
    """``$BUILDSVC_DB_URL``, else the embedded SQLite database in ``root``."""
    return os.environ.get("BUILDSVC_DB_URL") or f"sqlite:///{root / 'state.db'}"


@dataclass(frozen=True, slots=True)
class State:
    """An open state store."""

    root: Path
    db: Database
    store: SqlEventStore
    runner: ProjectionRunner

    def close(self) -> None:
        """Give up projection leases and release database connections."""
        try:
            self.runner.release_all()
        finally:
            self.db.dispose()


def open_state(
    root: Path | None = None,
    db_url: str | None = None,
    *,
    migrate: bool = True,
    retry: RetryPolicy | None = None,
) -> State:
    """Open (and by default migrate) the database of ``root`` and wire the projections."""
    root = root or default_root()
    db = open_database(db_url or default_db_url(root), retry=retry)
    if migrate:
        migrations.ensure_current(db)
    store = SqlEventStore(db)
    runner = attach_projections(store)
    return State(root=root, db=db, store=store, runner=runner)
