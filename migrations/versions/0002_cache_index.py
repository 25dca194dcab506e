"""The cache index: which snapshot holds the result of a cache key on a worker.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:13:22.574820
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "cache_records",
        sa.Column("cache_key", sa.String(length=100), nullable=False),
        sa.Column("output", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=100), nullable=False),
        sa.Column("vertex", sa.String(length=100), nullable=False),
        sa.Column("snapshot_id", sa.String(length=100), nullable=False),
        sa.Column("build_ref", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("cache_key", "output", "worker"),
    )


def downgrade() -> None:

    op.drop_table("cache_records")
