"""Schema management of a profile's database: versions, validation and migration (AiiDA 1.x contract)."""
from __future__ import annotations

import contextlib
import enum
import importlib.resources
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import exc, inspect, select
from sqlalchemy.engine import Connection, Transaction

from . import session as session_module
from .exceptions import (
    AiidaSqlaError,
    CorruptStorage,
    DatabaseMigrationError,
    ForeignDatabase,
    IncompatibleDatabaseSchema,
    NotExistent,
    ReadOnlyStorage,
    SchemaAhead,
    SchemaBehind,
    UnreachableStorage,
    ValidationError,
    error_line,
)
from .models import Base, DbSetting, dialect_insert, utc_now
from .profile import ProfileLike, database_url, describe_url, is_read_only, sqlite_file
from .settings import Setting, SqlaSettingsManager

__all__ = (
    "SCHEMA_GENERATION_CODE",
    "SchemaReport",
    "SchemaState",
    "Setting",
    "SqlaBackendManager",
    "SqlaSettingsManager",
)

#: Generation of the schema this code writes; bumped only when migrations are squashed.
SCHEMA_GENERATION_CODE = "1"
#: Setting that holds the database's schema generation.
SCHEMA_GENERATION_KEY = "schema_generation"
GENERATION_DESCRIPTION = "generation of the database schema"
#: For each generation, the revision a database must have reached before it can be reset to it.
SCHEMA_VERSION_RESET = {"1": "main_0002"}
#: Key of the PostgreSQL advisory lock that serialises migrations of one database.
MIGRATION_LOCK_KEY = 0x41_69_69_44_41_53_51_4C  # "AiiDASQL"

RevisionCallback = Callable[[str | None, str], None]


