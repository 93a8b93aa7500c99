"""Exceptions raised by the storage backend; all derive from :class:`AiidaSqlaError`."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = (
    "AiidaSqlaError",
    "AuthenticationFailed",
    "BackupError",
    "ConfigurationError",
    "ConnectionLost",
    "CorruptStorage",
    "DatabaseMigrationError",
    "DatabaseNotFound",
    "DrawingTooLarge",
    "ForeignDatabase",
    "IncompatibleDatabaseSchema",
    "MissingDependency",
    "NotExistent",
    "OptionConflict",
    "PoolExhausted",
    "ReadOnlyStorage",
    "SchemaAhead",
    "SchemaBehind",
    "StorageFull",
    "StorageInUse",
    "StorageNotEmpty",
    "UnreachableStorage",
    "UnsupportedEngine",
    "ValidationError",
    "error_line",
)


class AiidaSqlaError(Exception):
    """Base class of every error this package raises on purpose."""


class NotExistent(AiidaSqlaError):
    """A requested entity (setting, node, profile, table) does not exist."""


class ValidationError(AiidaSqlaError, ValueError):
    """An argument or value failed validation; nothing was written."""


class OptionConflict(ValidationError):
    """The parts given to build something (e.g. a profile) contradict each other or miss a required one."""


class ConfigurationError(AiidaSqlaError):
    """A profile or its storage configuration is incomplete or wrong."""


class UnsupportedEngine(ConfigurationError):
    """A profile names a database engine this backend does not support (only SQLite and PostgreSQL)."""


class UnreachableStorage(AiidaSqlaError):
    """The database named by a profile cannot be reached."""


class ConnectionLost(UnreachableStorage):
    """A connection was lost while in use (server restart, terminated backend); its transaction was rolled back.

    ``callers_transaction`` is True when that transaction was one the caller had open around the failed call:
    the caller's earlier work in it is gone too, so only the caller can run it again. ``engine`` is the engine
    whose connection was lost.
    """

    callers_transaction: bool = False
    engine: Engine | None = None


class AuthenticationFailed(UnreachableStorage):
    """The database server rejected the profile's user name or password."""


class DatabaseNotFound(UnreachableStorage):
    """The server answers but the database the profile names does not exist on it."""


class PoolExhausted(UnreachableStorage):
    """Every connection of this process's pool stayed in use for the whole pool timeout; the message names the
    limits (``pool_size``, ``max_overflow``, ``pool_timeout`` of the profile's ``engine_kwargs``)."""


class ReadOnlyStorage(AiidaSqlaError):
    """The storage cannot be written, and the message says why: the profile's storage config says
    ``"read_only": true``, or the SQLite file or its directory is read-only (SQLite needs both, even to read a WAL
    database)."""


class StorageFull(AiidaSqlaError):
    """The disk holding the database is full; the statement that hit it was rolled back, nothing of it stays."""


class IncompatibleDatabaseSchema(AiidaSqlaError):
    """The database schema does not match the schema this code expects."""


class DatabaseMigrationError(AiidaSqlaError):
    """A migration could not be carried out.

    The revision that failed was rolled back; on PostgreSQL the revisions before it stay applied (each runs in a
    transaction of its own), on SQLite the whole migration is one transaction and nothing of it stays.
    """


class SchemaBehind(IncompatibleDatabaseSchema):
    """The database was never initialised, or its schema is older than the code: a migration is needed."""


class SchemaAhead(IncompatibleDatabaseSchema):
    """The database schema is newer than this code: upgrade the package."""


class CorruptStorage(IncompatibleDatabaseSchema):
    """The database cannot be read as a storage of this plugin (not a database, foreign tables, wrong generation)."""


class ForeignDatabase(CorruptStorage):
    """The database holds tables of another application and none of this plugin; it is left alone."""


def error_line(error: BaseException | None) -> str:
    """The first line of an error's message, from the driver's own error when SQLAlchemy wraps one."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


class DrawingTooLarge(AiidaSqlaError):
    """A requested picture would hold more nodes than allowed; nothing was drawn."""

    def __init__(self, message: str, node_count: int, max_nodes: int) -> None:
        super().__init__(message)
        self.node_count = node_count
        self.max_nodes = max_nodes


class MissingDependency(AiidaSqlaError):
    """An optional package or program a feature needs is not installed; the message says how to install it."""
class BackupError(AiidaSqlaError):
    """A backup is incomplete, damaged or cannot be made or restored; the message says what to do."""


class StorageInUse(AiidaSqlaError):
    """An operation needs the storage alone, but another process uses it."""


class StorageNotEmpty(AiidaSqlaError):
    """The target storage already holds data; copy into a new or freshly migrated profile, or merge explicitly."""
