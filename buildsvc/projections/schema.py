"""Tables of the projections (read models) and of their runner, as SQLAlchemy Core objects.

Every table here except ``projection_checkpoints`` is a pure function of the event log: dropping it
and replaying the log gives the same rows (``buildsvc projections digest`` proves it).
"""

from __future__ import annotations

import sqlalchemy as sa

from buildsvc.events.schema import UtcDateTime

__all__ = [
    "build_vertices",
    "cache_records",
    "builds",
    "ended_scopes",
    "metadata",
    "projection_checkpoints",
    "refs",
    "snapshots",
]

metadata = sa.MetaData()

_position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

projection_checkpoints = sa.Table(
    "projection_checkpoints",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("position", _position, nullable=False),
    # "live" follows the log; "rebuilding" means a rebuild dropped the rows and is catching up
    # (a killed rebuild resumes from ``position`` instead of starting over).
    sa.Column("status", sa.String(20), nullable=False),
    # One runner applies a projection at a time, across processes: it holds a lease it renews.
    sa.Column("owner", sa.String(100), nullable=True),
    sa.Column("lease_until", UtcDateTime(), nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=True),
)

# --- the build history ----------------------------------------------------------------------------

builds = sa.Table(
    "builds",
    metadata,
    sa.Column("build_ref", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("frontend", sa.String(100), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("trace_id", sa.String(64), nullable=False),
    sa.Column("requested_at", UtcDateTime(), nullable=True),
    sa.Column("started_at", UtcDateTime(), nullable=True),
    sa.Column("ended_at", UtcDateTime(), nullable=True),
    sa.Column("vertices_total", sa.Integer(), nullable=False),
    sa.Column("vertices_completed", sa.Integer(), nullable=False),
    sa.Column("vertices_cached", sa.Integer(), nullable=False),
    sa.Column("vertices_failed", sa.Integer(), nullable=False),
    sa.Column("vertices_interrupted", sa.Integer(), nullable=False),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("error_vertex", sa.String(100), nullable=False),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("first_position", _position, nullable=False),
    sa.Column("last_position", _position, nullable=False),
    # Set by BuildHistoryPinned; a deleted entry (BuildHistoryDeleted) stays as a row the reads skip,
    # so events of the build that come after cannot bring it back.
    sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("deleted", sa.Boolean(), nullable=False, server_default=sa.false()),
)

build_vertices = sa.Table(
    "build_vertices",
    metadata,
    sa.Column("build_ref", sa.String(100), primary_key=True),
    sa.Column("vertex", sa.String(100), primary_key=True),
    sa.Column("name", sa.Text(), nullable=False),
    # running, completed, cached, failed, interrupted
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("worker", sa.String(100), nullable=False),
    sa.Column("runs", sa.Integer(), nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=True),
    sa.Column("ended_at", UtcDateTime(), nullable=True),
    sa.Column("duration_ms", sa.Integer(), nullable=True),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("error", sa.Text(), nullable=False),
)

# --- refs and snapshots, from which leaks are found -----------------------------------------------

refs = sa.Table(
    "refs",
    metadata,
    sa.Column("ref_id", sa.String(100), primary_key=True),
    sa.Column("snapshot_id", sa.String(100), nullable=False, index=True),
    sa.Column("holder_kind", sa.String(20), nullable=False),
    sa.Column("holder_id", sa.String(255), nullable=False),
    sa.Column("build_ref", sa.String(100), nullable=False),
    # What ends the holder: "build:<ref>", "cache:<key>" or "daemon:<id>".
    sa.Column("scope", sa.String(300), nullable=False, index=True),
    sa.Column("acquired_position", _position, nullable=False),
    sa.Column("released_position", _position, nullable=True),
    sa.Column("release_reason", sa.Text(), nullable=False),
    sa.Column("holder_ended_position", _position, nullable=True),
)

ended_scopes = sa.Table(
    "ended_scopes",
    metadata,
    sa.Column("scope", sa.String(300), primary_key=True),
    sa.Column("position", _position, nullable=False),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("snapshot_id", sa.String(100), primary_key=True),
    sa.Column("worker", sa.String(100), nullable=False),
    sa.Column("snapshotter", sa.String(50), nullable=False),
    sa.Column("parent", sa.String(100), nullable=True),
    sa.Column("kind", sa.String(20), nullable=False),
    # created, committed, removed
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("size_bytes", sa.BigInteger(), nullable=False),
    sa.Column("active_refs", sa.Integer(), nullable=False),
    sa.Column("created_position", _position, nullable=False),
    sa.Column("removed_position", _position, nullable=True),
)

# --- the cache index ------------------------------------------------------------------------------

cache_records = sa.Table(
    "cache_records",
    metadata,
    sa.Column("cache_key", sa.String(100), primary_key=True),
    sa.Column("output", sa.Integer(), primary_key=True),
    sa.Column("worker", sa.String(100), primary_key=True),
    sa.Column("vertex", sa.String(100), nullable=False),
    sa.Column("snapshot_id", sa.String(100), nullable=False),
    sa.Column("build_ref", sa.String(100), nullable=False),
    # "local" for a result built here, "import:<type>" for one taken from a cache import.
    sa.Column("source", sa.String(100), nullable=False),
    sa.Column("size_bytes", sa.BigInteger(), nullable=False),
    sa.Column("created_position", _position, nullable=False),
)
