"""Another profile's storage read as an archive: the importer's records, streamed from one read snapshot.

``copy_storage(..., merge=True)`` feeds a :class:`ProfileSource` to :func:`~._import.import_source`, so merging a
profile into a non-empty one follows exactly the import rules (same UUID: present; users by e-mail).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased
from sqlalchemy.sql import Executable

from ..models import DbAuthInfo, DbComment, DbComputer, DbGroup, DbGroupNode, DbLink, DbLog, DbNode, DbUser
from ..objectstore import ObjectStore
from ._export import referenced_object_keys
from ._source import (
    AuthInfoRecord,
    CommentRecord,
    ComputerRecord,
    GroupNodeRecord,
    GroupRecord,
    LinkRecord,
    LogRecord,
    NodeRecord,
    ObjectOpener,
    UserRecord,
)

__all__ = ("PROFILE_SOURCE_VERSION", "ProfileSource")

#: What a profile source reports as its format version: today's schema.
PROFILE_SOURCE_VERSION = "profile"


def _uuid(value: Any) -> str | None:
    return None if value is None else str(value)


class ProfileSource:
    """The entities of a storage, read through ``connection`` (keep one transaction open while reading)."""

    version = PROFILE_SOURCE_VERSION

    def __init__(self, connection: Connection, store: ObjectStore, batch_size: int) -> None:
        self._connection = connection
        self._store = store
        self._batch_size = batch_size

    def _rows(self, statement: Executable) -> Iterator[Any]:
        result = self._connection.execute(statement, execution_options={"stream_results": True, "yield_per": self._batch_size})
        for partition in result.partitions(self._batch_size):
            yield from partition

    def users(self) -> Iterator[UserRecord]:
        for row in self._rows(select(DbUser.__table__).order_by(DbUser.id)):
            yield UserRecord(email=row.email, first_name=row.first_name, last_name=row.last_name, institution=row.institution)

    def computers(self) -> Iterator[ComputerRecord]:
        for row in self._rows(select(DbComputer.__table__).order_by(DbComputer.id)):
            yield ComputerRecord(
                uuid=str(row.uuid), label=row.label, hostname=row.hostname, description=row.description,
                scheduler_type=row.scheduler_type, transport_type=row.transport_type, metadata=row._mapping["metadata"],
            )

    def authinfos(self) -> Iterator[AuthInfoRecord]:
        auth = DbAuthInfo.__table__
        statement = (
            select(DbComputer.uuid, DbUser.email, auth.c.enabled, auth.c.auth_params, auth.c.metadata)
            .join(DbComputer, DbComputer.id == auth.c.dbcomputer_id)
            .join(DbUser, DbUser.id == auth.c.aiidauser_id)
            .order_by(auth.c.id)
        )
        for row in self._rows(statement):
            yield AuthInfoRecord(computer_uuid=str(row[0]), user_email=row[1], enabled=row[2], auth_params=row[3], metadata=row[4])

    def nodes(self) -> Iterator[NodeRecord]:
        node = DbNode.__table__
        statement = (
            select(node, DbUser.email, DbComputer.uuid.label("computer_uuid"))
            .join(DbUser, DbUser.id == node.c.user_id)
            .outerjoin(DbComputer, DbComputer.id == node.c.dbcomputer_id)
            .order_by(node.c.id)
        )
        for row in self._rows(statement):
            yield NodeRecord(
                uuid=str(row.uuid), node_type=row.node_type, process_type=row.process_type, label=row.label,
                description=row.description, ctime=row.ctime, mtime=row.mtime, attributes=row.attributes,
                extras=row.extras, repository_metadata=row.repository_metadata, user_email=row.email,
                computer_uuid=_uuid(row.computer_uuid),
            )

    def links(self) -> Iterator[LinkRecord]:
        source, target = aliased(DbNode), aliased(DbNode)
        statement = (
            select(source.uuid, target.uuid, DbLink.type, DbLink.label)
            .join(source, source.id == DbLink.input_id)
            .join(target, target.id == DbLink.output_id)
            .order_by(DbLink.id)
        )
        for row in self._rows(statement):
            yield LinkRecord(input_uuid=str(row[0]), output_uuid=str(row[1]), type=row[2], label=row[3])

    def groups(self) -> Iterator[GroupRecord]:
        statement = select(DbGroup.__table__, DbUser.email).join(DbUser, DbUser.id == DbGroup.user_id).order_by(DbGroup.id)
        for row in self._rows(statement):
            yield GroupRecord(
                uuid=str(row.uuid), label=row.label, type_string=row.type_string, description=row.description,
                time=row.time, extras=row.extras, user_email=row.email,
            )

    def group_nodes(self) -> Iterator[GroupNodeRecord]:
        statement = (
            select(DbGroup.uuid, DbNode.uuid)
            .select_from(DbGroupNode)
            .join(DbGroup, DbGroup.id == DbGroupNode.dbgroup_id)
            .join(DbNode, DbNode.id == DbGroupNode.dbnode_id)
            .order_by(DbGroupNode.id)
        )
        for row in self._rows(statement):
            yield GroupNodeRecord(group_uuid=str(row[0]), node_uuid=str(row[1]))

    def comments(self) -> Iterator[CommentRecord]:
        statement = (
            select(DbComment.uuid, DbNode.uuid, DbUser.email, DbComment.content, DbComment.ctime, DbComment.mtime)
            .join(DbNode, DbNode.id == DbComment.dbnode_id)
            .join(DbUser, DbUser.id == DbComment.user_id)
            .order_by(DbComment.id)
        )
        for row in self._rows(statement):
            yield CommentRecord(uuid=str(row[0]), node_uuid=str(row[1]), user_email=row[2], content=row[3], ctime=row[4], mtime=row[5])

    def logs(self) -> Iterator[LogRecord]:
        statement = (
            select(DbLog.uuid, DbNode.uuid, DbLog.time, DbLog.loggername, DbLog.levelname, DbLog.message, DbLog.metadata_)
            .join(DbNode, DbNode.id == DbLog.dbnode_id)
            .order_by(DbLog.id)
        )
        for row in self._rows(statement):
            yield LogRecord(uuid=str(row[0]), node_uuid=str(row[1]), time=row[2], loggername=row[3], levelname=row[4],
                            message=row[5], metadata=row[6])

    def objects(self) -> Iterator[tuple[str, ObjectOpener]]:
        store = self._store
        for key in sorted(referenced_object_keys(self._connection, self._batch_size)):

            def opener(key: str = key) -> IO[bytes]:
                return store.open(key)

            yield key, opener

    def close(self) -> None:
        """Nothing to release: the caller owns the connection."""
