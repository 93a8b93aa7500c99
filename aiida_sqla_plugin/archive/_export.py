"""Export a profile's nodes (or all of it) as an AiiDA ``main_0001`` archive that aiida-core 2.x imports.

The archive is a zip holding ``metadata.json`` (first, since aiida-core looks for it among the first entries),
``db.sqlite3`` (the sqlite_zip schema: dashed UUID text, naive UTC times, JSON text) and ``repo/<sha256>`` for
every object the exported nodes' ``repository_metadata`` references. The node set follows AiiDA's default EXPORT
traversal rules in one recursive query; rows are then streamed by id batches into the archive database, and the
zip is written next to its destination and renamed over it only when complete.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import sqlite3
import tempfile
import time
import uuid as uuid_module
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Table, literal_column, select, union_all
from sqlalchemy.engine import Connection

from .. import __version__
from ..backend import SqlaBackend, get_backend
from ..exceptions import AiidaSqlaError, NotExistent, ValidationError
from ..models import DbComment, DbComputer, DbGroup, DbGroupNode, DbLink, DbLog, DbNode, DbUser, table_of
from ..objectstore import ObjectStore, object_store_for
from ..progress import ProgressCallback, report
from ..session import transaction
from ..sql import id_select, string_select

__all__ = ("EXPORT_TRAVERSAL", "ArchiveExportError", "ExportReport", "export_archive", "referenced_object_keys", "repository_keys")

#: Archive format version written (the one aiida-core 2.x writes).
EXPORT_VERSION = "main_0001"
META_FILENAME = "metadata.json"
DB_FILENAME = "db.sqlite3"
REPO_FOLDER = "repo"
#: Rows read and written per batch; memory is bounded by this, not by the graph size.
BATCH_SIZE = 10_000
COMPRESSION_LEVEL = 6

#: AiiDA's default EXPORT rules as ``link type -> (follow forward, follow backward)``. Forward goes from a link's
#: input to its output: a selected process brings the data it created, what it returned and the processes it
#: called; backward brings a node's inputs, its creator and its callers.
EXPORT_TRAVERSAL: Mapping[str, tuple[bool, bool]] = {
    "input_calc": (False, True),
    "input_work": (False, True),
    "create": (True, True),
    "return": (True, False),
    "call_calc": (True, True),
    "call_work": (True, True),
}


class ArchiveExportError(AiidaSqlaError):
    """An archive could not be written; no file was created or replaced."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_archive` wrote."""

    path: Path
    #: Rows per archive table (``db_dbnode``, ``db_dblink``, ...).
    counts: Mapping[str, int]
    #: Repository objects written under ``repo/``.
    objects: int
    size_bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "counts": dict(self.counts),
            "objects": self.objects,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------------------------------ archive schema

