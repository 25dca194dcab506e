"""The alembic migrations build exactly the tables the code declares, on every backend, and go down."""

from __future__ import annotations

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
