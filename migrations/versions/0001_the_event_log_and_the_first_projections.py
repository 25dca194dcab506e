"""The event log and the first projections: build history, refs and snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 09:56:39.218669
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "events",
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("stream_version", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("schema_version", sa.SmallInteger(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("position"),
        sa.UniqueConstraint("event_id"),
        sa.UniqueConstraint("stream_id", "stream_version", name="uq_events_stream_version"),
    )
    op.create_table(
        "build_vertices",
        sa.Column("build_ref", sa.String(length=100), nullable=False),
        sa.Column("vertex", sa.String(length=100), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("worker", sa.String(length=100), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("build_ref", "vertex"),
    )
    op.create_table(
        "builds",
        sa.Column("build_ref", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("frontend", sa.String(length=100), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("vertices_total", sa.Integer(), nullable=False),
        sa.Column("vertices_completed", sa.Integer(), nullable=False),
        sa.Column("vertices_cached", sa.Integer(), nullable=False),
        sa.Column("vertices_failed", sa.Integer(), nullable=False),
        sa.Column("vertices_interrupted", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("error_vertex", sa.String(length=100), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("first_position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("last_position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("build_ref"),
    )
    op.create_table(
        "ended_scopes",
        sa.Column("scope", sa.String(length=300), nullable=False),
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("scope"),
    )
    op.create_table(
        "projection_checkpoints",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "refs",
        sa.Column("ref_id", sa.String(length=100), nullable=False),
        sa.Column("snapshot_id", sa.String(length=100), nullable=False),
        sa.Column("holder_kind", sa.String(length=20), nullable=False),
        sa.Column("holder_id", sa.String(length=255), nullable=False),
        sa.Column("build_ref", sa.String(length=100), nullable=False),
        sa.Column("scope", sa.String(length=300), nullable=False),
        sa.Column("acquired_position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("released_position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=False),
        sa.Column(
            "holder_ended_position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.PrimaryKeyConstraint("ref_id"),
    )
    with op.batch_alter_table("refs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refs_scope"), ["scope"], unique=False)
        batch_op.create_index(batch_op.f("ix_refs_snapshot_id"), ["snapshot_id"], unique=False)

    op.create_table(
        "snapshots",
        sa.Column("snapshot_id", sa.String(length=100), nullable=False),
        sa.Column("worker", sa.String(length=100), nullable=False),
        sa.Column("snapshotter", sa.String(length=50), nullable=False),
        sa.Column("parent", sa.String(length=100), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("active_refs", sa.Integer(), nullable=False),
        sa.Column("created_position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("removed_position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("snapshot_id"),
    )


def downgrade() -> None:

    op.drop_table("snapshots")
    with op.batch_alter_table("refs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refs_snapshot_id"))
        batch_op.drop_index(batch_op.f("ix_refs_scope"))

    op.drop_table("refs")
    op.drop_table("projection_checkpoints")
    op.drop_table("ended_scopes")
    op.drop_table("builds")
    op.drop_table("build_vertices")
    op.drop_table("events")