_JSON = "JSON"
#: The sqlite_zip tables as aiida-core creates them: ``table -> [(column, declared type, nullable)]``.
_ARCHIVE_COLUMNS: dict[str, list[tuple[str, str, bool]]] = {
    "db_dbuser": [
        ("id", "INTEGER", False), ("email", "VARCHAR(254)", False), ("first_name", "VARCHAR(254)", False),
        ("last_name", "VARCHAR(254)", False), ("institution", "VARCHAR(254)", False),
    ],
    "db_dbcomputer": [
        ("id", "INTEGER", False), ("uuid", "VARCHAR(32)", False), ("label", "VARCHAR(255)", False),
        ("hostname", "VARCHAR(255)", False), ("description", "TEXT", False), ("scheduler_type", "VARCHAR(255)", False),
        ("transport_type", "VARCHAR(255)", False), ("metadata", _JSON, False),
    ],
    "db_dbsetting": [
        ("id", "INTEGER", False), ('"key"', "VARCHAR(1024)", False), ("val", _JSON, True),
        ("description", "TEXT", False), ("time", "DATETIME", False),
    ],
    "db_dbauthinfo": [
        ("id", "INTEGER", False), ("aiidauser_id", "INTEGER", False), ("dbcomputer_id", "INTEGER", False),
        ("metadata", _JSON, False), ("auth_params", _JSON, False), ("enabled", "BOOLEAN", False),
    ],
    "db_dbgroup": [
        ("id", "INTEGER", False), ("uuid", "VARCHAR(32)", False), ("label", "VARCHAR(255)", False),
        ("type_string", "VARCHAR(255)", False), ("time", "DATETIME", False), ("description", "TEXT", False),
        ("extras", _JSON, False), ("user_id", "INTEGER", False),
    ],
    "db_dbnode": [
        ("id", "INTEGER", False), ("uuid", "VARCHAR(32)", False), ("node_type", "VARCHAR(255)", False),
        ("process_type", "VARCHAR(255)", True), ("label", "VARCHAR(255)", False), ("description", "TEXT", False),
        ("ctime", "DATETIME", False), ("mtime", "DATETIME", False), ("attributes", _JSON, True),
        ("extras", _JSON, True), ("repository_metadata", _JSON, False), ("dbcomputer_id", "INTEGER", True),
        ("user_id", "INTEGER", False),
    ],
    "db_dbcomment": [
        ("id", "INTEGER", False), ("uuid", "VARCHAR(32)", False), ("dbnode_id", "INTEGER", False),
        ("ctime", "DATETIME", False), ("mtime", "DATETIME", False), ("user_id", "INTEGER", False),
        ("content", "TEXT", False),
    ],
    "db_dbgroup_dbnodes": [("id", "INTEGER", False), ("dbnode_id", "INTEGER", False), ("dbgroup_id", "INTEGER", False)],
    "db_dblink": [
        ("id", "INTEGER", False), ("input_id", "INTEGER", False), ("output_id", "INTEGER", False),
        ("label", "VARCHAR(255)", False), ("type", "VARCHAR(255)", False),
    ],
    "db_dblog": [
        ("id", "INTEGER", False), ("uuid", "VARCHAR(32)", False), ("time", "DATETIME", False),
        ("loggername", "VARCHAR(255)", False), ("levelname", "VARCHAR(50)", False), ("dbnode_id", "INTEGER", False),
        ("message", "TEXT", False), ("metadata", _JSON, False),
    ],
}
#: ``table -> [(constraint kind, columns, referenced table, on delete)]`` beyond the primary key.
_ARCHIVE_CONSTRAINTS: dict[str, list[tuple[str, tuple[str, ...], str, str]]] = {
    "db_dbuser": [("UNIQUE", ("email",), "", "")],
    "db_dbcomputer": [("UNIQUE", ("uuid",), "", ""), ("UNIQUE", ("label",), "", "")],
    "db_dbsetting": [("UNIQUE", ('"key"',), "", "")],
    "db_dbauthinfo": [
        ("FOREIGN KEY", ("aiidauser_id",), "db_dbuser", "CASCADE"),
        ("UNIQUE", ("aiidauser_id", "dbcomputer_id"), "", ""),
        ("FOREIGN KEY", ("dbcomputer_id",), "db_dbcomputer", "CASCADE"),
    ],
    "db_dbgroup": [
        ("UNIQUE", ("uuid",), "", ""),
        ("FOREIGN KEY", ("user_id",), "db_dbuser", "CASCADE"),
        ("UNIQUE", ("label", "type_string"), "", ""),
    ],
    "db_dbnode": [
        ("UNIQUE", ("uuid",), "", ""),
        ("FOREIGN KEY", ("dbcomputer_id",), "db_dbcomputer", "RESTRICT"),
        ("FOREIGN KEY", ("user_id",), "db_dbuser", "RESTRICT"),
    ],
    "db_dbcomment": [
        ("UNIQUE", ("uuid",), "", ""),
        ("FOREIGN KEY", ("user_id",), "db_dbuser", "CASCADE"),
        ("FOREIGN KEY", ("dbnode_id",), "db_dbnode", "CASCADE"),
    ],
    "db_dbgroup_dbnodes": [
        ("FOREIGN KEY", ("dbnode_id",), "db_dbnode", ""),
        ("UNIQUE", ("dbgroup_id", "dbnode_id"), "", ""),
        ("FOREIGN KEY", ("dbgroup_id",), "db_dbgroup", ""),
    ],
    "db_dblink": [
        ("FOREIGN KEY", ("output_id",), "db_dbnode", "CASCADE"),
        ("FOREIGN KEY", ("input_id",), "db_dbnode", ""),
    ],
    "db_dblog": [("UNIQUE", ("uuid",), "", ""), ("FOREIGN KEY", ("dbnode_id",), "db_dbnode", "CASCADE")],
}
#: Indexed columns per table, as in aiida-core's archive schema.
_ARCHIVE_INDEXES: dict[str, tuple[str, ...]] = {
    "db_dbauthinfo": ("aiidauser_id", "dbcomputer_id"),
    "db_dbgroup": ("type_string", "label", "user_id"),
    "db_dbnode": ("dbcomputer_id", "node_type", "process_type", "mtime", "user_id", "ctime", "label"),
    "db_dbcomment": ("user_id", "dbnode_id"),
    "db_dbgroup_dbnodes": ("dbnode_id", "dbgroup_id"),
    "db_dblink": ("label", "type", "output_id", "input_id"),
    "db_dblog": ("levelname", "loggername", "dbnode_id"),
}


