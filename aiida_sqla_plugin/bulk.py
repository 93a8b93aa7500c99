"""Validated bulk insertion of plain-dict rows through the drivers' fast paths.

:func:`bulk_insert` checks every row in Python (known fields, required fields, types, lengths, JSON, aware
times), fills the models' own column defaults, checks foreign keys with one set-based query per foreign-key
column, then writes through the backend session's connection, under the one transaction rule
(:func:`aiida_sqla_plugin.session.transaction`): inside the caller's transaction (a ``backend.transaction()``
block, or one begun with ``session.begin()``) it works in a savepoint and the caller commits; otherwise it commits
by itself. Its rows are visible to the session right after it returns, and several calls in one block make one
atomic import. The session's pending ORM objects are flushed first, so rows may refer to them.

* PostgreSQL: ids are reserved with ``nextval`` over ``generate_series`` and the rows are streamed with
  ``COPY ... FROM STDIN`` (text format) through psycopg2's ``copy_expert`` on the session connection's cursor;
  a call that grows the table by 10% or more (and at least :data:`ANALYZE_MIN_ROWS` rows) then runs
  ``ANALYZE`` on it, so that queries right after a large load get good plans;
* SQLite: a transaction of its own begins ``IMMEDIATE`` (it holds the write lock), ids follow ``max(id)`` and
  the rows go through the driver's ``executemany``.

Any invalid row raises :class:`~aiida_sqla_plugin.exceptions.ValidationError` and nothing of the call is stored.
"""
from __future__ import annotations

import datetime
import functools
import io
import uuid as uuid_module
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, Integer, String, Table, exists, func, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect

from .closure import insert_closed_links
from .exceptions import ValidationError, error_line
from .models import (
    Base,
    DbAuthInfo,
    DbComment,
    DbComputer,
    DbGroup,
    DbGroupNode,
    DbLink,
    DbLog,
    DbNode,
    DbUser,
    UTCDateTime,
    table_of,
)
from .progress import ProgressCallback, report
from .session import transaction
from .sql import id_select
from .values import TextProblem, text_problem

if TYPE_CHECKING:
    from .backend import SqlaBackend

__all__ = ("BULK_ENTITIES", "bulk_insert", "insert_plain_rows")

#: The entities :func:`bulk_insert` accepts, by table name.
BULK_ENTITIES: dict[str, type[Base]] = {
    model.__tablename__: model
    for model in (DbNode, DbLink, DbGroupNode, DbUser, DbComputer, DbComment, DbLog, DbGroup, DbAuthInfo)
}
#: Rows per ``COPY`` statement (PostgreSQL) or ``executemany`` call (SQLite); progress is reported per chunk.
CHUNK_SIZE = 20_000

#: PostgreSQL: a call inserting at least this many rows, and 10% of the table, analyses the table afterwards.
ANALYZE_MIN_ROWS = 1_000

_MISSING: Any = object()
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_COPY_NULL = "\\N"


class _Invalid(Exception):
    """A value failed a check; the caller adds the row index and field name."""


@dataclass(frozen=True)
class _Field:
    """One insertable (non primary key) column of an entity."""

    key: str
    column_name: str
    kind: str
    nullable: bool
    default: Callable[[Any], Any] | None
    max_length: int | None
    references: Table | None
    column_type: Any


@dataclass(frozen=True)
class _Plan:
    """What :func:`bulk_insert` needs to know about one entity."""

    table: Table
    pk_name: str
    fields: tuple[_Field, ...]
    positions: Mapping[str, int]


def _kind(column_type: Any) -> str:
    if isinstance(column_type, UTCDateTime):
        return "datetime"
    if isinstance(column_type, JSON):
        return "json"
    if isinstance(column_type, Boolean):
        return "bool"
    if isinstance(column_type, Integer):
        return "int"
    if isinstance(column_type, String):
        return "str"
    if column_type.python_type is uuid_module.UUID:
        return "uuid"
    raise TypeError(f"bulk_insert cannot handle columns of type {column_type!r}")  # pragma: no cover


