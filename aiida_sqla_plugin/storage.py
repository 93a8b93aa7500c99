"""Storage-level reports and maintenance: schema state, entity counts, size, reset, settings list, SQL, drop.

These are the library functions behind ``aiida-sqla storage ...``; they take a profile (or a backend) and never
print.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine, func, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from . import session as session_module
from .exceptions import (
    error_line,
    ConfigurationError,
    CorruptStorage,
    SchemaAhead,
    SchemaBehind,
    UnreachableStorage,
    ValidationError,
)
from .manager import SchemaReport, SchemaState, SqlaBackendManager, new_alembic_config
from .models import Base, DbComment, DbComputer, DbGroup, DbLink, DbLog, DbNode, DbPath, DbSetting, DbUser
from .profile import ProfileLike, database_url, describe_url, sqlite_file, sqlite_path
from .settings import Setting
from .sql import id_select

__all__ = (
    "COUNTED_ENTITIES",
    "CorruptStorage",
    "SchemaAhead",
    "SchemaBehind",
    "SchemaReport",
    "SchemaState",
    "count_entities",
    "database_size",
    "drop_database",
    "list_settings",
    "migration_sql",
    "missing_nodes",
    "pending_revisions",
    "reset_storage",
    "schema_report",
)

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
#: Tables ``reset_storage`` keeps.
KEPT_TABLES = frozenset({DbSetting.__tablename__, "alembic_version"})


def schema_report(profile: ProfileLike, manager: SqlaBackendManager | None = None) -> SchemaReport:
    """Inspect the profile's database without changing it (see :meth:`SqlaBackendManager.schema_report`)."""
    return (manager or SqlaBackendManager(profile)).schema_report()


def pending_revisions(database_revision: str | None) -> list[str]:
    """Revisions a migration from ``database_revision`` applies, oldest first (a new database: just the head)."""
    script = ScriptDirectory.from_config(new_alembic_config())
    head = script.get_current_head()
    if database_revision is None:
        return [head] if head else []
    if database_revision == head:
        return []
    return [rev.revision for rev in reversed(list(script.iterate_revisions(head, database_revision)))]


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


def missing_nodes(engine: Engine, pks: Iterable[int]) -> set[int]:
    """The pks among ``pks`` that name no stored node (one query, any number of pks)."""
    wanted = {int(pk) for pk in pks}
    if not wanted:
        return set()
    with engine.connect() as connection:
        found = connection.execute(select(DbNode.id).where(DbNode.id.in_(id_select(engine.dialect.name, wanted))))
        return wanted - {row[0] for row in found}


def list_settings(engine: Engine) -> list[Setting]:
    """Every stored setting, ordered by key."""
    table = DbSetting.__table__
    with engine.connect() as connection:
        rows = connection.execute(
            select(table.c.key, table.c.val, table.c.description, table.c.time).order_by(table.c.key)
        ).all()
    return [Setting(row.key, row.val, row.description, row.time) for row in rows]


def migration_sql(profile: ProfileLike, from_revision: str | None = None, to_revision: str = "head") -> str:
    """The SQL that migrates the profile's kind of database from ``from_revision`` (default: empty) to ``to_revision``.

    Alembic's offline mode: nothing connects to the database. Meant for PostgreSQL, where DBAs review it.
    """
    url = database_url(profile)
    if url.get_backend_name() != "postgresql":
        raise ValidationError(
            f"Profile {profile.name!r} uses {url.get_backend_name()}; offline migration SQL is produced for PostgreSQL "
            "profiles only (run 'aiida-sqla storage migrate' for SQLite)"
        )
    buffer = io.StringIO()
    config = new_alembic_config()
    config.output_buffer = buffer
    config.set_main_option("sqlalchemy.url", f"{url.drivername}://")
    target = f"{from_revision}:{to_revision}" if from_revision else to_revision
    try:
        command.upgrade(config, target, sql=True)
    except CommandError as error:
        raise ValidationError(f"cannot produce the migration SQL for {target!r}: {error}") from error
    return buffer.getvalue()


def drop_database(profile: ProfileLike) -> str:
    """Delete the profile's database (SQLite: the file and its WAL; PostgreSQL: ``DROP DATABASE``); returns what went.

    The profile's engines in this process are disposed first. :class:`ConfigurationError` for in-memory SQLite.
    """
    url = database_url(profile)
    location = describe_url(url)
    session_module.dispose_engines()
    if url.get_backend_name() == "sqlite":
        path = sqlite_file(profile)
        if path is None:
            raise ConfigurationError(f"Profile {profile.name!r}: an in-memory database cannot be dropped")
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
            if candidate.exists():
                os.unlink(candidate)
        return location
    name = url.database
    if not name:
        raise ConfigurationError(f"Profile {profile.name!r}: the URL names no database to drop")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10})
    quoted = admin.dialect.identifier_preparer.quote(name)
    try:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    except sa_exc.OperationalError as error:
        reason = error_line(error)
        raise UnreachableStorage(f"cannot drop the {location} ({reason}); drop it by hand with dropdb") from error
    except sa_exc.ProgrammingError as error:
        reason = error_line(error)
        raise ConfigurationError(f"cannot drop the {location} ({reason}); drop it by hand with dropdb") from error
    finally:
        admin.dispose()
    return location