def _constraint_name(table: str, kind: str, columns: tuple[str, ...], referred: str) -> str:
    names = "_".join(column.strip('"') for column in columns)
    return f"fk_{table}_{names}_{referred}" if kind == "FOREIGN KEY" else f"uq_{table}_{names}"


def archive_schema() -> list[str]:
    """The ``CREATE`` statements of an empty archive database (tables in dependency order, then indexes)."""
    statements = []
    for table, columns in _ARCHIVE_COLUMNS.items():
        parts = [f"{name} {kind}{'' if nullable else ' NOT NULL'}" for name, kind, nullable in columns]
        parts.append(f"CONSTRAINT {table}_pkey PRIMARY KEY (id)")
        for kind, cols, referred, on_delete in _ARCHIVE_CONSTRAINTS.get(table, []):
            name = _constraint_name(table, kind, cols, referred)
            if kind == "UNIQUE":
                parts.append(f"CONSTRAINT {name} UNIQUE ({', '.join(cols)})")
            else:
                action = f" ON DELETE {on_delete}" if on_delete else ""
                parts.append(
                    f"CONSTRAINT {name} FOREIGN KEY({', '.join(cols)}) REFERENCES {referred} (id){action}"
                    " DEFERRABLE INITIALLY DEFERRED"
                )
        statements.append(f"CREATE TABLE {table} (\n\t" + ", \n\t".join(parts) + "\n)")
    for table, indexed in _ARCHIVE_INDEXES.items():
        statements += [f"CREATE INDEX ix_{table}_{table}_{column} ON {table} ({column})" for column in indexed]
    return statements


# ------------------------------------------------------------------------------------------ value conversion


def _archive_time(value: datetime.datetime | None) -> str | None:
    """A time as aiida-core's archive stores it: naive UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _archive_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _archive_uuid(value: Any) -> str:
    return str(value if isinstance(value, uuid_module.UUID) else uuid_module.UUID(str(value)))


def _converters(table: Table) -> list[Callable[[Any], Any]]:
    """One converter per archive column of ``table``, in archive column order."""
    kinds = {name.strip('"'): kind for name, kind, _ in _ARCHIVE_COLUMNS[table.name]}
    result: list[Callable[[Any], Any]] = []
    for name, kind in kinds.items():
        if name == "uuid":
            result.append(_archive_uuid)
        elif kind == "DATETIME":
            result.append(_archive_time)
        elif kind == _JSON:
            result.append(_archive_json)
        elif kind == "BOOLEAN":
            result.append(lambda value: None if value is None else int(bool(value)))
        else:
            result.append(lambda value: value)
    return result


def _source_columns(table: Table) -> list[Column[Any]]:
    """The columns of our ``table`` in the archive table's column order (same names)."""
    return [table.c[name.strip('"')] for name, _, _ in _ARCHIVE_COLUMNS[table.name]]


# ------------------------------------------------------------------------------------------ selection


def repository_keys(repository_metadata: Mapping[str, Any] | None) -> Iterator[str]:
    """The object keys a node's ``repository_metadata`` references (files at any depth of its ``o`` tree)."""
    if not repository_metadata:
        return
    stack: list[Mapping[str, Any]] = [repository_metadata]
    while stack:
        entry = stack.pop()
        key = entry.get("k")
        if isinstance(key, str):
            yield key
        children = entry.get("o")
        if isinstance(children, Mapping):
            stack.extend(child for child in children.values() if isinstance(child, Mapping))


