"""Reader of aiida-core 2.x's zip layout (``metadata.json``, ``db.sqlite3``, ``repo/<sha256>``), ``main_0000``/``main_0001``.

Both versions share one table layout; ``main_0000`` still allows nulls that aiida-core's ``main_0000a`` migration
replaces by defaults and deletes comments and authinfos whose node, user or computer was deleted. This reader
yields those nulls as ``None`` (the importer repairs them, as for every format). ``db.sqlite3`` is extracted to a
temporary file and read in batches of :data:`BATCH_SIZE` rows, ordered by primary key; references become UUIDs
(users by email) through joins in the archive database.
"""
from __future__ import annotations

import datetime
import json
import shutil
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ._source import (
    AuthInfoRecord,
    CommentRecord,
    ComputerRecord,
    GroupNodeRecord,
    GroupRecord,
    InvalidArchiveEntry,
    LinkRecord,
    LogRecord,
    NodeRecord,
    ObjectOpener,
    UnsupportedArchive,
    UserRecord,
)

__all__ = ("BATCH_SIZE", "ZIP_VERSIONS", "ZipArchiveSource")

#: The zip layout versions this reader understands.
ZIP_VERSIONS = ("main_0000", "main_0001")
DB_FILENAME = "db.sqlite3"
REPO_PREFIX = "repo/"
#: Rows fetched from the archive database per query.
BATCH_SIZE = 5_000


def _time(value: Any, entity: str, identifier: str) -> datetime.datetime | None:
    """An archive time (naive UTC text, or aware ISO text) as an aware datetime."""
    if value is None:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidArchiveEntry(entity, identifier, f"the time {value!r} is not an ISO date and time") from None
    return parsed.replace(tzinfo=datetime.timezone.utc) if parsed.tzinfo is None else parsed


