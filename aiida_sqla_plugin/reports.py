"""Reports over a storage: entity counts, database size, missing nodes, connections and ``storage info``.

:class:`~aiida_sqla_plugin.queries.SqlaQueryManager` (the AiiDA 1.x face) gives the creation statistics.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection, Engine

from .backend import SqlaBackend
from .exceptions import ValidationError
from .models import Base, DbComment, DbComputer, DbGroup, DbLink, DbLog, DbNode, DbUser
from .profile import describe_url, sqlite_path
from .queries import SqlaQueryManager
from .session import idempotent_read
from .sql import id_select

__all__ = ("COUNTED_ENTITIES", "connections", "count_entities", "database_size", "entity_counts", "missing_nodes", "storage_info")

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


@idempotent_read
def count_entities(engine: Engine) -> dict[str, int]:
    """Row counts of nodes, links, groups, users, computers, comments and logs (one query)."""
    with engine.connect() as connection:
        return entity_counts(connection)


def entity_counts(connection: Connection) -> dict[str, int]:
    """:func:`count_entities` on ``connection``, in its transaction (a backup's snapshot, say)."""
    columns = [select(func.count()).select_from(model).scalar_subquery().label(key) for key, model in COUNTED_ENTITIES.items()]
    row = connection.execute(select(*columns)).one()
    return {key: int(row[index]) for index, key in enumerate(COUNTED_ENTITIES)}


@idempotent_read
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


@idempotent_read
def missing_nodes(engine: Engine, pks: Iterable[int]) -> set[int]:
    """The pks among ``pks`` that name no stored node (one query, any number of pks)."""
    wanted = {int(pk) for pk in pks}
    if not wanted:
        return set()
    with engine.connect() as connection:
        found = connection.execute(select(DbNode.id).where(DbNode.id.in_(id_select(engine.dialect.name, wanted))))
        return wanted - {row[0] for row in found}


_CONNECTIONS_SQL = text(
    "SELECT application_name, pid, usename AS user, host(client_addr) AS client_address, state, "
    "EXTRACT(EPOCH FROM now() - backend_start)::float AS age_seconds, "
    "EXTRACT(EPOCH FROM now() - state_change)::float AS state_seconds "
    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "ORDER BY application_name, pid"
)


@idempotent_read
def connections(engine: Engine) -> list[dict[str, Any]]:
    """Who is connected to the engine's PostgreSQL database (``pg_stat_activity``), this query's own one excluded.

    One row per server connection: ``application_name`` (``aiida-sqla@host:pid`` for this package's processes),
    server ``pid``, ``user``, ``client_address``, ``state`` (``None`` for other roles' sessions unless the user
    may read all statistics), ``age_seconds`` since it connected, ``state_seconds`` in its state. Behind PgBouncer
    these are the pooler's server connections. :class:`ValidationError` on SQLite, which has no server.
    """
    if engine.dialect.name != "postgresql":
        raise ValidationError(
            f"the {describe_url(engine.url)} has no server connections to list (each process opens the file "
            "itself); 'storage connections' applies to PostgreSQL profiles"
        )
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(_CONNECTIONS_SQL)]


@idempotent_read
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