def referenced_object_keys(connection: Connection, batch_size: int = 20_000) -> set[str]:
    """The keys of every object some node's ``repository_metadata`` references, streamed from SQL in batches."""
    node = table_of(DbNode)
    result = connection.execute(select(node.c.repository_metadata), execution_options={"stream_results": True, "yield_per": batch_size})
    keys: set[str] = set()
    for partition in result.partitions(batch_size):
        for (metadata,) in partition:
            keys.update(repository_keys(metadata))
    return keys


def _traverse(connection: Connection, seeds: set[int]) -> set[int]:
    """The seeds and every node the EXPORT rules reach from them, in one recursive query."""
    dialect = connection.dialect.name
    link = table_of(DbLink)
    forward = sorted(kind for kind, (on, _) in EXPORT_TRAVERSAL.items() if on)
    backward = sorted(kind for kind, (_, on) in EXPORT_TRAVERSAL.items() if on)
    seed = id_select(dialect, seeds).subquery()
    reach = select(seed.c.id.label("id")).cte("reach", recursive=True)
    steps = union_all(
        select(link.c.input_id.label("source"), link.c.output_id.label("target")).where(link.c.type.in_(forward)),
        select(link.c.output_id.label("source"), link.c.input_id.label("target")).where(link.c.type.in_(backward)),
    ).subquery("steps")
    reach = reach.union(select(steps.c.target).join(reach, steps.c.source == reach.c.id))
    return {int(row[0]) for row in connection.execute(select(reach.c.id))}


def _ids_of(connection: Connection, statement: Any) -> set[int]:
    return {int(row[0]) for row in connection.execute(statement) if row[0] is not None}


@dataclass
class _Selection:
    """The primary keys of every entity going into the archive; ``None`` means "all rows of the table"."""

    nodes: set[int] | None
    groups: set[int] | None
    users: set[int] | None = None
    computers: set[int] | None = None


def _select_groups(connection: Connection, labels: Sequence[str]) -> set[int]:
    group = table_of(DbGroup)
    found = {
        str(row[0]): int(row[1])
        for row in connection.execute(
            select(group.c.label, group.c.id).where(group.c.label.in_(string_select(connection.dialect.name, labels)))
        )
    }
    missing = sorted(set(labels) - set(found))
    if missing:
        raise NotExistent(f"no group labelled {', '.join(map(repr, missing))}; list the groups with `aiida-sqla graph` or check the label")
    return set(found.values())


def _selection(
    connection: Connection, nodes: Iterable[int] | None, groups: Sequence[str] | None, everything: bool
) -> _Selection:
    dialect = connection.dialect.name
    if everything:
        return _Selection(nodes=None, groups=None)
    node_table, member = table_of(DbNode), table_of(DbGroupNode)
    seeds: set[int] = set()
    if nodes is not None:
        seeds = {int(pk) for pk in nodes}
        found = _ids_of(connection, select(node_table.c.id).where(node_table.c.id.in_(id_select(dialect, seeds))))
        if seeds - found:
            shown = ", ".join(map(str, sorted(seeds - found)[:20]))
            raise NotExistent(f"no node with pk {shown}; check the pks (e.g. `aiida-sqla node show PK`)")
    group_ids: set[int] = set()
    if groups:
        group_ids = _select_groups(connection, groups)
        seeds |= _ids_of(connection, select(member.c.dbnode_id).where(member.c.dbgroup_id.in_(id_select(dialect, group_ids))))
    node_ids = _traverse(connection, seeds) if seeds else set()
    return _Selection(nodes=node_ids, groups=group_ids)


def _complete(connection: Connection, selection: _Selection) -> None:
    """Add the users and computers the selected nodes, groups and comments reference."""
    if selection.nodes is None:
        return
    dialect = connection.dialect.name
    node_table, group, comment = table_of(DbNode), table_of(DbGroup), table_of(DbComment)
    users: set[int] = set()
    computers: set[int] = set()
    if selection.nodes:
        nodes = id_select(dialect, selection.nodes)
        users |= _ids_of(connection, select(node_table.c.user_id).where(node_table.c.id.in_(nodes)).distinct())
        computers |= _ids_of(connection, select(node_table.c.dbcomputer_id).where(node_table.c.id.in_(nodes)).distinct())
        users |= _ids_of(connection, select(comment.c.user_id).where(comment.c.dbnode_id.in_(nodes)).distinct())
    if selection.groups:
        users |= _ids_of(connection, select(group.c.user_id).where(group.c.id.in_(id_select(dialect, selection.groups))))
    selection.users, selection.computers = users, computers


