"""Test-only revision that creates a table, then waits, inside its transaction, until the test lets it go.

It touches ``$AIIDA_SQLA_SLOW_MIGRATION_DIR/started`` once its DDL ran and waits for ``.../release`` there, so
a test kills (or races) the migrating process at a known point instead of after a guessed delay.

Revision ID: test_0004
Revises: test_0003
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "test_0004"
down_revision = "test_0003"
branch_labels = None
depends_on = None

#: A revision the test forgot to release gives up after this many seconds (no stuck child outlives the test).
WAIT_LIMIT_S = 120


def upgrade() -> None:
    op.create_table("test_slow", sa.Column("id", sa.Integer(), primary_key=True))
    folder = Path(os.environ["AIIDA_SQLA_SLOW_MIGRATION_DIR"])
    (folder / "started").touch()
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not (folder / "release").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("test_0004 was never released")
        time.sleep(0.05)


def downgrade() -> None:
    op.drop_table("test_slow")
