"""Alembic environment: runs on the connection buildsvc hands in (see buildsvc.events.migrations)."""

from __future__ import annotations

from alembic import context

from buildsvc.events.schema import metadata as events_metadata
from buildsvc.projections.schema import metadata as projections_metadata

target_metadata = [events_metadata, projections_metadata]

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `buildsvc db upgrade`, which passes the connection in")

context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
