"""Reports computed in the database: creation statistics."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Date, Select, String, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from .models import UTC_CREATION_DAY, DbNode
from .session import idempotent_read, transaction

if TYPE_CHECKING:
    from .backend import SqlaBackend

__all__ = ("SqlaQueryManager",)


class SqlaQueryManager:
    """Aggregate queries over a backend's nodes."""

    def __init__(self, backend: SqlaBackend) -> None:
        self._backend = backend

    @staticmethod
    def _utc_day(dialect_name: str) -> ColumnElement[Any]:
        # The exact text the schema indexes (SQLite) or keeps statistics on (PostgreSQL); SQLite would not use its
        # index for func.substr(ctime, 1, 10), which binds 1 and 10 as parameters.
        return literal_column(UTC_CREATION_DAY[dialect_name], type_=String() if dialect_name == "sqlite" else Date())

    @classmethod
    def statistics_statement(cls, dialect_name: str, user_pk: int | None = None) -> Select[tuple[Any, str, int]]:
        """The one aggregate query: (UTC day, node type, count) rows in that order."""
        # On SQLite the unary + keeps the planner off ix_db_dbnode_user_id: without ANALYZE statistics it would
        # take that index and sort every row of a large user (5x slower at 1M nodes) instead of reading the
        # creation-day index, which holds user_id and is bounded by one pass over the nodes whatever the user.
        user = literal_column("+user_id") if dialect_name == "sqlite" else DbNode.user_id
        condition = [user == user_pk] if user_pk is not None else []
        day = cls._utc_day(dialect_name).label("day")
        return (
            select(day, DbNode.node_type, func.count())
            .where(*condition)
            .group_by(day, DbNode.node_type)
            .order_by(day, DbNode.node_type)
        )

    @idempotent_read
    def get_creation_statistics(self, user_pk: int | None = None) -> dict[str, Any]:
        """Count nodes: ``{"total": n, "types": {node_type: n}, "ctime_by_day": {"YYYY-MM-DD": n},
        "ctime_by_day_and_type": {"YYYY-MM-DD": {node_type: n}}}``.

        Days are UTC days on every dialect; days without nodes are absent. ``user_pk`` restricts to that user.
        One aggregate query (grouped by day and type), whatever the number of nodes; see ``CREATION_DAY_DDL`` for
        the index (SQLite) and statistics (PostgreSQL) that keep it fast.
        """
        statement = self.statistics_statement(self._backend.engine.dialect.name, user_pk)
        types: dict[str, int] = {}
        by_day: dict[str, int] = {}
        by_day_and_type: dict[str, dict[str, int]] = {}
        with transaction(self._backend.get_session()) as session:  # the caller's transaction, if one is open
            for day_value, node_type, count in session.execute(statement):
                key = str(day_value)
                types[node_type] = types.get(node_type, 0) + count
                by_day[key] = by_day.get(key, 0) + count
                by_day_and_type.setdefault(key, {})[node_type] = count
        return {"total": sum(types.values()), "types": types, "ctime_by_day": by_day,
                "ctime_by_day_and_type": by_day_and_type}