# ------------------------------------------------------------------------------------------ streaming


def _batches(connection: Connection, table: Table, key: Column[Any], ids: set[int] | None) -> Iterator[Sequence[Any]]:
    """Rows of ``table`` (archive column order) whose ``key`` is in ``ids`` (all when None), in batches."""
    columns = _source_columns(table)
    dialect = connection.dialect.name
    if ids is None:
        last: int | None = None
        while True:
            statement = select(*columns).order_by(table.c.id).limit(BATCH_SIZE)
            if last is not None:
                statement = statement.where(table.c.id > last)
            rows = connection.execute(statement).all()
            if not rows:
                return
            last = rows[-1][0]
            yield rows
        return
    ordered = sorted(ids)
    for begin in range(0, len(ordered), BATCH_SIZE):
        chunk = ordered[begin : begin + BATCH_SIZE]
        rows = connection.execute(select(*columns).where(key.in_(id_select(dialect, chunk))).order_by(table.c.id)).all()
        if rows:
            yield rows


class _ArchiveDatabase:
    """The archive's ``db.sqlite3`` in a work directory, written in batches."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path)
        self.connection.execute("PRAGMA journal_mode=OFF")
        self.connection.execute("PRAGMA synchronous=OFF")
        for statement in archive_schema():
            self.connection.execute(statement)
        self.counts: dict[str, int] = {table: 0 for table in _ARCHIVE_COLUMNS}

    def write(self, table: Table, rows: Sequence[Any], keep: Callable[[Any], bool] | None = None) -> None:
        converters = _converters(table)
        values = [
            tuple(convert(value) for convert, value in zip(converters, row))
            for row in rows
            if keep is None or keep(row)
        ]
        if not values:
            return
        names = ", ".join(name for name, _, _ in _ARCHIVE_COLUMNS[table.name])
        marks = ", ".join("?" * len(converters))
        self.connection.executemany(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", values)
        self.counts[table.name] += len(values)

    def close(self) -> None:
        self.connection.commit()
        self.connection.close()




def _write_tables(
    connection: Connection,
    selection: _Selection,
    database: _ArchiveDatabase,
    keys: set[str],
    progress: ProgressCallback | None,
) -> None:
    """Copy every selected row into the archive database; collect the repository keys of the nodes."""
    user, computer, node_table = table_of(DbUser), table_of(DbComputer), table_of(DbNode)
    group, member, link = table_of(DbGroup), table_of(DbGroupNode), table_of(DbLink)
    comment, log = table_of(DbComment), table_of(DbLog)
    nodes = selection.nodes
    done = 0

    def step(description: str) -> None:
        report(progress, description, done, None)

    for table, ids in ((user, selection.users), (computer, selection.computers)):
        for rows in _batches(connection, table, table.c.id, ids):
            database.write(table, rows)
    repo_index = [name for name, _, _ in _ARCHIVE_COLUMNS["db_dbnode"]].index("repository_metadata")
    for rows in _batches(connection, node_table, node_table.c.id, nodes):
        for row in rows:
            keys.update(repository_keys(row[repo_index]))
        database.write(node_table, rows)
        done += len(rows)
        step("export nodes")
    done = 0
    if nodes is None:
        for rows in _batches(connection, link, link.c.id, None):
            database.write(link, rows)
            done += len(rows)
            step("export links")
    else:
        # Every link between two exported nodes: the EXPORT rules follow each link type one way at least.
        source_index = [name for name, _, _ in _ARCHIVE_COLUMNS["db_dblink"]].index("input_id")
        for rows in _batches(connection, link, link.c.output_id, nodes):
            database.write(link, rows, keep=lambda row: row[source_index] in nodes)
            done += len(rows)
            step("export links")
    groups = selection.groups
    for rows in _batches(connection, group, group.c.id, groups):
        database.write(group, rows)
    for rows in _batches(connection, member, member.c.dbgroup_id, groups):
        database.write(member, rows)
    for table in (comment, log):
        for rows in _batches(connection, table, table.c.dbnode_id, nodes):
            database.write(table, rows)


def _metadata(counts: Mapping[str, int], nodes: Iterable[int] | None, groups: Sequence[str] | None, everything: bool) -> dict[str, Any]:
    return {
        "export_version": EXPORT_VERSION,
        "aiida_version": "2.9.4",
        "key_format": "sha256",
        "compression": COMPRESSION_LEVEL,
        "ctime": datetime.datetime.now().isoformat(),
        "creation_parameters": {
            "entities_starting_set": None
            if everything
            else {"node": sorted(int(pk) for pk in nodes or ()), "group": sorted(groups or ())},
            "include_authinfos": False,
            "include_comments": True,
            "include_logs": True,
            "written_by": f"aiida-sqla-plugin {__version__}",
        },
        "entity_counts": dict(counts),
    }


def export_archive(
    path: str | os.PathLike[str],
    *,
    nodes: Iterable[int] | None = None,
    groups: Sequence[str] | None = None,
    all: bool = False,  # noqa: A002 - the name of the issue's API and of the CLI flag
    backend: SqlaBackend | None = None,
    progress: ProgressCallback | None = None,
) -> ExportReport:
    """Write the selected nodes (by pk), the nodes of the selected groups (by label), or everything (``all``).

    Runs in the caller's transaction when there is one (it only reads). An existing file at ``path`` is replaced
    only once the new archive is complete. Raises :class:`ValidationError` for a missing or double selection,
    :class:`NotExistent` for unknown pks or labels, :class:`ArchiveExportError` when the file cannot be written.
    """
    if isinstance(nodes, (str, bytes)) or isinstance(groups, (str, bytes)):
        raise ValidationError("nodes must be pks and groups labels, each given as a list")
    if all and (nodes is not None or groups is not None):
        raise ValidationError("give all=True, or nodes and/or groups, not both")
    if not all and not nodes and not groups:
        raise ValidationError("nothing to export: give node pks, group labels, or all=True")
    node_list = None if nodes is None else list(nodes)
    if node_list is not None and any(isinstance(pk, bool) or not isinstance(pk, int) for pk in node_list):
        raise ValidationError(f"node pks must be integers, got {node_list[:5]!r}")
    target = Path(path)
    if not target.parent.is_dir():
        raise ArchiveExportError(f"cannot write {target}: the directory {target.parent} does not exist; create it first")
    clock = time.perf_counter()
    backend = get_backend(backend)
    store = object_store_for(backend.profile)
    keys: set[str] = set()
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        database = _ArchiveDatabase(work / DB_FILENAME)
        try:
            with transaction(backend.get_session()) as session:
                connection = session.connection()
                selection = _selection(connection, node_list, groups, all)
                _complete(connection, selection)
                _write_tables(connection, selection, database, keys, progress)
        finally:
            database.close()
        counts = dict(database.counts)
        partial = work / "archive.zip"
        objects = _write_zip(partial, work / DB_FILENAME, _metadata(counts, node_list, groups, all), keys, store, progress)
        os.replace(partial, target)
    except OSError as error:
        raise ArchiveExportError(f"cannot write the archive {target}: {error}") from error
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportReport(
        path=target, counts=counts, objects=objects, size_bytes=target.stat().st_size,
        seconds=time.perf_counter() - clock,
    )


def _write_zip(
    partial: Path,
    database: Path,
    metadata: dict[str, Any],
    keys: set[str],
    store: ObjectStore,
    progress: ProgressCallback | None,
) -> int:
    """Write the zip: metadata first, then the database, then the objects; returns the objects written.

    aiida-core refuses an archive whose nodes reference an object it lacks, so a missing object is an error.
    """
    written = 0
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESSION_LEVEL, allowZip64=True) as archive:
        archive.writestr(META_FILENAME, json.dumps(metadata), compress_type=zipfile.ZIP_STORED)
        archive.write(database, DB_FILENAME)
        archive.writestr(zipfile.ZipInfo(f"{REPO_FOLDER}/"), b"")
        for key in sorted(keys):
            try:
                handle = store.open(key)
            except NotExistent:
                raise ArchiveExportError(
                    f"repository object {key} referenced by an exported node is not in the profile's object store "
                    f"{store.root}; restore the object store or export nodes without files"
                ) from None
            with handle, archive.open(f"{REPO_FOLDER}/{key}", "w", force_zip64=True) as out:
                shutil.copyfileobj(handle, out, 1 << 20)
            written += 1
            report(progress, "export objects", written, len(keys))
    return written
