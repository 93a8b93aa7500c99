"""Reports computed in the database: creation statistics."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Date, cast, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from .models import DbNode
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
        # SQLite stores times as UTC text ('YYYY-MM-DD HH:MM:SS...'), so the first ten characters are the day.
        if dialect_name == "sqlite":
            return func.substr(DbNode.ctime, 1, 10)
        # PostgreSQL: the UTC date (str() of a date is 'YYYY-MM-DD'); casting is far cheaper per row than to_char.
        return cast(func.timezone(literal_column("'UTC'"), DbNode.ctime), Date)

    @idempotent_read
    def get_creation_statistics(self, user_pk: int | None = None) -> dict[str, Any]:
        """Count nodes: ``{"total": n, "types": {node_type: n}, "ctime_by_day": {"YYYY-MM-DD": n},
        "ctime_by_day_and_type": {"YYYY-MM-DD": {node_type: n}}}``.

        Days are UTC days on every dialect; days without nodes are absent. ``user_pk`` restricts to that user.
        One aggregate query (grouped by day and type), whatever the number of nodes.
        """
        engine = self._backend.engine
        condition = [DbNode.user_id == user_pk] if user_pk is not None else []
        day = self._utc_day(engine.dialect.name).label("day")
        statement = (
            select(day, DbNode.node_type, func.count())
            .where(*condition)
            .group_by(day, DbNode.node_type)
            .order_by(day, DbNode.node_type)
        )
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
