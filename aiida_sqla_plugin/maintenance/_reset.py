"""Empty a storage: every row except settings and the schema revision."""
from __future__ import annotations

from sqlalchemy.engine import Engine

from .. import session as session_module
from ..models import Base, DbPath, DbSetting

__all__ = ("KEPT_TABLES", "reset_storage")

#: Tables ``reset_storage`` keeps.
KEPT_TABLES = frozenset({DbSetting.__tablename__, "alembic_version"})


def reset_storage(engine: Engine) -> dict[str, int]:
    """Delete every row of every table except settings and the schema revision; returns rows deleted per table.

    Runs in one transaction. The closure table is emptied last, after the links (its triggers may update it).
    """
    tables = [table for table in reversed(Base.metadata.sorted_tables) if table.name not in KEPT_TABLES]
    tables.sort(key=lambda table: table.name == DbPath.__tablename__)  # stable: closure last
    deleted: dict[str, int] = {}
    options = session_module.sqlite_write_options(engine.dialect.name)
    with engine.connect().execution_options(**options) as connection, connection.begin():
        for table in tables:
            deleted[table.name] = int(connection.execute(table.delete()).rowcount or 0)
    return deleted
