"""Key/value settings stored in ``db_dbsetting``, written with one atomic upsert each."""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, bindparam, cast, delete, inspect, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine

from . import session as session_module
from .exceptions import NotExistent, ValidationError
from .models import DbSetting, dialect_insert, table_of, utc_now
from .profile import ProfileLike

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
    return key


def json_text(value: Any, what: str = "value") -> str:
    """Serialise a setting value so that it reads back equal, on SQLite and in PostgreSQL's JSONB.

    Only dicts with string keys, lists, strings, ints, finite floats, bools and None are accepted (a tuple or an
    int key would come back changed); strings may not hold NUL, which JSONB cannot store. An integral float is
    written with its digits and ``.0`` (``1e+20`` -> ``100000000000000000000.0``): JSONB keeps that scale, where
    it would give ``1e+20`` back as an int.
    """
    try:
        return _json_text(value)
    except (TypeError, ValueError, RecursionError) as error:
        raise ValidationError(
            f"{what} is not storable JSON ({error}); use dicts with string keys, lists, strings without NUL, "
            "numbers (no NaN or infinity), bools or None"
        ) from error


def _json_text(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("a string contains the NUL character")
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a JSON number")
        if value.is_integer() and abs(value) >= 1e16:
            return f"{int(value)}.0"
        return float.__repr__(value)
    if isinstance(value, list):
        return "[" + ", ".join(_json_text(item) for item in value) + "]"
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"dict key {key!r} is not a string")
            items.append(f"{_json_text(key)}: {_json_text(item)}")
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"{type(value).__name__} is not a JSON type")


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
        text_value = json_text(value, f"value of setting {key!r}")
        self.validate_table_existence()
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
        with engine.connect().execution_options(**session_module.sqlite_write_options(engine.dialect.name)) as connection:
            with connection.begin():
                connection.execute(statement)

    def delete(self, key: str) -> None:
        """Remove ``key``; :class:`NotExistent` if there is no such setting."""
        validate_setting_key(key)
        self.validate_table_existence()
        with self.engine.begin() as connection:
            table = table_of(DbSetting)
            result = connection.execute(delete(table).where(table.c.key == key))
        if result.rowcount == 0:
            raise NotExistent(f"no setting with key {key!r}")


def list_settings(engine: Engine) -> list[Setting]:
    """Every stored setting, ordered by key."""
    table = DbSetting.__table__
    with engine.connect() as connection:
        rows = connection.execute(
            select(table.c.key, table.c.val, table.c.description, table.c.time).order_by(table.c.key)
        ).all()
    return [Setting(row.key, row.val, row.description, row.time) for row in rows]
