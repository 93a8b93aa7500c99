"""Import an archive (any format :func:`open_archive` reads) into a profile, in one transaction.

Entities are matched by their identity (users by email, everything else by UUID): those already present are left
as they are, the others get new primary keys, and links, memberships, comments and logs are re-mapped by UUID.
Every repair aiida-core makes to old archives is made here, once for every format, and reported as a
:class:`Repair`. Rows are read and written in batches through :func:`bulk_insert` inside one
``backend.transaction(write=True)``, so an error anywhere leaves the database as it was; objects are written to
the object store before the commit and those this import added are removed again when it fails. Memory holds the
UUID -> pk maps and one batch.
"""
from __future__ import annotations

import datetime
import os
import uuid as uuid_module
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..backend import SqlaBackend, get_backend
from ..exceptions import ValidationError
from ..links import LINK_TYPES
from ..models import DbAuthInfo, DbComment, DbComputer, DbGroup, DbGroupNode, DbLink, DbLog, DbNode, DbUser, table_of
from ..objectstore import ObjectHashMismatch, object_store_for
from ..progress import ProgressCallback, report
from ..sql import id_select, string_select, uuid_select
from ._open import open_archive
from ._source import ArchiveImportError, ArchiveSource, InvalidArchiveEntry, Repair

__all__ = ("IMPORT_GROUP_TYPE", "ImportReport", "import_archive", "import_source")

#: Records read, checked and written per batch.
BATCH_SIZE = 10_000
#: The type of the group an import creates for ``group_label`` (aiida-core's import group type).
IMPORT_GROUP_TYPE = "core.import"
ENTITIES = ("users", "computers", "authinfos", "nodes", "links", "groups", "group_nodes", "comments", "logs", "objects")
_ROW = re.compile(r"^\w+ row (\d+): ")
T = TypeVar("T")


@dataclass
class ImportReport:
    """What an import did (or, with ``dry_run``, would do): per entity the rows new, present and skipped."""

    version: str
    dry_run: bool
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {e: {"new": 0, "present": 0, "skipped": 0} for e in ENTITIES})
    repairs: list[Repair] = field(default_factory=list)
    #: Entries left out by ``skip_invalid``, as the errors that would have refused the archive.
    skipped: list[InvalidArchiveEntry] = field(default_factory=list)
    group_label: str | None = None
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        """Whether the import added anything (False for a repeated import)."""
        return any(count["new"] for count in self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "counts": self.counts,
            "repairs": [{"entity": r.entity, "identifier": r.identifier, "detail": r.detail} for r in self.repairs],
            "skipped": [{"entity": s.entity, "identifier": s.identifier, "problem": s.problem} for s in self.skipped],
            "group_label": self.group_label,
            "seconds": round(self.seconds, 3),
        }


class _DryRun(Exception):
    """Raised at the end of a dry run to roll its transaction back."""