@functools.cache
def _plan(model: type[Base]) -> _Plan:
    table = table_of(model)
    (pk,) = table.primary_key.columns
    fields: list[_Field] = []
    positions: dict[str, int] = {}
    for prop in model.__mapper__.column_attrs:
        column = prop.columns[0]
        if column is pk:
            continue
        default = column.default
        foreign = next(iter(column.foreign_keys), None)
        positions[prop.key] = positions[column.name] = len(fields)
        fields.append(
            _Field(
                key=prop.key,
                column_name=column.name,
                kind=_kind(column.type),
                nullable=bool(column.nullable),
                default=default.arg if default is not None and default.is_callable else None,
                max_length=getattr(column.type, "length", None),
                references=foreign.column.table if foreign is not None else None,
                column_type=column.type,
            )
        )
    return _Plan(table, pk.name, tuple(fields), positions)


def _resolve(entity: type[Base] | str) -> type[Base]:
    if isinstance(entity, str):
        model = BULK_ENTITIES.get(entity)
    else:
        model = entity if isinstance(entity, type) and BULK_ENTITIES.get(getattr(entity, "__tablename__", "")) is entity else None
    if model is None:
        accepted = ", ".join(f"{m.__name__} ({name!r})" for name, m in BULK_ENTITIES.items())
        raise ValidationError(f"bulk_insert cannot store {entity!r}; accepted entities: {accepted}")
    return model


def _copy_escape(value: str) -> str:
    if "\\" in value or "\n" in value or "\r" in value or "\t" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _converter(field: _Field, dialect: Dialect, for_copy: bool) -> Callable[[Any], Any]:
    """A function checking one value of ``field`` and turning it into what the driver (or ``COPY`` text) takes.

    It raises :class:`_Invalid` for a bad value; None passes only where the column is nullable.
    """
    bind = field.column_type.dialect_impl(dialect).bind_processor(dialect)
    nullable, max_length = field.nullable, field.max_length
    null = _COPY_NULL if for_copy else None

    def check_none() -> Any:
        if not nullable:
            raise _Invalid("may not be None")
        return null

    if field.kind == "int":

        def convert_int(value: Any) -> Any:
            if type(value) is not int:
                if value is None:
                    return check_none()
                if not isinstance(value, int) or isinstance(value, bool):
                    raise _Invalid(f"must be an integer, got {type(value).__name__} {value!r}")
                value = int(value)
            return str(value) if for_copy else value

        return convert_int

    if field.kind == "str":

        def convert_str(value: Any) -> Any:
            if not isinstance(value, str):
                if value is None:
                    return check_none()
                raise _Invalid(f"must be a string, got {type(value).__name__}")
            if max_length is not None and len(value) > max_length:
                raise _Invalid(f"is longer than {max_length} characters ({len(value)})")
            problem = text_problem(value)
            if problem is not None:
                raise _Invalid(problem)
            return _copy_escape(value) if for_copy else value

        return convert_str

    if field.kind == "bool":

        def convert_bool(value: Any) -> Any:
            if not isinstance(value, bool):
                if value is None:
                    return check_none()
                raise _Invalid(f"must be a bool, got {type(value).__name__}")
            return ("t" if value else "f") if for_copy else value

        return convert_bool

    if field.kind == "datetime":

        def convert_datetime(value: Any) -> Any:
            if not isinstance(value, datetime.datetime):
                if value is None:
                    return check_none()
                raise _Invalid(f"must be a timezone-aware datetime, got {type(value).__name__}")
            if value.tzinfo is None or value.utcoffset() is None:
                raise _Invalid(f"is a naive datetime ({value.isoformat()}); give times with a timezone")
            bound = bind(value) if bind is not None else value
            return bound.isoformat() if for_copy else bound

        return convert_datetime

    if field.kind == "uuid":

        def convert_uuid(value: Any) -> Any:
            if not isinstance(value, uuid_module.UUID):
                if value is None:
                    return check_none()
                try:
                    value = uuid_module.UUID(str(value))
                except ValueError:
                    raise _Invalid(f"is not a UUID: {value!r}") from None
            if for_copy:
                return str(value)
            return bind(value) if bind is not None else value

        return convert_uuid

    # JSON columns hold dicts; None (only where nullable) is stored as JSON null, as the ORM stores it.
    empty = "{}"

    def convert_json(value: Any) -> Any:
        if value is None:
            check_none()
        elif not isinstance(value, dict):
            raise _Invalid(f"must be a dict, got {type(value).__name__}")
        elif not value:
            return empty
        try:
            serialised: str = bind(value) if bind is not None else value
        except ValidationError as error:
            cause = error.__cause__
            raise _Invalid(str(cause) if isinstance(cause, TextProblem) else f"is not valid JSON ({cause})") from None
        except (TypeError, ValueError) as error:
            raise _Invalid(f"is not valid JSON ({error})") from None
        return _copy_escape(serialised) if for_copy else serialised

    return convert_json


