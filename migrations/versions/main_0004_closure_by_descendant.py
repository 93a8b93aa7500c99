"""The closure table ``db_dbpath`` keyed by (descendant, ancestor) and stored in that order.

New pairs arrive with new descendants and a deletion removes the pairs of the deleted (mostly newest)
descendants; keyed and stored by descendant, both touch one end of the table instead of pages all over it. The
(ancestor, descendant) index takes the place of the old (descendant, ancestor) one, for descendant queries.

SQLite: the table is rebuilt ``WITHOUT ROWID`` (clustered on its key: one b-tree fewer than a rowid table with a
key index), its rows copied in key order. The triggers that read or write it (the installed closure's) are kept
as they were: SQLite re-checks them when the table is renamed, so they are dropped for the swap and recreated
from their own stored text. PostgreSQL: the key and the index are swapped and the table is rewritten in key
order (``CLUSTER``). The downgrade restores main_0003's layout (rows and triggers kept).

Revision ID: main_0004
Revises: main_0003
Create Date: 2026-12-04
"""
from __future__ import annotations

from alembic import op

revision = "main_0004"
down_revision = "main_0003"
branch_labels = None
depends_on = None

_COLUMNS = "parent_id INTEGER NOT NULL, child_id INTEGER NOT NULL, path_count BIGINT NOT NULL"
#: (key columns, index columns, SQLite table option) of each layout
_BY_DESCENDANT = (("child_id", "parent_id"), ("parent_id", "child_id"), " WITHOUT ROWID")
_BY_ANCESTOR = (("parent_id", "child_id"), ("child_id", "parent_id"), "")


def _index_name(columns: tuple[str, str]) -> str:
    return f"ix_db_dbpath_{columns[0]}_{columns[1]}"


def _relayout(old: tuple[tuple[str, str], tuple[str, str], str], new: tuple[tuple[str, str], tuple[str, str], str]) -> None:
    key, index, option = new
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE db_dbpath DROP CONSTRAINT db_dbpath_pkey")
        op.execute(f"DROP INDEX {_index_name(old[1])}")
        op.execute(f"ALTER TABLE db_dbpath ADD CONSTRAINT db_dbpath_pkey PRIMARY KEY ({', '.join(key)})")
        op.execute("CLUSTER db_dbpath USING db_dbpath_pkey")
        op.execute(f"CREATE INDEX {_index_name(index)} ON db_dbpath ({', '.join(index)})")
        op.execute("ANALYZE db_dbpath")
        return
    connection = op.get_bind()
    triggers = connection.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%db_dbpath%' ORDER BY name"
    ).all()
    for name, _ in triggers:
        op.execute(f'DROP TRIGGER "{name}"')
    op.execute(f"CREATE TABLE db_dbpath_new ({_COLUMNS}, CONSTRAINT db_dbpath_pkey PRIMARY KEY ({', '.join(key)})){option}")
    op.execute(
        f"INSERT INTO db_dbpath_new (parent_id, child_id, path_count) "
        f"SELECT parent_id, child_id, path_count FROM db_dbpath ORDER BY {', '.join(key)}"
    )
    op.execute("DROP TABLE db_dbpath")
    op.execute("ALTER TABLE db_dbpath_new RENAME TO db_dbpath")
    op.execute(f"CREATE INDEX {_index_name(index)} ON db_dbpath ({', '.join(index)})")
    for _, sql in triggers:
        connection.exec_driver_sql(sql)  # verbatim: no bind-parameter parsing of the trigger's text


def upgrade() -> None:
    _relayout(_BY_ANCESTOR, _BY_DESCENDANT)


def downgrade() -> None:
    _relayout(_BY_DESCENDANT, _BY_ANCESTOR)