def _json(value: Any, entity: str, identifier: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (TypeError, ValueError) as error:
        raise InvalidArchiveEntry(entity, identifier, f"holds a value that is not JSON ({error})") from None


def _uuid(value: Any) -> Any:
    return None if value is None else str(value).lower()


class ZipArchiveSource:
    """An opened ``main_0000``/``main_0001`` archive; :meth:`close` removes the extracted database."""

    def __init__(self, archive: zipfile.ZipFile, metadata: dict[str, Any]) -> None:
        self.version: str = str(metadata.get("export_version"))
        self._archive = archive
        try:
            info = archive.getinfo(DB_FILENAME)
        except KeyError:
            raise UnsupportedArchive(
                f"{archive.filename}: a {self.version} archive must hold {DB_FILENAME}, this one does not; "
                "the file is incomplete, export it again"
            ) from None
        self._work = Path(tempfile.mkdtemp(prefix="aiida-sqla-import-"))
        try:
            path = self._work / DB_FILENAME
            with archive.open(info) as source, path.open("wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self._db.execute("SELECT count(*) FROM db_dbnode").fetchone()
        except (sqlite3.DatabaseError, zipfile.BadZipFile, OSError) as error:
            shutil.rmtree(self._work, ignore_errors=True)
            raise UnsupportedArchive(
                f"{archive.filename}: its {DB_FILENAME} cannot be read as an archive database ({error}); "
                "the file is damaged, export it again"
            ) from error

    def _rows(self, query: str) -> Iterator[sqlite3.Row]:
        """The rows of ``query`` in batches by primary key.

        ``query`` selects from one table aliased ``m`` (its ``m.id`` as ``pk``) and joins others; the key
        condition goes on ``m.id`` itself, so each batch is an index range, not a scan.
        """
        self._db.row_factory = sqlite3.Row
        last = -1
        while True:
            rows = self._db.execute(f"{query} WHERE m.id > ? ORDER BY m.id LIMIT ?", (last, BATCH_SIZE)).fetchall()
            if not rows:
                return
            yield from rows
            last = rows[-1]["pk"]

    def users(self) -> Iterator[UserRecord]:
        for row in self._rows("SELECT m.id AS pk, email, first_name, last_name, institution FROM db_dbuser m"):
            yield UserRecord(
                email=row["email"], first_name=row["first_name"], last_name=row["last_name"],
                institution=row["institution"],
            )

    def computers(self) -> Iterator[ComputerRecord]:
        query = "SELECT m.id AS pk, uuid, label, hostname, description, scheduler_type, transport_type, metadata FROM db_dbcomputer m"
        for row in self._rows(query):
            uuid = _uuid(row["uuid"])
            yield ComputerRecord(
                uuid=uuid, label=row["label"], hostname=row["hostname"], description=row["description"],
                scheduler_type=row["scheduler_type"], transport_type=row["transport_type"],
                metadata=_json(row["metadata"], "computer", uuid),
            )

    def authinfos(self) -> Iterator[AuthInfoRecord]:
        query = (
            "SELECT m.id AS pk, c.uuid AS computer_uuid, u.email AS user_email, m.enabled, m.auth_params, m.metadata "
            "FROM db_dbauthinfo m LEFT JOIN db_dbcomputer c ON c.id = m.dbcomputer_id "
            "LEFT JOIN db_dbuser u ON u.id = m.aiidauser_id"
        )
        for row in self._rows(query):
            where = f"at position {row['pk']}"
            yield AuthInfoRecord(
                computer_uuid=_uuid(row["computer_uuid"]), user_email=row["user_email"],
                enabled=None if row["enabled"] is None else bool(row["enabled"]),
                auth_params=_json(row["auth_params"], "authinfo", where), metadata=_json(row["metadata"], "authinfo", where),
            )

    def nodes(self) -> Iterator[NodeRecord]:
        query = (
            "SELECT m.id AS pk, m.uuid, m.node_type, m.process_type, m.label, m.description, m.ctime, m.mtime, "
            "m.attributes, m.extras, m.repository_metadata, u.email AS user_email, c.uuid AS computer_uuid "
            "FROM db_dbnode m LEFT JOIN db_dbuser u ON u.id = m.user_id LEFT JOIN db_dbcomputer c ON c.id = m.dbcomputer_id"
        )
        for row in self._rows(query):
            uuid = _uuid(row["uuid"])
            yield NodeRecord(
                uuid=uuid, node_type=row["node_type"], process_type=row["process_type"], label=row["label"],
                description=row["description"], ctime=_time(row["ctime"], "node", uuid),
                mtime=_time(row["mtime"], "node", uuid), attributes=_json(row["attributes"], "node", uuid),
                extras=_json(row["extras"], "node", uuid),
                repository_metadata=_json(row["repository_metadata"], "node", uuid),
                user_email=row["user_email"], computer_uuid=_uuid(row["computer_uuid"]),
            )

    def links(self) -> Iterator[LinkRecord]:
        query = (
            "SELECT m.id AS pk, i.uuid AS input_uuid, o.uuid AS output_uuid, m.type, m.label FROM db_dblink m "
            "LEFT JOIN db_dbnode i ON i.id = m.input_id LEFT JOIN db_dbnode o ON o.id = m.output_id"
        )
        for row in self._rows(query):
            # A link to a node missing from the archive keeps None there; the importer refuses it.
            yield LinkRecord(
                input_uuid=_uuid(row["input_uuid"]), output_uuid=_uuid(row["output_uuid"]), type=row["type"],
                label=row["label"],
            )

    def groups(self) -> Iterator[GroupRecord]:
        query = (
            "SELECT m.id AS pk, m.uuid, m.label, m.type_string, m.description, m.time, m.extras, u.email AS user_email "
            "FROM db_dbgroup m LEFT JOIN db_dbuser u ON u.id = m.user_id"
        )
        for row in self._rows(query):
            uuid = _uuid(row["uuid"])
            yield GroupRecord(
                uuid=uuid, label=row["label"], type_string=row["type_string"], description=row["description"],
                time=_time(row["time"], "group", uuid), extras=_json(row["extras"], "group", uuid),
                user_email=row["user_email"],
            )

    def group_nodes(self) -> Iterator[GroupNodeRecord]:
        query = (
            "SELECT m.id AS pk, g.uuid AS group_uuid, n.uuid AS node_uuid FROM db_dbgroup_dbnodes m "
            "JOIN db_dbgroup g ON g.id = m.dbgroup_id LEFT JOIN db_dbnode n ON n.id = m.dbnode_id"
        )
        for row in self._rows(query):
            yield GroupNodeRecord(group_uuid=_uuid(row["group_uuid"]), node_uuid=_uuid(row["node_uuid"]))

    def comments(self) -> Iterator[CommentRecord]:
        query = (
            "SELECT m.id AS pk, m.uuid, n.uuid AS node_uuid, u.email AS user_email, m.content, m.ctime, m.mtime "
            "FROM db_dbcomment m LEFT JOIN db_dbnode n ON n.id = m.dbnode_id LEFT JOIN db_dbuser u ON u.id = m.user_id"
        )
        for row in self._rows(query):
            uuid = _uuid(row["uuid"])
            yield CommentRecord(
                uuid=uuid, node_uuid=_uuid(row["node_uuid"]), user_email=row["user_email"], content=row["content"],
                ctime=_time(row["ctime"], "comment", uuid), mtime=_time(row["mtime"], "comment", uuid),
            )

    def logs(self) -> Iterator[LogRecord]:
        query = (
            "SELECT m.id AS pk, m.uuid, n.uuid AS node_uuid, m.time, m.loggername, m.levelname, m.message, m.metadata "
            "FROM db_dblog m LEFT JOIN db_dbnode n ON n.id = m.dbnode_id"
        )
        for row in self._rows(query):
            uuid = _uuid(row["uuid"])
            yield LogRecord(
                uuid=uuid, node_uuid=_uuid(row["node_uuid"]), time=_time(row["time"], "log", uuid),
                loggername=row["loggername"], levelname=row["levelname"], message=row["message"],
                metadata=_json(row["metadata"], "log", uuid),
            )

    def objects(self) -> Iterator[tuple[str, ObjectOpener]]:
        archive = self._archive
        for info in archive.infolist():
            name = info.filename
            if name.startswith(REPO_PREFIX) and not info.is_dir() and "/" not in name[len(REPO_PREFIX):]:

                def opener(info: zipfile.ZipInfo = info) -> IO[bytes]:
                    return archive.open(info)

                yield name[len(REPO_PREFIX):], opener

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self._work, ignore_errors=True)
        self._archive.close()
