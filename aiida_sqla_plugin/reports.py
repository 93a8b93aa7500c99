"""Reports over a storage: entity counts, database size, missing nodes and the ``storage info`` report.

:class:`~aiida_sqla_plugin.queries.SqlaQueryManager` (the AiiDA 1.x face) gives the creation statistics.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from .backend import SqlaBackend
from .models import Base, DbComment, DbComputer, DbGroup, DbLink, DbLog, DbNode, DbUser
from .profile import sqlite_path
from .queries import SqlaQueryManager
from .sql import id_select

__all__ = ("COUNTED_ENTITIES", "count_entities", "database_size", "missing_nodes", "storage_info")

#: What ``storage info`` counts: name shown -> model.
COUNTED_ENTITIES: dict[str, type[Base]] = {
    "nodes": DbNode,
    "links": DbLink,
    "groups": DbGroup,
    "users": DbUser,
    "computers": DbComputer,
    "comments": DbComment,
    "logs": DbLog,
}

def count_entities(engine: Engine) -> dict[str, int]:
    """Row counts of nodes, links, groups, users, computers, comments and logs (one query)."""
    columns = [select(func.count()).select_from(model).scalar_subquery().label(key) for key, model in COUNTED_ENTITIES.items()]
    with engine.connect() as connection:
        row = connection.execute(select(*columns)).one()
    return {key: int(row[index]) for index, key in enumerate(COUNTED_ENTITIES)}


def database_size(engine: Engine) -> int | None:
    """Bytes the database takes: ``pg_database_size`` on PostgreSQL, the file (+ WAL) on SQLite; else None."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    database = sqlite_path(engine.url)
    if database is not None:
        paths = [database, Path(f"{database}-wal")]
        return sum(path.stat().st_size for path in paths if path.exists())
    return None


def missing_nodes(engine: Engine, pks: Iterable[int]) -> set[int]:
    """The pks among ``pks`` that name no stored node (one query, any number of pks)."""
    wanted = {int(pk) for pk in pks}
    if not wanted:
        return set()
    with engine.connect() as connection:
        found = connection.execute(select(DbNode.id).where(DbNode.id.in_(id_select(engine.dialect.name, wanted))))
        return wanted - {row[0] for row in found}


def storage_info(backend: SqlaBackend, query_manager: Any = None) -> dict[str, Any]:
    """What ``storage info`` shows (as aiida's ``get_info()``): location, dialect, revision, size, counts, statistics.

    Raises the schema error unless the database fits the code. ``query_manager`` (default: the backend's own)
    gives the creation statistics, so that a host can pass the one its hooks return.
    """
    report = backend.backend_manager.schema_report()
    error = report.error()
    if error is not None:
        raise error
    engine = backend.engine
    queries = query_manager if query_manager is not None else SqlaQueryManager(backend)
    return {
        "profile": backend.profile.name,
        "location": report.location,
        "dialect": engine.dialect.name,
        "schema_revision": report.database_revision,
        "schema_generation": report.database_generation,
        "database_size_bytes": database_size(engine),
        "counts": count_entities(engine),
        "creation_statistics": queries.get_creation_statistics(),
    }