def _prepare(
    plan: _Plan, rows: Sequence[Mapping[str, Any]], dialect: Dialect, for_copy: bool
) -> tuple[list[Any], dict[int, list[Any]]]:
    """Check and convert every row; returns the converted rows and, per foreign-key field, its values."""
    fields = plan.fields
    converters = [_converter(field, dialect, for_copy) for field in fields]
    defaults = [field.default for field in fields]
    positions = plan.positions
    width = len(fields)
    foreign: dict[int, list[Any]] = {position: [] for position, field in enumerate(fields) if field.references is not None}
    foreign_items = list(foreign.items())
    prepared: list[Any] = []
    append = prepared.append
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValidationError(f"{plan.table.name} row {index}: expected a mapping, got {type(row).__name__}")
        values: list[Any] = [_MISSING] * width
        for key, value in row.items():
            position = positions.get(key)
            if position is None:
                raise ValidationError(_unknown_field_message(plan, index, key))
            if values[position] is not _MISSING:
                raise ValidationError(
                    f"{plan.table.name} row {index}: field {fields[position].key!r} is given twice "
                    f"(as {fields[position].key!r} and {fields[position].column_name!r})"
                )
            values[position] = value
        for position in range(width):
            value = values[position]
            if value is _MISSING:
                default = defaults[position]
                if default is not None:
                    value = default(None)
                elif fields[position].nullable:
                    value = None
                else:
                    raise ValidationError(
                        f"{plan.table.name} row {index}: required field {fields[position].key!r} is missing"
                    )
                values[position] = value
            try:
                values[position] = converters[position](value)
            except _Invalid as error:
                raise ValidationError(f"{plan.table.name} row {index}: field {fields[position].key!r} {error}") from None
        for position, collected in foreign_items:
            collected.append(row.get(fields[position].key, row.get(fields[position].column_name)))
        append("\t".join(values) if for_copy else values)
    return prepared, foreign


def _unknown_field_message(plan: _Plan, index: int, key: Any) -> str:
    known = ", ".join(field.key for field in plan.fields)
    extra = f" ({plan.pk_name!r} is assigned by the database)" if key == plan.pk_name else ""
    return f"{plan.table.name} row {index}: unknown field {key!r}{extra}; the fields are: {known}"


def _check_foreign_keys(connection: Connection, plan: _Plan, foreign: dict[int, list[Any]]) -> None:
    """One set-based query per foreign-key column: raise for the first row whose value has no target."""
    dialect_name = connection.dialect.name
    for position, values in foreign.items():
        field = plan.fields[position]
        target = field.references
        assert target is not None
        distinct = {value for value in values if value is not None}
        if not distinct:
            continue
        given = id_select(dialect_name, distinct).subquery("given")
        target_id = target.c.id
        missing_query = select(given.c.id).where(~exists().where(target_id == given.c.id))
        missing = {int(value) for value in connection.execute(missing_query).scalars()}
        if missing:
            index = next(i for i, value in enumerate(values) if value in missing)
            raise ValidationError(
                f"{plan.table.name} row {index}: field {field.key!r} = {values[index]} does not exist in "
                f"{target.name} ({len(missing)} unknown value(s) in all)"
            )


