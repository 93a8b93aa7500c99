"""Key/value settings stored in ``db_dbsetting``, written with one atomic upsert each."""
from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, bindparam, cast, delete, inspect, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from . import session as session_module
from .exceptions import NotExistent, ValidationError
from .models import DbSetting, dialect_insert, table_of, utc_now
from .profile import ProfileLike
from .values import check_text, json_text

#: Longest setting key the column holds.
MAX_KEY_LENGTH = 1024

__all__ = ("Setting", "SqlaSettingsManager", "json_text", "list_settings", "validate_setting_key")


@dataclass(frozen=True)
class Setting:
    """A stored setting."""

    key: str
    value: Any
    description: str
    time: datetime.datetime


def validate_setting_key(key: object) -> str:
    """Return ``key`` if it is a usable setting key, else raise :class:`ValidationError`."""
    if not isinstance(key, str):
        raise ValidationError(f"setting key must be a string, got {type(key).__name__}")
    if not key:
        raise ValidationError("setting key must not be empty")
    if "." in key:
        raise ValidationError(f"setting key {key!r} must not contain '.'; use '_' or '|' to structure keys")
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationError(f"setting key is longer than {MAX_KEY_LENGTH} characters ({len(key)})")
    check_text(key, "setting key")
    return key




_COLUMNS = DbSetting.__table__.c
#: Built once: a read then costs one cached statement, not a new expression tree per call.
_SELECT_ONE = select(_COLUMNS.key, _COLUMNS.val, _COLUMNS.description, _COLUMNS.time).where(
    _COLUMNS.key == bindparam("key")
)


class SqlaSettingsManager:
    """Read and write settings of one profile's database (default: the current profile).

    Every call runs in the caller's transaction on the profile's thread session when there is one (a setting
    written in a ``backend.transaction()`` block that fails is rolled back with it), else in its own.
    """

    table_name = "db_dbsetting"

    def __init__(self, profile: ProfileLike | None = None) -> None:
        self._profile = profile

    @property
    def engine(self) -> Engine:
        return session_module.get_engine(self._profile)

    def _transaction(self, write: bool = False) -> contextlib.AbstractContextManager[Session]:
        """The profile's thread session under the one transaction rule (joins the caller's transaction)."""
        return session_module.transaction(session_module.get_session_factory(self._profile)(), write=write)

    @session_module.idempotent_read
    def _statement(self, write: bool = False) -> contextlib.AbstractContextManager[Session | Connection]:
        """Where one statement of a call runs: the caller's transaction, else its own (one round trip on PostgreSQL)."""
        return session_module.single_statement(session_module.get_session_factory(self._profile)(), write=write)

    def validate_table_existence(self) -> None:
        """Raise :class:`NotExistent` if the settings table does not exist (database not migrated)."""
        with self._transaction() as session:
            if not inspect(session.connection()).has_table(self.table_name):
                raise NotExistent(
                    f"the table {self.table_name!r} does not exist: the database is not initialised; "
                    "run SqlaBackendManager.migrate() or 'aiida-sqla storage migrate'"
                )

    @contextlib.contextmanager
    def _missing_table_explained(self) -> Iterator[None]:
        """Turn a database error into :class:`NotExistent` when the settings table is missing.

        Reads and writes do not check the table first (that would double their round trips); only a failed
        statement looks.
        """
        try:
            yield
        except DBAPIError:
            self.validate_table_existence()
            raise

    @session_module.idempotent_read
    def get(self, key: str) -> Setting:
        """The setting ``key``, or :class:`NotExistent`."""
        validate_setting_key(key)
        with self._missing_table_explained(), self._statement() as target:
            row = target.execute(_SELECT_ONE, {"key": key}).one_or_none()
        if row is None:
            raise NotExistent(f"no setting with key {key!r}")
        return Setting(row.key, row.val, row.description, row.time)

    def set(self, key: str, value: Any, description: str | None = None) -> None:
        """Create or replace ``key`` in one statement; ``description=None`` keeps the stored description."""
        validate_setting_key(key)
        text_value = json_text(value, f"value of setting {key!r}")
        if description is not None:
            check_text(description, f"description of setting {key!r}")
        engine = self.engine
        # The value is bound as the JSON text made above, not re-serialised by the column type.
        val: Any = bindparam("val", text_value, type_=Text)
        if engine.dialect.name == "postgresql":
            val = cast(val, JSONB)
        statement = dialect_insert(engine.dialect.name, DbSetting).values(
            key=key, val=val, description=description or "", time=utc_now()
        )
        updates: dict[str, Any] = {"val": statement.excluded.val, "time": statement.excluded.time}
        if description is not None:
            updates["description"] = statement.excluded.description
        statement = statement.on_conflict_do_update(index_elements=["key"], set_=updates)
        with self._missing_table_explained(), self._statement(write=True) as target:
            target.execute(statement)

    def delete(self, key: str) -> None:
        """Remove ``key``; :class:`NotExistent` if there is no such setting."""
        validate_setting_key(key)
        self.validate_table_existence()
        table = table_of(DbSetting)
        with self._transaction(write=True) as session:
            result = session.connection().execute(delete(table).where(table.c.key == key))
        if result.rowcount == 0:
            raise NotExistent(f"no setting with key {key!r}")


@session_module.idempotent_read
def list_settings(engine: Engine) -> list[Setting]:
    """Every stored setting, ordered by key."""
    table = DbSetting.__table__
    with engine.connect() as connection:
        rows = connection.execute(
            select(table.c.key, table.c.val, table.c.description, table.c.time).order_by(table.c.key)
        ).all()
    return [Setting(row.key, row.val, row.description, row.time) for row in rows]
