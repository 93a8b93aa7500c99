"""Creation-day index (SQLite) and statistics (PostgreSQL), so that the creation statistics stay fast.

SQLite: an index on (UTC day, node type, user); PostgreSQL: ndistinct statistics on (UTC day, node type). Both are
keyed on exactly the expression the statistics group by (``models.UTC_CREATION_DAY``).

Revision ID: main_0003
Revises: main_0002
Create Date: 2026-12-03
"""
from __future__ import annotations

from alembic import op

from aiida_sqla_plugin.models import CREATION_DAY_DDL

revision = "main_0003"
down_revision = "main_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    op.execute(CREATION_DAY_DDL[dialect][0])
    if dialect == "postgresql":  # fill the new statistics now rather than at the next autovacuum
        op.execute("ANALYZE db_dbnode")


def downgrade() -> None:
    op.execute(CREATION_DAY_DDL[op.get_context().dialect.name][1])
