"""The ancestor/descendant closure table ``db_dbpath``: one row per pair, with its number of paths.

Revision ID: main_0002
Revises: main_0001
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "main_0002"
down_revision = "main_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "db_dbpath",
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.Column("child_id", sa.Integer(), nullable=False),
        sa.Column("path_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("parent_id", "child_id"),
    )
    op.create_index(op.f("ix_db_dbpath_child_id_parent_id"), "db_dbpath", ["child_id", "parent_id"])


def downgrade() -> None:
    op.drop_table("db_dbpath")
