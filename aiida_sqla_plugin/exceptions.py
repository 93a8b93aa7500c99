"""Exceptions raised by the storage backend; all derive from :class:`AiidaSqlaError`."""
from __future__ import annotations

__all__ = (
    "AiidaSqlaError",
    "BackupError",
    "ConfigurationError",
    "CorruptStorage",
    "DatabaseMigrationError",
    "IncompatibleDatabaseSchema",
    "NotExistent",
    "SchemaAhead",
    "SchemaBehind",
    "StorageInUse",
    "UnreachableStorage",
    "ValidationError",
)


class AiidaSqlaError(Exception):
    """Base class of every error this package raises on purpose."""


class NotExistent(AiidaSqlaError):
    """A requested entity (setting, node, profile, table) does not exist."""


class ValidationError(AiidaSqlaError, ValueError):
    """An argument or value failed validation; nothing was written."""


class ConfigurationError(AiidaSqlaError):
    """A profile or its storage configuration is incomplete or wrong."""


class UnreachableStorage(AiidaSqlaError):
    """The database named by a profile cannot be reached."""


class IncompatibleDatabaseSchema(AiidaSqlaError):
    """The database schema does not match the schema this code expects."""


class DatabaseMigrationError(AiidaSqlaError):
    """A migration could not be carried out; the database was left unchanged."""


class SchemaBehind(IncompatibleDatabaseSchema):
    """The database was never initialised, or its schema is older than the code: a migration is needed."""


class SchemaAhead(IncompatibleDatabaseSchema):
    """The database schema is newer than this code: upgrade the package."""


class CorruptStorage(IncompatibleDatabaseSchema):
    """The database cannot be read as a storage of this plugin (not a database, foreign tables, wrong generation)."""


class BackupError(AiidaSqlaError):
    """A backup is incomplete, damaged or cannot be made or restored; the message says what to do."""


class StorageInUse(AiidaSqlaError):
    """An operation needs the storage alone, but another process uses it."""