class SchemaState(str, enum.Enum):
    """Where a database stands with respect to the code's schema."""

    COMPATIBLE = "compatible"
    NOT_INITIALISED = "not_initialised"
    BEHIND = "behind"
    AHEAD = "ahead"
    UNREACHABLE = "unreachable"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class SchemaReport:
    """The schema state of one profile's database, with the message and fix for anything but compatible."""

    profile: str
    location: str
    state: SchemaState
    code_revision: str
    database_revision: str | None
    code_generation: str
    database_generation: str | None
    message: str
    #: The exact exception class of a failure (e.g. :class:`AuthenticationFailed`); else the state's class.
    error_type: type[AiidaSqlaError] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Stable JSON-ready keys."""
        return {
            "profile": self.profile,
            "location": self.location,
            "state": self.state.value,
            "code_revision": self.code_revision,
            "database_revision": self.database_revision,
            "code_generation": self.code_generation,
            "database_generation": self.database_generation,
            "message": self.message,
        }

    def error(self) -> IncompatibleDatabaseSchema | UnreachableStorage | None:
        """The exception matching the state (None when compatible)."""
        kind = _STATE_ERRORS.get(self.state)
        if kind is None:
            return None
        return (self.error_type or kind)(self.message)  # type: ignore[return-value]


_STATE_ERRORS: dict[SchemaState, type[IncompatibleDatabaseSchema] | type[UnreachableStorage]] = {
    SchemaState.NOT_INITIALISED: SchemaBehind,
    SchemaState.BEHIND: SchemaBehind,
    SchemaState.AHEAD: SchemaAhead,
    SchemaState.UNREACHABLE: UnreachableStorage,
    SchemaState.CORRUPT: CorruptStorage,
}


def migrations_directory() -> str:
    """Where the installed alembic tree lives."""
    return str(importlib.resources.files("aiida_sqla_plugin.migrations"))


def new_alembic_config() -> Config:
    """An alembic :class:`Config` pointing at the installed migrations, with no connection attached.

    Its output goes to the ``sys.stdout`` of the moment (alembic's default is the one of import time), so that
    redirections such as a CLI test runner's see it.
    """
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", migrations_directory())
    return config


class SqlaBackendManager:
    """Manage schema versions and migrations of ``profile`` (default: the current profile)."""

    def __init__(self, profile: ProfileLike | None = None) -> None:
        self._profile = profile

    @property
    def profile(self) -> ProfileLike:
        return self._profile or session_module.get_current_profile()

    # -- environment -------------------------------------------------------------------------------------

    def get_settings_manager(self) -> SqlaSettingsManager:
        """The settings manager of the same database."""
        return SqlaSettingsManager(self._profile)

    def load_backend_environment(self, profile: ProfileLike, validate_schema: bool = True, **kwargs: Any) -> None:
        """Make ``profile`` current, check that its database answers and, by default, that its schema fits."""
        self._profile = profile
        self._load_backend_environment()
        if validate_schema:
            self.validate_schema(profile)

    def _load_backend_environment(self) -> None:
        session_module.reset_session(self.profile)
        session_module.check_connection(self.profile)

    def reset_backend_environment(self) -> None:
        """Close this profile's sessions and engine; the next use builds new ones."""
        session_module.reset_session(self.profile)

    # -- versions ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def alembic_config(self, connection: Connection | None = None) -> Iterator[Config]:
        """Yield an alembic Config whose ``attributes['connection']`` is a live connection in a transaction.

        The transaction commits when the block ends without an error and rolls back otherwise.
        """
        config = new_alembic_config()
        if connection is not None:
            config.attributes["connection"] = connection
            yield config
            return
        with session_module.get_engine(self.profile).begin() as new_connection:
            config.attributes["connection"] = new_connection
            yield config

    @staticmethod
    def _script() -> ScriptDirectory:
        return ScriptDirectory.from_config(new_alembic_config())

    def get_schema_version_code(self) -> str:
        """The head revision of the migrations shipped with this code."""
        head = self._script().get_current_head()
        assert head is not None, "the migrations folder has no revision"
        return head

    def get_schema_version_reset(self, schema_generation_code: str) -> str:
        """The revision a database must have reached to be reset to ``schema_generation_code``."""
        try:
            return SCHEMA_VERSION_RESET[schema_generation_code]
        except KeyError:
            raise ValidationError(
                f"unknown schema generation {schema_generation_code!r}; known: {', '.join(SCHEMA_VERSION_RESET)}"
            ) from None

    @staticmethod
    def _database_revision(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    def get_schema_version_database(self) -> str | None:
        """The revision stamped in the database, or None when it was never initialised."""
        with session_module.get_engine(self.profile).connect() as connection:
            return self._database_revision(connection)

    def set_schema_version_database(self, version: str) -> None:
        """Stamp ``version`` without running migrations; an unknown revision changes nothing."""
        self._require_known_revision(version)
        with self.alembic_config() as config:
            command.stamp(config, version, purge=True)

    def _require_known_revision(self, version: str) -> None:
        try:
            known = self._script().get_revision(version)
        except CommandError as error:
            known, reason = None, str(error)
        else:
            reason = "no such revision"
        if known is None:
            raise DatabaseMigrationError(
                f"cannot stamp revision {version!r} ({reason}); known revisions: {', '.join(self._known_revisions())}"
            )

    def _known_revisions(self) -> list[str]:
        return [script.revision for script in self._script().walk_revisions()]

    def is_database_schema_ahead(self) -> bool:
        """True only when the database holds a revision this code does not know."""
        version = self.get_schema_version_database()
        return version is not None and version not in self._known_revisions()

    def get_schema_generation_database(self) -> str:
        """The database's schema generation (setting ``schema_generation``, ``'1'`` when absent)."""
        try:
            return str(self.get_settings_manager().get(SCHEMA_GENERATION_KEY).value)
        except NotExistent:
            return "1"

    def set_schema_generation_database(self, generation: str) -> None:
        """Record the database's schema generation."""
        self.get_settings_manager().set(SCHEMA_GENERATION_KEY, generation, GENERATION_DESCRIPTION)

    # -- validation --------------------------------------------------------------------------------------

    def validate_schema(self, profile: ProfileLike | None = None) -> None:
        """Raise the error of :meth:`schema_report` (with the fix) unless the database matches this code.

        :class:`SchemaBehind` (migrate), :class:`SchemaAhead` (upgrade the package), :class:`CorruptStorage`
        (all three are :class:`IncompatibleDatabaseSchema`) or :class:`UnreachableStorage`.
        """
        if profile is not None:
            self._profile = profile
        error = self.schema_report().error()
        if error is not None:
            raise error

    def schema_report(self) -> SchemaReport:
        """Inspect the database without changing it (a missing SQLite file is not created)."""
        profile = self.profile
        name = profile.name
        location = describe_url(database_url(profile))
        code_revision = self.get_schema_version_code()

        def report(
            state: SchemaState,
            message: str,
            revision: str | None = None,
            generation: str | None = None,
            error_type: type[AiidaSqlaError] | None = None,
        ) -> SchemaReport:
            return SchemaReport(
                name, location, state, code_revision, revision, SCHEMA_GENERATION_CODE, generation, message, error_type
            )

        migrate = f"run 'aiida-sqla -p {name} storage migrate' or SqlaBackendManager.migrate()"
        path = sqlite_file(profile)
        if path is not None and not path.exists():
            if not path.parent.is_dir():
                return report(
                    SchemaState.UNREACHABLE,
                    f"Profile {name!r}: cannot reach the {location} (directory {path.parent} does not exist); "
                    "create the directory or fix the profile's URL",
                )
            return report(SchemaState.NOT_INITIALISED, f"Profile {name!r}: the database is not initialised; {migrate}")
        try:
            session_module.check_connection(profile)
        except UnreachableStorage as error:
            return report(SchemaState.UNREACHABLE, str(error), error_type=type(error))
        except CorruptStorage as error:
            return report(SchemaState.CORRUPT, str(error), error_type=type(error))
        except exc.DatabaseError:
            pass  # not a database at all: reported as corrupt below
        try:
            with session_module.get_engine(profile).connect() as connection:
                revision = self._database_revision(connection)
                tables = set(inspect(connection).get_table_names())
                generation = self._database_generation(connection, tables)
        except CorruptStorage as error:
            return report(SchemaState.CORRUPT, str(error), error_type=type(error))
        except UnreachableStorage as error:
            return report(SchemaState.UNREACHABLE, str(error), error_type=type(error))
        except exc.DatabaseError as error:
            reason = error_line(error)
            return report(
                SchemaState.CORRUPT,
                f"Profile {name!r}: the {location} cannot be read ({reason}); restore it from a backup or point the "
                "profile at another database",
            )
        ours = tables & set(Base.metadata.tables)
        if tables - {"alembic_version"} and not ours:
            return report(SchemaState.CORRUPT, self._foreign_message(tables), revision, error_type=ForeignDatabase)
        if revision is None:
            foreign = ours
            if foreign:
                return report(
                    SchemaState.CORRUPT,
                    f"Profile {name!r}: the database has tables ({', '.join(sorted(foreign))}) but no schema revision; "
                    "use an empty database, or stamp its revision with 'aiida-sqla alembic stamp REVISION'",
                )
            return report(SchemaState.NOT_INITIALISED, f"Profile {name!r}: the database is not initialised; {migrate}")
        if revision not in self._known_revisions():
            return report(
                SchemaState.AHEAD,
                f"Profile {name!r}: the database schema {revision} is ahead of this code ({code_revision}); "
                "upgrade aiida-sqla-plugin (pip install -U aiida-sqla-plugin)",
                revision,
                generation,
            )
        if revision != code_revision:
            return report(
                SchemaState.BEHIND,
                f"Profile {name!r}: the database schema {revision} is behind the code ({code_revision}); "
                f"back up the database, then {migrate}",
                revision,
                generation,
            )
        if generation != SCHEMA_GENERATION_CODE:
            return report(
                SchemaState.CORRUPT,
                f"Profile {name!r}: database schema generation {generation} does not match the code's "
                f"({SCHEMA_GENERATION_CODE}); use the aiida-sqla-plugin release that wrote this database",
                revision,
                generation,
            )
        return report(
            SchemaState.COMPATIBLE, f"Profile {name!r}: the database schema {revision} matches the code", revision, generation
        )

    def _foreign_message(self, tables: set[str]) -> str:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        return (
            f"Profile {self.profile.name!r}: the database holds tables of another application ({shown}) and none of "
            "aiida-sqla-plugin; it is left alone: point the profile at an empty database or one of this plugin"
        )

    @staticmethod
    def _database_generation(connection: Connection, tables: set[str]) -> str | None:
        if DbSetting.__tablename__ not in tables:
            return None
        value = connection.execute(select(DbSetting.val).where(DbSetting.key == SCHEMA_GENERATION_KEY)).scalar_one_or_none()
        return "1" if value is None else str(value)

    # -- migration ---------------------------------------------------------------------------------------

    def migrate(self, on_revision: RevisionCallback | None = None, lock_timeout: float | None = None) -> list[str]:
        """Bring the database to the code's head revision and return the revisions applied.

        A new database is built with ``create_all`` and stamped; an older one is upgraded revision by revision,
        each in its own transaction on PostgreSQL. Concurrent migrations of one database are serialised (an
        advisory lock held in a transaction of a second connection on PostgreSQL, safe behind a transaction pooler;
        one immediate transaction on SQLite). Refused on a ``read_only`` profile. Never downgrades. ``lock_timeout``
        (seconds) gives up waiting for another process's migration with :class:`DatabaseMigrationError`; by default
        PostgreSQL waits for as long as it takes, SQLite for its busy timeout.
        """
        if is_read_only(self.profile):
            raise ReadOnlyStorage(
                f"Profile {self.profile.name!r} has \"read_only\": true in its storage config and is never migrated; "
                "migrate through a profile of the same database without that flag."
            )
        session_module.check_connection(self.profile)
        return self._migrate_database_version(on_revision, lock_timeout)

    def _migrate_database_version(
        self, on_revision: RevisionCallback | None = None, lock_timeout: float | None = None
    ) -> list[str]:
        engine = session_module.get_engine(self.profile)
        applied: list[str] = []

        def record(*, step: MigrationInfo, **_: Any) -> None:
            applied.append(step.up_revision_id or "")
            if on_revision is not None:
                on_revision(step.down_revision_ids[0] if step.down_revision_ids else None, step.up_revision_id or "")

        if engine.dialect.name == "sqlite":
            with engine.connect().execution_options(**session_module.sqlite_write_options("sqlite")) as connection:
                transaction = self._begin_sqlite_migration(connection, lock_timeout)
                with transaction:
                    self._migrate_locked(connection, record)
        else:
            # The lock lives in a transaction of its own connection, open for the whole migration, while the
            # revisions commit one by one on the other: nothing outlives a transaction, so a transaction pooler
            # (PgBouncer, pool_mode=transaction) keeps both on one server connection each, and a migrator that dies
            # releases the lock with its connection.
            with engine.connect() as holder, engine.connect() as connection:
                self._take_migration_lock(holder, lock_timeout)
                try:
                    self._migrate_locked(connection, record)
                finally:
                    self._release_migration_lock(holder)
        return applied

    def _begin_sqlite_migration(self, connection: Connection, lock_timeout: float | None) -> Transaction:
        """Begin the one immediate transaction of a SQLite migration, waiting ``lock_timeout`` s (default: the
        busy timeout) for another process's write lock."""
        wait_ms = session_module.SQLITE_BUSY_TIMEOUT_MS if lock_timeout is None else max(1, round(lock_timeout * 1000))
        raw = connection.connection.dbapi_connection
        assert raw is not None
        raw.execute(f"PRAGMA busy_timeout={wait_ms}")  # on the driver connection: executing through SQLAlchemy would begin
        try:
            return connection.begin()
        except exc.OperationalError as error:
            raise DatabaseMigrationError(
                f"Profile {self.profile.name!r}: another process kept the database locked for longer than "
                f"{wait_ms / 1000:g} s ({error.orig}); wait for its migration (or write) to finish and run the "
                "migration again."
            ) from error
        finally:
            raw.execute(f"PRAGMA busy_timeout={session_module.SQLITE_BUSY_TIMEOUT_MS}")

    def _take_migration_lock(self, holder: Connection, lock_timeout: float | None) -> None:
        """Transaction-level advisory lock in ``holder``'s (left open) transaction; a second migrator waits here."""
        try:
            if lock_timeout is not None:
                holder.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, round(lock_timeout * 1000))}")
            holder.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            if lock_timeout is not None:
                holder.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
        except exc.OperationalError as error:
            holder.rollback()
            raise DatabaseMigrationError(
                f"Profile {self.profile.name!r}: another process is migrating this database and did not finish "
                f"within {lock_timeout} s; wait for it, then run the migration again."
            ) from error

    @staticmethod
    def _release_migration_lock(holder: Connection) -> None:
        try:
            holder.rollback()  # ends the lock's transaction, and the lock with it
        except exc.DBAPIError:
            holder.invalidate()  # a broken connection ends its server session, and the lock with it

    def _migrate_locked(self, connection: Connection, record: Callable[..., None]) -> None:
        """Migrate while holding the migration lock; ``connection`` may already be in a transaction (SQLite)."""
        outer_transaction = connection.in_transaction()
        head = self.get_schema_version_code()
        current = self._database_revision(connection)
        tables = set(inspect(connection).get_table_names())
        existing = tables & set(Base.metadata.tables)
        if not outer_transaction:
            connection.commit()  # so that alembic runs each revision in a transaction of its own
        if tables - {"alembic_version"} and not existing:
            raise ForeignDatabase(self._foreign_message(tables))
        if current is None:
            if existing:
                raise DatabaseMigrationError(
                    f"Profile {self.profile.name!r}: the database has tables ({', '.join(sorted(existing))}) but no "
                    "schema revision, so it was not created by aiida-sqla-plugin; use an empty database, or stamp "
                    "its revision with 'aiida-sqla alembic stamp REVISION' if you know it."
                )
            with contextlib.nullcontext() if outer_transaction else connection.begin():
                self._create_schema(connection, head)
            record(step=_NewDatabaseStep(head))
            return
        if current not in self._known_revisions():
            raise SchemaAhead(
                f"Profile {self.profile.name!r}: the database schema {current} is ahead of this code ({head}); "
                "refusing to migrate (never downgrades); upgrade aiida-sqla-plugin."
            )
        if current == head:
            return
        config = new_alembic_config()
        config.attributes["connection"] = connection
        config.attributes["on_version_apply"] = record
        try:
            command.upgrade(config, "head")
        except Exception as error:
            kept = (
                "nothing of this migration was kept (one transaction)"
                if outer_transaction
                else "the revision that failed was rolled back, the ones before it stay applied"
            )
            raise DatabaseMigrationError(
                f"Profile {self.profile.name!r}: migration from {current} failed ({error}); {kept}; fix the cause "
                "and run the migration again."
            ) from error

    def _create_schema(self, connection: Connection, head: str) -> None:
        Base.metadata.create_all(connection)
        MigrationContext.configure(connection).stamp(self._script(), head)
        connection.execute(
            dialect_insert(connection.dialect.name, DbSetting)
            .values(key=SCHEMA_GENERATION_KEY, val=SCHEMA_GENERATION_CODE, description=GENERATION_DESCRIPTION, time=utc_now())
            .on_conflict_do_nothing(index_elements=["key"])
        )


class _NewDatabaseStep:
    """Stands in for alembic's MigrationInfo when a new database is created at head in one step."""

    def __init__(self, head: str) -> None:
        self.up_revision_id = head
        self.down_revision_ids: tuple[str, ...] = ()