def _copy_lines(
    connection: Connection, table: str, columns: Sequence[str], lines: Sequence[str],
    progress: ProgressCallback | None, description: str,
) -> None:
    """PostgreSQL: stream ``COPY`` text lines (tab-separated, escaped, no newline) in chunks of :data:`CHUNK_SIZE`."""
    total = len(lines)
    quoted = ", ".join(f'"{name}"' for name in columns)
    statement = f"COPY {table} ({quoted}) FROM STDIN"
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        for start in range(0, total, CHUNK_SIZE):
            stop = min(start + CHUNK_SIZE, total)
            buffer = io.StringIO()
            buffer.writelines(f"{lines[i]}\n" for i in range(start, stop))
            buffer.seek(0)
            cursor.copy_expert(statement, buffer, size=1 << 16)
            report(progress, description, stop, total)
    finally:
        cursor.close()


def _insert_many(
    connection: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
    progress: ProgressCallback | None, description: str,
) -> None:
    """SQLite: one driver ``executemany`` per chunk of :data:`CHUNK_SIZE` rows."""
    total = len(rows)
    quoted = ", ".join(f'"{name}"' for name in columns)
    statement = f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' * len(columns))})"
    for start in range(0, total, CHUNK_SIZE):
        stop = min(start + CHUNK_SIZE, total)
        connection.exec_driver_sql(statement, [tuple(rows[i]) for i in range(start, stop)])
        report(progress, description, stop, total)


def _copy_text(value: Any) -> str:
    if type(value) is int:
        return str(value)
    return _COPY_NULL if value is None else _copy_escape(str(value))


def _copy_line(row: Sequence[Any]) -> str:
    if all(type(value) is int for value in row):  # the common case (closure rows): no escaping, no nulls
        return "\t".join(map(str, row))
    return "\t".join(map(_copy_text, row))


def insert_plain_rows(connection: Connection, table: Table, rows: Sequence[Sequence[Any]]) -> None:
    """Write rows of every column of ``table`` (in column order) through the dialect's fast path, unchecked.

    For tables :func:`bulk_insert` does not take (``db_dbpath``) and rows that are valid already, such as the
    integer rows of another storage of the same schema. Values must be integers, strings or None.
    """
    if not rows:
        return
    columns = [column.name for column in table.columns]
    if connection.dialect.name == "postgresql":
        lines = [_copy_line(row) for row in rows]
        _copy_lines(connection, table.name, columns, lines, None, f"store {table.name}")
    else:
        _insert_many(connection, table.name, columns, rows, None, f"store {table.name}")


def _store_postgresql(
    connection: Connection, plan: _Plan, lines: list[str], progress: ProgressCallback | None, description: str,
    given_ids: Sequence[int] | None,
) -> list[int]:
    total = len(lines)
    table = plan.table.name
    sequence = connection.execute(
        select(func.pg_get_serial_sequence(table, plan.pk_name))
    ).scalar_one()
    if given_ids is None:
        ids = sorted(
            connection.execute(
                text("SELECT nextval(CAST(:sequence AS regclass)) FROM generate_series(1, :n)"),
                {"sequence": sequence, "n": total},
            ).scalars()
        )
    else:
        ids = list(given_ids)
    columns = [plan.pk_name, *(field.column_name for field in plan.fields)]
    _copy_lines(connection, table, columns, [f"{ids[i]}\t{lines[i]}" for i in range(total)], progress, description)
    if given_ids is not None:
        # the next id the database assigns follows the largest one stored
        connection.execute(
            text(f"SELECT setval(CAST(:sequence AS regclass), (SELECT max({plan.pk_name}) FROM {table}))"),
            {"sequence": sequence},
        )
    _analyze_if_grown(connection, table, total)
    return ids


