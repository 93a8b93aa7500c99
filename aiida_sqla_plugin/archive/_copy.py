"""Copy a profile's storage into another profile (typically SQLite to PostgreSQL), table by table.

Into an empty target every entity keeps its primary key: the rows of each table stream from one read
snapshot of the source in batches and go through :func:`~aiida_sqla_plugin.bulk.bulk_insert` (checked, then
``COPY`` / ``executemany``) with their ids, all in ONE target transaction, so a failure half-way leaves the target
as it was. An installed closure is copied row for row (not recomputed) and its triggers installed afterwards.
Merging into a non-empty target imports the source as an archive (:class:`~._profile_source.ProfileSource`
fed to :func:`~._import.import_source`): the import rules decide what is new. The objects the source's nodes
reference are copied into the target's object store; objects a failed copy wrote are removed again.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.engine import Connection

from ..backend import SqlaBackend
from ..config import ConfigFile
from ..bulk import insert_plain_rows
from ..closure import CLOSURE_SETTING_KEY, closure_bulk_load, install_tc, installed_link_types
from ..exceptions import StorageNotEmpty, ValidationError
from ..manager import SCHEMA_GENERATION_KEY, SqlaBackendManager
from ..migration import migrate_if_needed
from ..objectstore import ObjectStore, object_store_for
from ..models import (
    Base,
    DbAuthInfo,
    DbComment,
    DbComputer,
    DbGroup,
    DbGroupNode,
    DbLink,
    DbLog,
    DbNode,
    DbPath,
    DbSetting,
    DbUser,
    dialect_insert,
    table_of,
)
from ..profile import ProfileLike, database_url
from ..progress import ProgressCallback, report
from ..reports import COUNTED_ENTITIES
from ._import import ImportReport, import_source
from ._profile_source import ProfileSource

__all__ = ("COPY_BATCH_SIZE", "CopyReport", "StorageNotEmpty", "copy_storage")

#: Rows read from the source and written to the target per batch (memory is bounded by it).
COPY_BATCH_SIZE = 20_000
#: The entity tables in an order that respects their foreign keys.
COPIED_ENTITIES: tuple[type[Base], ...] = (
    DbUser, DbComputer, DbAuthInfo, DbNode, DbLink, DbGroup, DbGroupNode, DbComment, DbLog,
)

#: The importer's entity names (:data:`._import.ENTITIES`) of the copied tables.
_IMPORTED: dict[str, type[Base]] = dict(zip(
    ("users", "computers", "authinfos", "nodes", "links", "groups", "group_nodes", "comments", "logs"), COPIED_ENTITIES,
))


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_storage` wrote into the target."""

    source: str
    target: str
    merged: bool
    #: Rows written per table name (entities, ``db_dbpath``, ``db_dbsetting``).
    rows: dict[str, int] = field(default_factory=dict)
    #: Objects written into the target's object store (those it already held are not counted).
    objects: int = 0
    #: A merge: what the import of the source found new, present and skipped per entity.
    merge_report: ImportReport | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "target": self.target, "merged": self.merged, "rows": dict(self.rows),
            "objects": self.objects, "merge": None if self.merge_report is None else self.merge_report.as_dict(),
        }


def _occupied(connection: Connection) -> list[str]:
    """What makes a storage non-empty: entities, or settings other than the one migrating creates."""
    settings = table_of(DbSetting)
    checks = {name: exists().select_from(model) for name, model in COUNTED_ENTITIES.items()}
    checks["settings"] = exists().where(settings.c.key != SCHEMA_GENERATION_KEY)
    row = connection.execute(select(*(check.label(name) for name, check in checks.items()))).one()
    return [name for name, present in zip(checks, row) if present]


@contextmanager
def _snapshot(backend: SqlaBackend) -> Iterator[Connection]:
    """One read-only transaction on the source that sees a single committed state for every table."""
    with backend.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            yield connection


def _batches(connection: Connection, model: type[Base], batch_size: int) -> Iterator[list[Any]]:
    table = table_of(model)
    statement = select(table).order_by(*table.primary_key.columns)
    result = connection.execute(statement, execution_options={"stream_results": True, "yield_per": batch_size})
    for partition in result.partitions(batch_size):
        yield list(partition)


def _count(connection: Connection, model: type[Base]) -> int:
    return int(connection.execute(select(func.count()).select_from(table_of(model))).scalar_one())


def _copy_entities(
    source: Connection, target: SqlaBackend, model: type[Base], batch_size: int, progress: ProgressCallback | None
) -> int:
    table = table_of(model)
    names = [column.name for column in table.columns if not column.primary_key]
    total = _count(source, model)
    description = f"copy {table.name}"
    done = 0
    report(progress, description, 0, total)
    for rows in _batches(source, model, batch_size):
        mapped = [row._mapping for row in rows]
        target.bulk_insert(model, [{name: row[name] for name in names} for row in mapped], ids=[row["id"] for row in mapped])
        done += len(rows)
        report(progress, description, done, total)
    return done


