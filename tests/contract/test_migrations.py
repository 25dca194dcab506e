"""The alembic migrations build exactly the tables the code declares, on every backend, and go down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from buildsvc.events import migrations
from buildsvc.events.database import Database
from buildsvc.events.schema import metadata as events_metadata
from buildsvc.projections.schema import metadata as projections_metadata


def _differences(db: Database) -> list[object]:
    declared = sa.MetaData()
    for table in [*events_metadata.tables.values(), *projections_metadata.tables.values()]:
        table.to_metadata(declared)
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        return list(compare_metadata(context, declared))


def test_migrated_schema_matches_the_declared_tables(db: Database) -> None:
    assert migrations.current_revision(db) == migrations.head_revision()
    assert _differences(db) == []


def test_downgrade_to_base_and_back(db: Database) -> None:
    migrations.downgrade(db, "base")
    assert migrations.current_revision(db) is None
    migrations.upgrade(db)
    assert migrations.current_revision(db) == migrations.head_revision()
    assert _differences(db) == []


def test_the_head_the_code_names_is_alembics_head() -> None:
    # A new migration must bump HEAD, or every open would run alembic to find nothing to do.
    assert migrations.head_revision() == migrations.HEAD


def test_opening_a_current_database_does_not_import_alembic(db: Database) -> None:
    url = db.engine.url.render_as_string(hide_password=False)
    script = (
        "import sys\n"
        "from buildsvc.events import migrations\n"
        "from tests.support.databases import open_test_database\n"
        "db = open_test_database(sys.argv[1])\n"
        "migrations.ensure_current(db)\n"
        "assert 'alembic' not in sys.modules, 'alembic was imported'\n"
        "migrations.downgrade(db, '0002')\n"
        "migrations.ensure_current(db)\n"  # behind: alembic upgrades it
        "assert migrations.current_revision(db) == migrations.HEAD\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, url],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