def _analyze_if_grown(connection: Connection, table: str, inserted: int) -> None:
    """``ANALYZE`` the table when this call grew it by 10% or more (as autovacuum would, only later).

    Right after a large load the planner has no statistics for the new rows: recursive ancestry queries over
    freshly loaded links ran 300 times slower (4 s instead of 0.01 s at 200k links) until the table was analysed.
    Inside the transaction, ANALYZE counts the rows this transaction inserted.
    """
    estimate = connection.execute(
        text("SELECT reltuples FROM pg_class WHERE oid = CAST(:table AS regclass)"), {"table": table}
    ).scalar_one()
    if inserted >= ANALYZE_MIN_ROWS and inserted >= 0.1 * max(float(estimate), 0.0):
        connection.exec_driver_sql(f"ANALYZE {table}")


def _store_sqlite(
    connection: Connection, plan: _Plan, rows: list[list[Any]], progress: ProgressCallback | None, description: str,
    given_ids: Sequence[int] | None,
) -> list[int]:
    total = len(rows)
    table = plan.table.name
    if given_ids is None:
        first = int(connection.exec_driver_sql(f"SELECT coalesce(max({plan.pk_name}), 0) FROM {table}").scalar_one()) + 1
        ids = list(range(first, first + total))
    else:
        ids = list(given_ids)
    columns = [plan.pk_name, *(field.column_name for field in plan.fields)]
    _insert_many(connection, table, columns, [(ids[i], *rows[i]) for i in range(total)], progress, description)
    return ids


def bulk_insert(
    backend: SqlaBackend,
    entity: type[Base] | str,
    rows: Iterable[Mapping[str, Any]],
    progress: ProgressCallback | None = None,
    *,
    ids: Sequence[int] | None = None,
) -> list[int]:
    """Store plain-dict ``rows`` of ``entity`` (a model class or its table name) in one transaction.

    Keys are mapped attribute names (``metadata_``) or column names (``metadata``). Defaults come from the
    model's columns; required fields, types, string lengths, JSON values, timezones and foreign keys are
    checked before anything is written. Returns the new primary keys in input order. Raises
    :class:`ValidationError` naming the first bad row; then nothing of the call is stored.

    ``ids`` (one per row) stores the rows under these primary keys instead, as a copy of another storage does; a
    key already taken is refused like any other row the database refuses, and PostgreSQL's sequence is set
    to the table's largest id afterwards.
    """
    model = _resolve(entity)
    plan = _plan(model)
    rows = rows if isinstance(rows, Sequence) else list(rows)
    if not rows:
        return []
    if ids is not None and len(ids) != len(rows):
        raise ValidationError(f"bulk_insert got {len(ids)} ids for {len(rows)} rows of {plan.table.name}; give one id per row")
    session = backend.get_session()
    dialect = session.get_bind().dialect
    is_postgresql = dialect.name == "postgresql"
    description = f"store {plan.table.name}"
    total = len(rows)
    report(progress, description, 0, total)
    prepared, foreign = _prepare(plan, rows, dialect, for_copy=is_postgresql)
    try:
        with transaction(session, write=True):
            session.flush()  # the caller's pending objects may be the targets of foreign keys
            connection = session.connection()
            _check_foreign_keys(connection, plan, foreign)
            store = _store_postgresql if is_postgresql else _store_sqlite

            def store_rows() -> list[int]:
                return store(connection, plan, prepared, progress, description, ids)

            if model is DbLink:
                return insert_closed_links(connection, store_rows, len(rows))
            return store_rows()
    except (sa_exc.IntegrityError, sa_exc.DataError) as error:
        raise ValidationError(f"{plan.table.name}: the database refused the rows: {error_line(error)}") from error
    except Exception as error:
        if _is_driver_data_error(error):
            raise ValidationError(f"{plan.table.name}: the database refused the rows: {error_line(error)}") from error
        raise


def _is_driver_data_error(error: BaseException) -> bool:
    """A psycopg2 integrity or data error raised by ``copy_expert`` (not wrapped by SQLAlchemy)."""
    try:
        import psycopg2  # noqa: PLC0415 - optional at import time
    except ImportError:  # pragma: no cover
        return False
    return isinstance(error, (psycopg2.IntegrityError, psycopg2.DataError))