def _copy_closure(source: Connection, target: SqlaBackend, batch_size: int, progress: ProgressCallback | None) -> int:
    """Copy ``db_dbpath`` and install the triggers on the copied links (without recomputing the closure)."""
    types = installed_link_types(source)
    if types is None:
        return 0
    session = target.get_session()
    connection = session.connection()
    paths = table_of(DbPath)
    total = _count(source, DbPath)
    done = 0
    with closure_bulk_load(connection):
        for rows in _batches(source, DbPath, batch_size):
            insert_plain_rows(connection, paths, [tuple(row) for row in rows])
            done += len(rows)
            report(progress, "copy db_dbpath", done, total)
    install_tc(session, sorted(types), backfill=False)
    return done


def _copy_settings(source: Connection, target: SqlaBackend, replace: bool) -> int:
    """Every source setting but the schema generation (the target's own migration wrote it): values and times.

    ``replace=False`` (a merge) adds only the settings the target lacks, and not the closure's: whether the target
    has a closure is its own (its triggers) and stays so.
    """
    settings = table_of(DbSetting)
    kept = [SCHEMA_GENERATION_KEY] if replace else [SCHEMA_GENERATION_KEY, CLOSURE_SETTING_KEY]
    rows = [
        {"key": row.key, "val": row.val, "description": row.description, "time": row.time}
        for row in source.execute(select(settings).where(settings.c.key.not_in(kept)))
    ]
    if rows:
        connection = target.get_session().connection()
        upsert = dialect_insert(connection.dialect.name, DbSetting)
        statement = (
            upsert.on_conflict_do_update(
                index_elements=["key"],
                set_={"val": upsert.excluded.val, "description": upsert.excluded.description, "time": upsert.excluded.time},
            )
            if replace
            else upsert.on_conflict_do_nothing(index_elements=["key"])
        )
        return int(connection.execute(statement, rows).rowcount or 0)
    return 0


def _copy_objects(source: ProfileSource, store: ObjectStore, added: list[str], progress: ProgressCallback | None) -> None:
    """Put every object the source's nodes reference into ``store``; ``added`` collects the keys written."""
    done = 0
    for key, opener in source.objects():
        done += 1
        if not store.has(key):
            with opener() as stream:
                store.put(stream, expected_key=key)
            added.append(key)
        report(progress, "copy objects", done, None)


def _profile(profile: ProfileLike | str) -> ProfileLike:
    return ConfigFile().get_profile(profile) if isinstance(profile, str) else profile


def copy_storage(
    source_profile: ProfileLike | str,
    target_profile: ProfileLike | str,
    *,
    merge: bool = False,
    progress: ProgressCallback | None = None,
    batch_size: int = COPY_BATCH_SIZE,
) -> CopyReport:
    """Copy every entity, the closure (when installed) and the settings of ``source_profile`` into ``target_profile``.

    The target is migrated first; it must be empty (no node, link, group, user, computer, comment, log or
    setting beyond what migrating creates), else :class:`StorageNotEmpty`; primary keys are kept. ``merge=True``
    accepts a non-empty target and imports into it with the import rules (new primary keys; entities with a
    UUID, users with an e-mail, already there are left alone; settings the target lacks are added; the closure is
    kept by the target's own triggers, if it has them). Everything is written in one target transaction, from one
    read snapshot of the source: on any error the target (database and object store) is left as it was.
    ``batch_size`` bounds the rows held in memory. Profiles are given as objects or by their name in the config file.
    """
    source_profile, target_profile = _profile(source_profile), _profile(target_profile)
    if database_url(source_profile) == database_url(target_profile):
        raise ValidationError(f"profiles {source_profile.name!r} and {target_profile.name!r} use the same database; copy to another one")
    if batch_size < 1:
        raise ValidationError(f"batch_size must be at least 1, got {batch_size}")
    source_report = SqlaBackendManager(source_profile).schema_report()
    error = source_report.error()
    if error is not None:
        raise error
    migrate_if_needed(SqlaBackendManager(target_profile))
    source, target = SqlaBackend(source_profile), SqlaBackend(target_profile)
    rows: dict[str, int] = {}
    merge_report: ImportReport | None = None
    added: list[str] = []
    store = object_store_for(target_profile)
    try:
        with _snapshot(source) as reader, target.transaction(write=True) as session:
            occupied = _occupied(session.connection())
            if occupied and not merge:
                raise StorageNotEmpty(
                    f"profile {target_profile.name!r} is not empty (it holds {', '.join(occupied)}); copy into a new "
                    "or freshly migrated profile, or merge into it (--merge)"
                )
            records = ProfileSource(reader, object_store_for(source_profile), batch_size)
            if occupied:
                merge_report = import_source(records, target, progress=progress, batch_size=batch_size, objects=False)
                rows = {model.__tablename__: merge_report.counts[entity]["new"] for entity, model in _IMPORTED.items()}
            else:
                for model in COPIED_ENTITIES:
                    rows[model.__tablename__] = _copy_entities(reader, target, model, batch_size, progress)
                rows[DbPath.__tablename__] = _copy_closure(reader, target, batch_size, progress)
            rows[DbSetting.__tablename__] = _copy_settings(reader, target, replace=not occupied)
            _copy_objects(records, store, added, progress)
    except BaseException:
        for key in added:
            store.remove(key)
        raise
    return CopyReport(
        source=source_profile.name, target=target_profile.name, merged=merge_report is not None, rows=rows,
        objects=len(added), merge_report=merge_report,
    )
