"""Database maintenance: planner statistics, WAL checkpoints and (``full``) reclaiming the space of deleted rows.

The object store is maintained too: the objects no node's ``repository_metadata`` references are listed and, with
``full``, removed.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from ..archive._export import referenced_object_keys
from ..backend import SqlaBackend, get_backend
from ..exceptions import StorageInUse
from ..models import DbPath, table_of
from ..objectstore import object_store_for

__all__ = ("MaintenanceReport", "maintain")


@dataclass
class MaintenanceReport:
    """What :func:`maintain` did (or, with ``dry_run``, would do) and the bytes it reclaimed (or estimates)."""

    bytes_reclaimed: int
    size_before: int
    size_after: int
    full: bool
    dry_run: bool
    actions: list[str] = field(default_factory=list)
    #: Objects in the store that no node references, and their bytes (removed with ``full``, unless ``dry_run``).
    unreferenced_objects: int = 0
    unreferenced_bytes: int = 0
    objects_removed: int = 0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _sqlite_size(path: str) -> int:
    return sum(os.path.getsize(name) for name in (path, path + "-wal") if os.path.exists(name))


def _maintain_sqlite(engine: Engine, full: bool, dry_run: bool) -> MaintenanceReport:
    path = engine.url.database
    assert path
    before = _sqlite_size(path)
    engine.dispose()  # this process's pooled connections do not count as other users
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        page_size, free_pages = (connection.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "freelist_count"))
        wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
        if dry_run:
            estimate = page_size * free_pages + wal if full else wal
            actions = ["ANALYZE", "PRAGMA optimize", "PRAGMA wal_checkpoint(TRUNCATE)"] + (["VACUUM"] if full else [])
            return MaintenanceReport(estimate, before, before, full, True, actions)
        actions = []
        if full:
            connection.execute("PRAGMA locking_mode=EXCLUSIVE")
            try:
                connection.execute("BEGIN EXCLUSIVE")
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
                connection.execute("COMMIT")
            except sqlite3.OperationalError as error:
                raise StorageInUse(
                    f"another process uses {path} ({error}); stop the other processes and run maintain --full again"
                ) from error
            connection.execute("VACUUM")
            actions.append("VACUUM")
        connection.execute("ANALYZE")
        connection.execute("PRAGMA optimize")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        actions += ["ANALYZE", "PRAGMA optimize", "PRAGMA wal_checkpoint(TRUNCATE)"]
    finally:
        connection.close()
    after = _sqlite_size(path)
    return MaintenanceReport(max(before - after, 0), before, after, full, False, actions)


_PG_SIZE = "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_stat_user_tables"


def _maintain_postgres(engine: Engine, full: bool, dry_run: bool) -> MaintenanceReport:
    engine.dispose()  # this process's pooled connections do not count as other users
    maintenance = create_engine(engine.url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10})
    try:
        with maintenance.connect() as connection:
            before = int(connection.exec_driver_sql(_PG_SIZE).scalar_one())
            dead = connection.exec_driver_sql(
                "SELECT relname, pg_total_relation_size(relid) * n_dead_tup / greatest(n_live_tup + n_dead_tup, 1) "
                "FROM pg_stat_user_tables WHERE n_dead_tup > 0 ORDER BY relname"
            ).all()
            tables = [str(row[0]) for row in dead if row[0] != DbPath.__tablename__]
            # The closure is rewritten in its key (descendant) order, which also reclaims its space and rebuilds
            # its indexes: deletions and reinsertions scatter its pairs over time (see models.DbPath).
            closure = f"CLUSTER {DbPath.__tablename__} USING {table_of(DbPath).primary_key.name}"
            actions = [f"VACUUM FULL {name}" for name in tables] + [closure, "ANALYZE"] if full else ["ANALYZE"]
            if dry_run:
                estimate = sum(int(row[1]) for row in dead) if full else 0
                return MaintenanceReport(estimate, before, before, full, True, actions)
            if full:
                others = int(connection.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                ).scalar_one())
                if others:
                    raise StorageInUse(
                        f"{others} other connection(s) use the database; stop the other processes and run maintain --full again"
                    )
                quote = connection.dialect.identifier_preparer.quote
                for name in tables:
                    connection.exec_driver_sql(f"VACUUM FULL {quote(name)}")
                connection.exec_driver_sql(closure)
            connection.exec_driver_sql("ANALYZE")
            after = int(connection.exec_driver_sql(_PG_SIZE).scalar_one())
    finally:
        maintenance.dispose()
    return MaintenanceReport(max(before - after, 0), before, after, full, False, actions)


def maintain(backend: SqlaBackend | None = None, *, full: bool = False, dry_run: bool = False) -> MaintenanceReport:
    """Refresh planner statistics and checkpoint the WAL; ``full`` also reclaims the space of deleted rows.

    ``full`` needs the storage alone (:class:`StorageInUse` otherwise) and disposes this process's pool first.
    ``dry_run`` estimates the bytes ``full`` (or a plain run) would reclaim and changes nothing. Objects of the
    store no node references are counted (``unreferenced_objects``, ``unreferenced_bytes``); ``full`` removes them.
    """
    backend = get_backend(backend)
    engine = backend.engine
    backend.close()
    if engine.dialect.name == "sqlite":
        result = _maintain_sqlite(engine, full, dry_run)
    else:
        result = _maintain_postgres(engine, full, dry_run)
    _maintain_objects(backend, result, remove=full and not dry_run)
    return result


def _maintain_objects(backend: SqlaBackend, result: MaintenanceReport, remove: bool) -> None:
    """Count (and with ``remove`` delete) the objects of the store that no node references."""
    store = object_store_for(backend)
    with backend.engine.connect() as connection, connection.begin():
        referenced = referenced_object_keys(connection)
        for key in store.keys():
            if key in referenced:
                continue
            result.unreferenced_objects += 1
            result.unreferenced_bytes += store.path(key).stat().st_size
            if remove:
                store.remove(key)
                result.objects_removed += 1
