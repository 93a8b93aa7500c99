"""Key/value settings stored in ``db_dbsetting``, written with one atomic upsert each."""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, inspect, select
from sqlalchemy.engine import Engine

from . import session as session_module
from .exceptions import NotExistent, ValidationError
from .models import DbSetting, dialect_insert, utc_now
from .profile import ProfileLike

__all__ = ("Setting", "SqlaSettingsManager", "validate_setting_key", "validate_json_value")


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
    return key


def validate_json_value(value: Any, what: str = "value") -> None:
    """Raise :class:`ValidationError` unless ``value`` serialises to JSON (no NaN or infinity)."""
    try:
        session_module.json_dumps(value)
    except (TypeError, ValueError) as error:
        raise ValidationError(f"{what} is not valid JSON ({error}); use dicts, lists, strings, numbers, bools or None") from error


class SqlaSettingsManager:
    """Read and write settings of one profile's database (default: the current profile)."""

    table_name = "db_dbsetting"

    def __init__(self, profile: ProfileLike | None = None) -> None:
        self._profile = profile

    @property
    def engine(self) -> Engine:
        return session_module.get_engine(self._profile)

    def validate_table_existence(self) -> None:
        """Raise :class:`NotExistent` if the settings table does not exist (database not migrated)."""
        with self.engine.connect() as connection:
            if not inspect(connection).has_table(self.table_name):
                raise NotExistent(
                    f"the table {self.table_name!r} does not exist: the database is not initialised; "
                    "run SqlaBackendManager.migrate() or 'aiida-sqla storage migrate'"
                )

    def get(self, key: str) -> Setting:
        """The setting ``key``, or :class:`NotExistent`."""
        validate_setting_key(key)
        self.validate_table_existence()
        table = DbSetting.__table__
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table.c.key, table.c.val, table.c.description, table.c.time).where(table.c.key == key)
            ).one_or_none()
        if row is None:
            raise NotExistent(f"no setting with key {key!r}")
        return Setting(row.key, row.val, row.description, row.time)

    def set(self, key: str, value: Any, description: str | None = None) -> None:
        """Create or replace ``key`` in one statement; ``description=None`` keeps the stored description."""
        validate_setting_key(key)
        validate_json_value(value, f"value of setting {key!r}")
        self.validate_table_existence()
        engine = self.engine
        now = utc_now()
        statement = dialect_insert(engine.dialect.name, DbSetting).values(key=key, val=value, description=description or "", time=now)
        updates: dict[str, Any] = {"val": statement.excluded.val, "time": statement.excluded.time}
        if description is not None:
            updates["description"] = statement.excluded.description
        statement = statement.on_conflict_do_update(index_elements=["key"], set_=updates)
        with engine.connect().execution_options(**{session_module.SQLITE_BEGIN_OPTION: "IMMEDIATE"}) as connection:
            with connection.begin():
                connection.execute(statement)

    def delete(self, key: str) -> None:
        """Remove ``key``; :class:`NotExistent` if there is no such setting."""
        validate_setting_key(key)
        self.validate_table_existence()
        with self.engine.begin() as connection:
            result = connection.execute(delete(DbSetting.__table__).where(DbSetting.__table__.c.key == key))
        if result.rowcount == 0:
            raise NotExistent(f"no setting with key {key!r}")
