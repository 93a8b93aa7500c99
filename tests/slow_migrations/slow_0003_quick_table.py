"""Test-only revision: one quick table, so that a later revision has a completed one before it.

Revision ID: test_0003
Revises: main_0004
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "test_0003"
down_revision = "main_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("test_quick", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("test_quick")
