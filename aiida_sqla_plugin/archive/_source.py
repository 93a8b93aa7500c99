"""What an archive reader hands the importer: one record shape per entity, whatever the archive's format.

Every reader (the ``main_0000``/``main_0001`` zip layout, the legacy JSON layout 0.4 to 0.13) translates its
format into these records faithfully: field names, link types and node types of its version become today's, and
references become UUIDs (users by email). Readers do not repair: a null where today's schema wants a value stays
``None`` and the importer applies the default and reports a :class:`Repair`, the same way for every format.
Records are streamed (iterators), so memory is bounded by the importer's batch, not by the archive.
"""
from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypedDict

from ..exceptions import AiidaSqlaError

__all__ = (
    "ArchiveImportError",
    "ArchiveSource",
    "AuthInfoRecord",
    "CommentRecord",
    "ComputerRecord",
    "GroupNodeRecord",
    "GroupRecord",
    "InvalidArchiveEntry",
    "LinkRecord",
    "LogRecord",
    "NodeRecord",
    "ObjectOpener",
    "Repair",
    "UnsupportedArchive",
    "UserRecord",
)


class ArchiveImportError(AiidaSqlaError):
    """An archive could not be imported; the profile was left exactly as it was."""


class UnsupportedArchive(ArchiveImportError):
    """The file is not an archive of a format this version can read (not a zip, no metadata, unknown version)."""


class InvalidArchiveEntry(ArchiveImportError):
    """One entry of the archive is corrupt or refused; ``entity`` and ``identifier`` name it."""

    def __init__(self, entity: str, identifier: str, problem: str) -> None:
        self.entity = entity
        self.identifier = identifier
        self.problem = problem
        super().__init__(f"{entity} {identifier}: {problem}")


@dataclass(frozen=True)
class Repair:
    """Something the importer changed so that an old archive fits today's schema (as aiida-core does)."""

    entity: str
    identifier: str
    detail: str


class UserRecord(TypedDict):
    email: str
    first_name: str | None
    last_name: str | None
    institution: str | None


class ComputerRecord(TypedDict):
    uuid: str
    label: str | None
    hostname: str | None
    description: str | None
    scheduler_type: str | None
    transport_type: str | None
    metadata: dict[str, Any] | None


class AuthInfoRecord(TypedDict):
    #: None (here and in the other references below): the archive refers to a row it does not hold.
    computer_uuid: str | None
    user_email: str | None
    enabled: bool | None
    auth_params: dict[str, Any] | None
    metadata: dict[str, Any] | None


class NodeRecord(TypedDict):
    uuid: str
    node_type: str
    process_type: str | None
    label: str | None
    description: str | None
    ctime: datetime.datetime | None
    mtime: datetime.datetime | None
    attributes: dict[str, Any] | None
    extras: dict[str, Any] | None
    #: Today's layout: ``{"o": {name: {"k": sha256}}}`` for files, nested ``{"o": ...}`` for folders.
    repository_metadata: dict[str, Any] | None
    user_email: str | None
    computer_uuid: str | None


class LinkRecord(TypedDict):
    input_uuid: str | None
    output_uuid: str | None
    #: One of today's link types (``links.LINK_TYPES``).
    type: str
    label: str


class GroupRecord(TypedDict):
    uuid: str
    label: str
    type_string: str | None
    description: str | None
    time: datetime.datetime | None
    extras: dict[str, Any] | None
    user_email: str | None


class GroupNodeRecord(TypedDict):
    group_uuid: str
    node_uuid: str | None


class CommentRecord(TypedDict):
    uuid: str
    node_uuid: str | None
    user_email: str | None
    content: str | None
    ctime: datetime.datetime | None
    mtime: datetime.datetime | None


class LogRecord(TypedDict):
    uuid: str
    node_uuid: str | None
    time: datetime.datetime | None
    loggername: str | None
    levelname: str | None
    message: str | None
    metadata: dict[str, Any] | None


#: Opens one repository object for reading (binary); the importer hashes what it reads.
ObjectOpener = Callable[[], IO[bytes]]


class ArchiveSource(Protocol):
    """An opened archive. Datetimes are timezone-aware; UUIDs are lowercase dashed strings."""

    #: The archive's format version as written in its metadata (``"0.4"`` ... ``"0.13"``, ``"main_0001"``).
    version: str

    def users(self) -> Iterator[UserRecord]: ...
    def computers(self) -> Iterator[ComputerRecord]: ...
    def authinfos(self) -> Iterator[AuthInfoRecord]: ...
    def nodes(self) -> Iterator[NodeRecord]: ...
    def links(self) -> Iterator[LinkRecord]: ...
    def groups(self) -> Iterator[GroupRecord]: ...
    def group_nodes(self) -> Iterator[GroupNodeRecord]: ...
    def comments(self) -> Iterator[CommentRecord]: ...
    def logs(self) -> Iterator[LogRecord]: ...

    def objects(self) -> Iterator[tuple[str, ObjectOpener]]:
        """Every repository object the nodes reference, as ``(sha256 hex key, opener)``, each key once."""
        ...

    def close(self) -> None: ...