def _batches(records: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Importer:
    """The state of one import: the identity maps, the report and the options."""

    def __init__(self, backend: SqlaBackend, source: ArchiveSource, report_: ImportReport, *, skip_invalid: bool,
                 batch_size: int, progress: ProgressCallback | None) -> None:
        self.backend = backend
        self.source = source
        self.report = report_
        self.skip_invalid = skip_invalid
        self.batch_size = batch_size
        self.progress = progress
        self.connection: Connection = backend.get_session().connection()
        self.dialect = self.connection.dialect.name
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.users: dict[str, int] = {}
        self.computers: dict[str, int] = {}
        self.nodes: dict[str, int] = {}
        self.new_nodes = 0
        self.groups: dict[str, int] = {}
        self.new_groups: set[int] = set()

    # ---------------------------------------------------------------------------------------- helpers

    def invalid(self, entity: str, identifier: str, problem: str) -> None:
        """Refuse the archive, or with ``skip_invalid`` record the entry as skipped."""
        error = InvalidArchiveEntry(entity, identifier, problem)
        if not self.skip_invalid:
            raise error
        self.report.skipped.append(error)
        self.report.counts[_plural(entity)]["skipped"] += 1

    def repair(self, entity: str, identifier: str, detail: str) -> None:
        self.report.repairs.append(Repair(entity, identifier, detail))

    def default(self, record: Mapping[str, Any], key: str, value: Any, entity: str, identifier: str) -> Any:
        """``record[key]``, or ``value`` (reported as a repair) when it is None."""
        current = record.get(key)
        if current is not None:
            return current
        shown = "the import time" if isinstance(value, datetime.datetime) else repr(value)
        self.repair(entity, identifier, f"{key} was null, set to {shown}")
        return value

    def insert(self, model: type[Any], entity: str, rows: list[dict[str, Any]], names: list[str]) -> list[int]:
        """``bulk_insert`` the rows; a refused row is named by ``names`` (skipped or raised as invalid)."""
        while rows:
            try:
                return self.backend.bulk_insert(model, rows)
            except ValidationError as error:
                message = str(error)
                match = _ROW.match(message)
                if match is None:
                    raise InvalidArchiveEntry(entity, f"{names[0]} (or one of the {len(rows) - 1} after it)", message) from error
                index = int(match.group(1))
                self.invalid(entity, names[index], message[match.end():] + " (the value cannot be stored)")
                del rows[index], names[index]
        return []

    def existing(self, column: Any, key: Any, values: Iterable[str | None], uuids: bool = True) -> dict[str, int]:
        """``value -> pk`` for the values (UUIDs, or plain strings) already in the database, in one query.

        Either way the values are one bound parameter (:func:`sql.uuid_select`, :func:`sql.string_select`).
        """
        given = sorted({value for value in values if value is not None})
        if not given:
            return {}
        if not uuids:
            rows = self.connection.execute(select(column, key).where(column.in_(string_select(self.dialect, given))))
            return {str(value): int(pk) for value, pk in rows}
        parsed = []
        for value in given:
            try:
                parsed.append(uuid_module.UUID(value))
            except ValueError:
                continue  # not a UUID: cannot be stored either, the insert names it
        if not parsed:
            return {}
        rows = self.connection.execute(select(column, key).where(column.in_(uuid_select(self.dialect, parsed))))
        return {str(value): int(pk) for value, pk in rows}

    def node_pks(self, uuids: Iterable[str | None]) -> dict[str, int]:
        """pks of nodes in the archive or in the database, for the given UUIDs."""
        found = {uuid: self.nodes[uuid] for uuid in uuids if uuid is not None and uuid in self.nodes}
        unknown = {uuid for uuid in uuids if uuid is not None and uuid not in self.nodes}
        node = table_of(DbNode)
        found.update(self.existing(node.c.uuid, node.c.id, unknown))
        return found

    # ---------------------------------------------------------------------------------------- entities

    def import_users(self) -> None:
        user = table_of(DbUser)
        for position, batch in enumerate(_batches(self.source.users(), self.batch_size)):
            emails = []
            for index, record in enumerate(batch):
                if not record.get("email"):
                    self.invalid("user", f"at position {position * self.batch_size + index}", "has no email")
                else:
                    emails.append(record)
            self.users.update(self.existing(user.c.email, user.c.id, {r["email"] for r in emails}, uuids=False))
            rows, names = [], []
            for record in emails:
                email = record["email"]
                if email in self.users or email in names:
                    self.report.counts["users"]["present"] += 1
                    continue
                rows.append({
                    "email": email,
                    **{key: self.default(record, key, "", "user", email) for key in ("first_name", "last_name", "institution")},
                })
                names.append(email)
            for name, pk in zip(names, self.insert(DbUser, "user", rows, names)):
                self.users[name] = pk
                self.report.counts["users"]["new"] += 1

    def import_computers(self) -> None:
        computer = table_of(DbComputer)
        for batch in _batches(self.source.computers(), self.batch_size):
            self.computers.update(self.existing(computer.c.uuid, computer.c.id, {r["uuid"] for r in batch}))
            labels = {str(label) for label in self.connection.execute(select(computer.c.label)).scalars()}
            rows, names = [], []
            for record in batch:
                uuid = record["uuid"]
                if uuid in self.computers or uuid in names:
                    self.report.counts["computers"]["present"] += 1
                    continue
                label = self.default(record, "label", uuid, "computer", uuid)
                label = self.free_label(label, labels, "computer", uuid)
                labels.add(label)
                rows.append({
                    "uuid": uuid, "label": label, "metadata": self.default(record, "metadata", {}, "computer", uuid),
                    **{key: self.default(record, key, "", "computer", uuid)
                       for key in ("hostname", "description", "scheduler_type", "transport_type")},
                })
                names.append(uuid)
            for name, pk in zip(names, self.insert(DbComputer, "computer", rows, names)):
                self.computers[name] = pk
                self.report.counts["computers"]["new"] += 1

    def free_label(self, label: str, taken: set[str], entity: str, uuid: str) -> str:
        """``label``, or ``label_N`` (a repair) when another entity holds it already."""
        if label not in taken:
            return label
        number = 1
        while f"{label}_{number}" in taken:
            number += 1
        self.repair(entity, uuid, f"label {label!r} is taken by another {entity}, imported as {label}_{number}")
        return f"{label}_{number}"

    def import_authinfos(self) -> None:
        authinfo = table_of(DbAuthInfo)
        for position, batch in enumerate(_batches(self.source.authinfos(), self.batch_size)):
            rows, names = [], []
            pairs = set(tuple(row) for row in self.connection.execute(select(authinfo.c.aiidauser_id, authinfo.c.dbcomputer_id)))
            for index, record in enumerate(batch):
                where = f"at position {position * self.batch_size + index}"
                user, computer = self.users.get(record["user_email"] or ""), self.computers.get(record["computer_uuid"] or "")
                if record["user_email"] is None or record["computer_uuid"] is None:
                    self.repair("authinfo", where, "its user or computer was deleted; dropped")
                    continue
                if user is None or computer is None:
                    self.invalid("authinfo", where, "refers to a user or computer that is not in the archive")
                    continue
                if (user, computer) in pairs:
                    self.report.counts["authinfos"]["present"] += 1
                    continue
                pairs.add((user, computer))
                rows.append({
                    "aiidauser_id": user, "dbcomputer_id": computer,
                    "enabled": self.default(record, "enabled", True, "authinfo", where),
                    "auth_params": self.default(record, "auth_params", {}, "authinfo", where),
                    "metadata": self.default(record, "metadata", {}, "authinfo", where),
                })
                names.append(where)
            self.report.counts["authinfos"]["new"] += len(self.insert(DbAuthInfo, "authinfo", rows, names))

    def import_nodes(self) -> None:
        node = table_of(DbNode)
        done = 0
        for batch in _batches(self.source.nodes(), self.batch_size):
            self.nodes.update(self.existing(node.c.uuid, node.c.id, {r["uuid"] for r in batch if r["uuid"] not in self.nodes}))
            rows, names, seen = [], [], set()
            for record in batch:
                uuid = record["uuid"]
                if uuid in self.nodes or uuid in seen:
                    self.report.counts["nodes"]["present"] += 1
                    continue
                seen.add(uuid)
                row = self.node_row(record)
                if row is not None:
                    rows.append(row)
                    names.append(uuid)
            for name, pk in zip(names, self.insert(DbNode, "node", rows, names)):
                self.nodes[name] = pk
                self.report.counts["nodes"]["new"] += 1
            done += len(batch)
            report(self.progress, "import nodes", done, None)

    def node_row(self, record: Mapping[str, Any]) -> dict[str, Any] | None:
        uuid = record["uuid"]
        if record.get("node_type") is None:
            self.invalid("node", uuid, "has no node_type")
            return None
        user = self.users.get(record.get("user_email") or "")
        if user is None:
            self.invalid("node", uuid, f"its user {record.get('user_email')!r} is not in the archive")
            return None
        computer = None
        if record.get("computer_uuid") is not None:
            computer = self.computers.get(record["computer_uuid"])
            if computer is None:
                self.invalid("node", uuid, f"its computer {record['computer_uuid']} is not in the archive")
                return None
        ctime = self.default(record, "ctime", self.now, "node", uuid)
        return {
            "uuid": uuid, "node_type": record["node_type"], "process_type": record.get("process_type"),
            "label": self.default(record, "label", "", "node", uuid),
            "description": self.default(record, "description", "", "node", uuid),
            "ctime": ctime, "mtime": self.default(record, "mtime", ctime, "node", uuid),
            "attributes": record.get("attributes"), "extras": record.get("extras"),
            "repository_metadata": self.default(record, "repository_metadata", {}, "node", uuid),
            "user_id": user, "dbcomputer_id": computer,
        }

    def import_links(self) -> None:
        link = table_of(DbLink)
        done = 0
        for position, batch in enumerate(_batches(self.source.links(), self.batch_size)):
            pks = self.node_pks({u for r in batch for u in (r["input_uuid"], r["output_uuid"])})
            candidates = []
            for index, record in enumerate(batch):
                where = f"at position {position * self.batch_size + index}"
                for side in ("input", "output"):
                    uuid = record[f"{side}_uuid"]  # type: ignore[literal-required]
                    if uuid is None or uuid not in pks:
                        self.invalid("link", f"{where} ({side} {uuid or 'missing'})", f"link with unknown {side} node")
                        break
                else:
                    if record["type"] not in LINK_TYPES:
                        self.invalid("link", where, f"unknown link type {record['type']!r}; known: {', '.join(LINK_TYPES)}")
                    else:
                        candidates.append((pks[record["input_uuid"]], pks[record["output_uuid"]], record["type"], record["label"] or "", where))  # type: ignore[index]
            outputs = {c[1] for c in candidates}
            present = set()
            if outputs:
                statement = select(link.c.input_id, link.c.output_id, link.c.type, link.c.label).where(
                    link.c.output_id.in_(id_select(self.dialect, outputs))
                )
                present = {tuple(row) for row in self.connection.execute(statement)}
            rows, names = [], []
            for input_id, output_id, kind, label, where in candidates:
                if (input_id, output_id, kind, label) in present:
                    self.report.counts["links"]["present"] += 1
                    continue
                present.add((input_id, output_id, kind, label))
                rows.append({"input_id": input_id, "output_id": output_id, "type": kind, "label": label})
                names.append(where)
            self.report.counts["links"]["new"] += len(self.insert(DbLink, "link", rows, names))
            done += len(batch)
            report(self.progress, "import links", done, None)

    def import_groups(self) -> None:
        group = table_of(DbGroup)
        for batch in _batches(self.source.groups(), self.batch_size):
            self.groups.update(self.existing(group.c.uuid, group.c.id, {r["uuid"] for r in batch}))
            rows: list[dict[str, Any]] = []
            names: list[str] = []
            seen: set[str] = set()
            for record in batch:
                uuid = record["uuid"]
                if uuid in self.groups or uuid in seen:
                    self.report.counts["groups"]["present"] += 1
                    continue
                seen.add(uuid)
                user = self.users.get(record.get("user_email") or "")
                if user is None:
                    self.invalid("group", uuid, f"its user {record.get('user_email')!r} is not in the archive")
                    continue
                type_string = self.default(record, "type_string", "core", "group", uuid)
                label = self.default(record, "label", uuid, "group", uuid)
                taken = {str(v) for v in self.connection.execute(
                    select(group.c.label).where(group.c.type_string == type_string, group.c.label.like(f"{label}%"))
                ).scalars()} | {r["label"] for r in rows if r["type_string"] == type_string}
                rows.append({
                    "uuid": uuid, "label": self.free_label(label, taken, "group", uuid), "type_string": type_string,
                    "description": self.default(record, "description", "", "group", uuid),
                    "time": self.default(record, "time", self.now, "group", uuid),
                    "extras": self.default(record, "extras", {}, "group", uuid), "user_id": user,
                })
                names.append(uuid)
            for name, pk in zip(names, self.insert(DbGroup, "group", rows, names)):
                self.groups[name] = pk
                self.new_groups.add(pk)
                self.report.counts["groups"]["new"] += 1

    def import_members(self) -> None:
        for batch in _batches(self.source.group_nodes(), self.batch_size):
            pks = self.node_pks({r["node_uuid"] for r in batch})
            pairs = []
            for record in batch:
                group = self.groups.get(record["group_uuid"])
                node = pks.get(record["node_uuid"] or "")
                where = f"{record['group_uuid']} member {record['node_uuid']}"
                if group is None:
                    self.invalid("group_node", where, "its group is not in the archive")
                elif node is None:
                    self.repair("group_node", where, "the member node is not in the archive; dropped")
                else:
                    pairs.append((group, node))
            self.add_members(pairs)

    def add_members(self, pairs: list[tuple[int, int]]) -> None:
        """Store the (group pk, node pk) memberships not stored yet."""
        member = table_of(DbGroupNode)
        old = {pair for pair in pairs if pair[0] not in self.new_groups}
        present = set()
        if old:
            statement = select(member.c.dbgroup_id, member.c.dbnode_id).where(
                member.c.dbnode_id.in_(id_select(self.dialect, {node for _, node in old})),
                member.c.dbgroup_id.in_(id_select(self.dialect, {group for group, _ in old})),
            )
            present = {tuple(row) for row in self.connection.execute(statement)}
        rows = []
        for pair in pairs:
            if pair in present:
                self.report.counts["group_nodes"]["present"] += 1
                continue
            present.add(pair)
            rows.append({"dbgroup_id": pair[0], "dbnode_id": pair[1]})
        self.report.counts["group_nodes"]["new"] += len(self.backend.bulk_insert(DbGroupNode, rows))

    def import_import_group(self, label: str) -> None:
        """Put every node of the archive into the group ``label`` of type ``core.import`` (created if needed)."""
        group = table_of(DbGroup)
        pk = self.connection.execute(
            select(group.c.id).where(group.c.label == label, group.c.type_string == IMPORT_GROUP_TYPE)
        ).scalar()
        if pk is None:
            user = next(iter(self.users.values()), None) or self.connection.execute(select(table_of(DbUser).c.id).limit(1)).scalar()
            if user is None:
                raise ArchiveImportError(f"cannot create the group {label!r}: the profile has no user; create one first")
            (pk,) = self.backend.bulk_insert(DbGroup, [{"label": label, "type_string": IMPORT_GROUP_TYPE, "user_id": user}])
            self.new_groups.add(pk)
            self.report.counts["groups"]["new"] += 1
        for batch in _batches((pk for pk in self.nodes.values() if pk > 0), self.batch_size):
            self.add_members([(pk, node) for node in batch])

    def import_comments(self) -> None:
        self._import_node_entities("comment", DbComment, self.source.comments(), self.comment_row)

    def import_logs(self) -> None:
        self._import_node_entities("log", DbLog, self.source.logs(), self.log_row)

    def _import_node_entities(self, entity: str, model: type[Any], records: Iterable[Mapping[str, Any]], build: Any) -> None:
        table = table_of(model)
        plural = _plural(entity)
        for batch in _batches(records, self.batch_size):
            present = self.existing(table.c.uuid, table.c.id, {r["uuid"] for r in batch})
            pks = self.node_pks({r["node_uuid"] for r in batch})
            rows, names, seen = [], [], set()
            for record in batch:
                uuid = record["uuid"]
                if uuid in present or uuid in seen:
                    self.report.counts[plural]["present"] += 1
                    continue
                seen.add(uuid)
                if record["node_uuid"] is None:
                    self.repair(entity, uuid, "its node was deleted; dropped")
                    continue
                node = pks.get(record["node_uuid"])
                if node is None:
                    self.invalid(entity, uuid, f"its node {record['node_uuid']} is not in the archive")
                    continue
                row = build(record, node)
                if row is not None:
                    rows.append(row)
                    names.append(uuid)
            self.report.counts[plural]["new"] += len(self.insert(model, entity, rows, names))

    def comment_row(self, record: Mapping[str, Any], node: int) -> dict[str, Any] | None:
        uuid = record["uuid"]
        user = self.users.get(record.get("user_email") or "")
        if user is None:
            self.invalid("comment", uuid, f"its user {record.get('user_email')!r} is not in the archive")
            return None
        ctime = self.default(record, "ctime", self.now, "comment", uuid)
        return {
            "uuid": uuid, "dbnode_id": node, "user_id": user, "ctime": ctime,
            "mtime": self.default(record, "mtime", ctime, "comment", uuid),
            "content": self.default(record, "content", "", "comment", uuid),
        }

    def log_row(self, record: Mapping[str, Any], node: int) -> dict[str, Any]:
        uuid = record["uuid"]
        return {
            "uuid": uuid, "dbnode_id": node, "time": self.default(record, "time", self.now, "log", uuid),
            **{key: self.default(record, key, "", "log", uuid) for key in ("loggername", "levelname", "message")},
            "metadata": self.default(record, "metadata", {}, "log", uuid),
        }


def _plural(entity: str) -> str:
    return {"group_node": "group_nodes"}.get(entity, f"{entity}s")


def _import_objects(importer: _Importer, added: list[str], dry_run: bool) -> None:
    """Copy the archive's objects into the object store; ``added`` collects the keys this import wrote."""
    store = object_store_for(importer.backend)
    counts = importer.report.counts["objects"]
    done = 0
    for key, opener in importer.source.objects():
        done += 1
        if store.has(key):
            counts["present"] += 1
            continue
        if dry_run:
            counts["new"] += 1
            continue
        try:
            with opener() as stream:
                store.put(stream, expected_key=key)
        except ObjectHashMismatch as error:
            importer.invalid("object", key, str(error))
            continue
        added.append(key)
        counts["new"] += 1
        report(importer.progress, "import objects", done, None)


def import_source(
    source: ArchiveSource,
    backend: SqlaBackend | None = None,
    *,
    group_label: str | None = None,
    progress: ProgressCallback | None = None,
    dry_run: bool = False,
    skip_invalid: bool = False,
    objects: bool = True,
    batch_size: int = BATCH_SIZE,
) -> ImportReport:
    """Import an opened archive; returns what was (``dry_run``: would be) imported.

    Runs in the caller's transaction when there is one, else in its own. Raises :class:`InvalidArchiveEntry`
    naming the first refused entry (unless ``skip_invalid``, which imports the rest and lists what it skipped);
    then the database and the object store are as they were.
    """
    if batch_size < 1:
        raise ValidationError(f"batch_size must be at least 1, got {batch_size}")
    clock = time.perf_counter()
    backend = get_backend(backend)
    result = ImportReport(version=source.version, dry_run=dry_run, group_label=group_label)
    added: list[str] = []
    try:
        with backend.transaction(write=True):
            importer = _Importer(backend, source, result, skip_invalid=skip_invalid, batch_size=batch_size, progress=progress)
            importer.import_users()
            importer.import_computers()
            importer.import_authinfos()
            importer.import_nodes()
            importer.import_links()
            importer.import_groups()
            importer.import_members()
            if group_label is not None:
                importer.import_import_group(group_label)
            importer.import_comments()
            importer.import_logs()
            if objects:
                _import_objects(importer, added, dry_run)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    except BaseException:
        store = object_store_for(backend) if added else None
        for key in added:
            store.remove(key)  # type: ignore[union-attr]
        raise
    result.seconds = time.perf_counter() - clock
    return result


def import_archive(path: str | os.PathLike[str], backend: SqlaBackend | None = None, **options: Any) -> ImportReport:
    """Open the archive at ``path`` (see :func:`open_archive`), import it (see :func:`import_source`), close it."""
    source = open_archive(path)
    try:
        return import_source(source, backend, **options)
    finally:
        source.close()
