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
import itertools
import operator
import re
import uuid as uuid_module
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
from .values import TextProblem, choice_problem, json_text, text_problem

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

#: Distinct key sets (in key order) whose layout one call remembers; rows beyond that get theirs worked out anew.
_MAX_LAYOUTS = 64

_UTC = datetime.timezone.utc
#: A UUID as ``str(uuid)`` writes it (any case): taken as text, without building a ``UUID``.
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: Newline-terminated canonical UUIDs: a whole column of them checked by one match.
_CANONICAL_UUIDS = re.compile(f"(?:{_CANONICAL_UUID.pattern}\n)*")
_TZINFO = operator.attrgetter("tzinfo")
_ISOFORMAT = operator.methodcaller("isoformat")
_ISOFORMAT_SPACE = operator.methodcaller("isoformat", " ", "microseconds")
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
    choices: tuple[str, ...] | None


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
                choices=column.info.get("choices"),
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
    nullable, max_length, choices = field.nullable, field.max_length, field.choices
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
            problem = text_problem(value) if choices is None else choice_problem(value, choices)
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
            if value.tzinfo is not _UTC:
                if value.tzinfo is None or value.utcoffset() is None:
                    raise _Invalid(f"is a naive datetime ({value.isoformat()}); give times with a timezone")
                value = value.astimezone(_UTC)
            if for_copy:
                return value.isoformat()
            # what SQLAlchemy's SQLite DATETIME writes (fixed width, so text order is time order): without "+00:00"
            return value.isoformat(" ", "microseconds")[:-6]

        return convert_datetime

    if field.kind == "uuid":

        def convert_uuid(value: Any) -> Any:
            if type(value) is str and _CANONICAL_UUID.fullmatch(value):
                return value.lower() if for_copy else value.replace("-", "").lower()  # as the UUID's str() or hex
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
            serialised = json_text(value)
        except ValidationError as error:
            cause = error.__cause__
            raise _Invalid(str(cause) if isinstance(cause, TextProblem) else f"is not valid JSON ({cause})") from None
        return _copy_escape(serialised) if for_copy else serialised

    return convert_json


#: A call's converted rows, chunk by chunk of at most :data:`CHUNK_SIZE` rows, each chunk as one sequence per field.
_Chunks = list[list[Sequence[Any]]]


@dataclass(frozen=True)
class _Layout:
    """How rows with one sequence of keys map onto the fields of a plan."""

    given: tuple[tuple[int, Callable[[Mapping[str, Any]], Any]], ...]  # (position, getter) of the given fields
    missing: tuple[tuple[int, Callable[[Any], Any] | None], ...]  # (position, default or None) of the others


def _layout(plan: _Plan, keys: Sequence[Any], index: int) -> _Layout:
    """The layout of rows with these keys; :class:`ValidationError` (naming row ``index``) for an unknown field, a
    field given twice (by attribute and column name) or a missing required field."""
    fields, positions = plan.fields, plan.positions
    given: dict[int, Any] = {}
    for key in keys:
        position = positions.get(key)
        if position is None:
            raise ValidationError(_unknown_field_message(plan, index, key))
        if position in given:
            raise ValidationError(
                f"{plan.table.name} row {index}: field {fields[position].key!r} is given twice "
                f"(as {fields[position].key!r} and {fields[position].column_name!r})"
            )
        given[position] = key
    missing: list[tuple[int, Callable[[Any], Any] | None]] = []
    for position, field in enumerate(fields):
        if position in given:
            continue
        if field.default is None and not field.nullable:
            raise ValidationError(f"{plan.table.name} row {index}: required field {field.key!r} is missing")
        missing.append((position, field.default))
    getters = tuple((position, operator.itemgetter(key)) for position, key in sorted(given.items()))
    return _Layout(getters, tuple(missing))


def _default_column(default: Callable[[Any], Any] | None, count: int) -> list[Any]:
    return [None] * count if default is None else [default(None) for _ in range(count)]


def _raw_columns(plan: _Plan, rows: Sequence[Any], offset: int, layouts: dict[tuple[Any, ...], _Layout]) -> list[Sequence[Any]]:
    """The given values of ``rows`` (rows ``offset``... of the call), one sequence per field, defaults filled in.

    :class:`ValidationError` for a row that is not a mapping, or whose keys are not a valid set of fields.
    """
    width, count = len(plan.fields), len(rows)

    def layout_of(keys: tuple[Any, ...], index: int) -> _Layout:
        layout = layouts.get(keys) or _layout(plan, keys, index)
        if len(layouts) < _MAX_LAYOUTS:
            layouts[keys] = layout
        return layout

    key_sets = set(map(tuple, rows)) if set(map(type, rows)) == {dict} else None
    if key_sets is not None and len(key_sets) == 1:  # the usual case: one layout for the whole chunk
        layout = layout_of(key_sets.pop(), offset)
        columns: list[Sequence[Any]] = [()] * width
        for position, getter in layout.given:
            columns[position] = list(map(getter, rows))  # ten times faster than transposing the rows' tuples
        for position, default in layout.missing:
            columns[position] = _default_column(default, count)
        return columns
    full_rows: list[list[Any]] = []
    for index, row in enumerate(rows, offset):
        if not isinstance(row, Mapping):
            raise ValidationError(f"{plan.table.name} row {index}: expected a mapping, got {type(row).__name__}")
        layout = layout_of(tuple(row), index)
        values: list[Any] = [None] * width
        for position, getter in layout.given:
            values[position] = getter(row)
        for position, default in layout.missing:
            values[position] = None if default is None else default(None)
        full_rows.append(values)
    return list(zip(*full_rows))


def _column_converter(field: _Field, dialect: Dialect, for_copy: bool) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """A function checking and converting one column of values (see :func:`_converter`), raising :class:`_Invalid`.

    Integer and string columns whose values all have the plain type are checked at once with built-ins (types,
    lengths, NUL and surrogates in the joined text, choices) and need no conversion for SQLite; anything else goes
    value by value.
    """
    convert = _converter(field, dialect, for_copy)
    if field.kind == "datetime":
        return functools.partial(_time_column, convert, for_copy)
    if field.kind == "uuid":
        return functools.partial(_uuid_column, convert, for_copy)
    if field.kind not in ("int", "str"):
        return lambda values: list(map(convert, values))
    plain = {int if field.kind == "int" else str} | ({type(None)} if field.nullable else set())
    max_length, choices = field.max_length, None if field.choices is None else frozenset(field.choices)

    def convert_column(values: Sequence[Any]) -> Sequence[Any]:
        kinds = set(map(type, values))
        if not kinds <= plain or (for_copy and type(None) in kinds):
            return list(map(convert, values))
        if field.kind == "int":
            return list(map(str, values)) if for_copy else values
        texts = values if type(None) not in kinds else [value for value in values if value is not None]
        joined = "".join(texts)
        if (
            text_problem(joined) is not None
            or (max_length is not None and max(map(len, texts), default=0) > max_length)
            or (choices is not None and not choices.issuperset(texts))
        ):
            return list(map(convert, values))  # raises for the first bad value
        if for_copy and _copy_escape(joined) is not joined:
            return list(map(_copy_escape, values))
        return values

    return convert_column


def _time_column(convert: Callable[[Any], Any], for_copy: bool, values: Sequence[Any]) -> Sequence[Any]:
    """Times: a column of UTC datetimes is written by built-ins alone (what ``convert`` writes for each)."""
    if set(map(type, values)) != {datetime.datetime} or set(map(_TZINFO, values)) != {_UTC}:
        return list(map(convert, values))
    if for_copy:
        return list(map(_ISOFORMAT, values))
    return "\n".join(map(_ISOFORMAT_SPACE, values)).replace("+00:00", "").split("\n")


def _uuid_column(convert: Callable[[Any], Any], for_copy: bool, values: Sequence[Any]) -> Sequence[Any]:
    """UUIDs: a column of canonical UUID strings is checked by one match and converted as one text."""
    if set(map(type, values)) != {str}:
        return list(map(convert, values))
    joined = "\n".join(values)
    if not _CANONICAL_UUIDS.fullmatch(joined + "\n"):
        return list(map(convert, values))
    return (joined if for_copy else joined.replace("-", "")).lower().split("\n")


def _prepare(plan: _Plan, rows: Sequence[Mapping[str, Any]], dialect: Dialect, for_copy: bool) -> tuple[_Chunks, dict[int, list[Any]]]:
    """Check and convert every row, a chunk of :data:`CHUNK_SIZE` rows at a time, column by column; returns the
    converted chunks and, per foreign-key field, its values. :class:`ValidationError` names the first bad row."""
    fields = plan.fields
    converters = [_column_converter(field, dialect, for_copy) for field in fields]
    foreign: dict[int, list[Any]] = {position: [] for position, field in enumerate(fields) if field.references is not None}
    layouts: dict[tuple[Any, ...], _Layout] = {}
    chunks: _Chunks = []
    for offset in range(0, len(rows), CHUNK_SIZE):
        chunk = rows[offset : offset + CHUNK_SIZE]
        try:
            columns = _raw_columns(plan, chunk, offset, layouts)
            chunks.append([convert(column) for convert, column in zip(converters, columns)])
        except (ValidationError, _Invalid) as error:
            raise _first_bad_row(plan, dialect, for_copy, chunk, offset, error) from None
        for position, collected in foreign.items():
            collected.extend(columns[position])
    return chunks, foreign


def _first_bad_row(
    plan: _Plan, dialect: Dialect, for_copy: bool, rows: Sequence[Any], offset: int, error: Exception
) -> ValidationError:
    """The error naming the first bad row of a chunk in which ``error`` was found, and its first bad field."""
    converters = [_converter(field, dialect, for_copy) for field in plan.fields]
    for index, row in enumerate(rows, offset):
        try:
            (values,) = zip(*_raw_columns(plan, [row], index, {}))
        except ValidationError as refused:
            return refused
        for field, convert, value in zip(plan.fields, converters, values):
            try:
                convert(value)
            except _Invalid as invalid:
                return ValidationError(f"{plan.table.name} row {index}: field {field.key!r} {invalid}")
    if isinstance(error, ValidationError):
        return error
    raise AssertionError(f"a column was refused ({error}), but none of its values")  # pragma: no cover


def _unknown_field_message(plan: _Plan, index: int, key: Any) -> str:
    known = ", ".join(field.key for field in plan.fields)
    extra = f" ({plan.pk_name!r} is assigned by the database)" if key == plan.pk_name else ""
    return f"{plan.table.name} row {index}: unknown field {key!r}{extra}; the fields are: {known}"


def _check_foreign_keys(connection: Connection, plan: _Plan, foreign: dict[int, list[Any]]) -> None:
    """One set-based query per referenced table (a link's ``input_id`` and ``output_id`` share one): raise for
    the first row, in the first foreign-key column in field order, whose value has no target."""
    dialect_name = connection.dialect.name
    by_target: dict[Table, list[int]] = {}
    for position in foreign:
        target = plan.fields[position].references
        assert target is not None
        by_target.setdefault(target, []).append(position)
    for target, positions in by_target.items():
        distinct = set(itertools.chain.from_iterable(foreign[position] for position in positions))
        distinct.discard(None)
        if not distinct or _all_in_full_range(connection, target, distinct):
            continue
        given = id_select(dialect_name, distinct).subquery("given")
        missing_query = select(given.c.id).where(~exists().where(target.c.id == given.c.id))
        missing = {int(value) for value in connection.execute(missing_query).scalars()}
        for position in positions if missing else ():
            values, field = foreign[position], plan.fields[position]
            unknown = missing.intersection(values)
            if unknown:
                index = next(i for i, value in enumerate(values) if value in unknown)
                raise ValidationError(
                    f"{plan.table.name} row {index}: field {field.key!r} = {values[index]} does not exist in "
                    f"{target.name} ({len(unknown)} unknown value(s) in all)"
                )


def _all_in_full_range(connection: Connection, target: Table, ids: set[int]) -> bool:
    """Whether every id from ``min(ids)`` to ``max(ids)`` exists in ``target``, counted on its primary key index;
    tried only where that range is at most four times the number of ids (as for links among new nodes)."""
    low, high = min(ids), max(ids)
    if high - low + 1 > 4 * len(ids):
        return False
    present = connection.execute(select(func.count()).where(target.c.id.between(low, high))).scalar_one()
    return int(present) == high - low + 1


def _copy_lines(
    connection: Connection, table: str, columns: Sequence[str], chunks: Iterable[Sequence[str]], total: int,
    progress: ProgressCallback | None, description: str,
) -> None:
    """PostgreSQL: one ``COPY`` per chunk of text lines (tab-separated, escaped, no newline)."""
    quoted = ", ".join(f'"{name}"' for name in columns)
    statement = f"COPY {table} ({quoted}) FROM STDIN"
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    done = 0
    try:
        for lines in chunks:
            cursor.copy_expert(statement, io.StringIO("\n".join(lines) + "\n"), size=1 << 16)
            done += len(lines)
            report(progress, description, done, total)
    finally:
        cursor.close()


def _insert_many(
    connection: Connection, table: str, columns: Sequence[str], chunks: Iterable[list[tuple[Any, ...]]], total: int,
    progress: ProgressCallback | None, description: str,
) -> None:
    """SQLite: one driver ``executemany`` per chunk of rows."""
    quoted = ", ".join(f'"{name}"' for name in columns)
    statement = f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' * len(columns))})"
    done = 0
    for rows in chunks:
        connection.exec_driver_sql(statement, rows)
        done += len(rows)
        report(progress, description, done, total)


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
    starts = range(0, len(rows), CHUNK_SIZE)
    description = f"store {table.name}"
    if connection.dialect.name == "postgresql":
        lines = ([_copy_line(row) for row in rows[start : start + CHUNK_SIZE]] for start in starts)
        _copy_lines(connection, table.name, columns, lines, len(rows), None, description)
    else:
        tuples = ([tuple(row) for row in rows[start : start + CHUNK_SIZE]] for start in starts)
        _insert_many(connection, table.name, columns, tuples, len(rows), None, description)


def _chunk_ids(chunks: _Chunks, ids: Sequence[Any]) -> Iterator[tuple[Sequence[Any], list[Sequence[Any]]]]:
    """Each chunk with the ids of its rows."""
    start = 0
    for columns in chunks:
        count = len(columns[0])
        yield ids[start : start + count], columns
        start += count


def _store_postgresql(
    connection: Connection, plan: _Plan, chunks: _Chunks, total: int, progress: ProgressCallback | None,
    description: str, given_ids: Sequence[int] | None,
) -> list[int]:
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
    join = "\t".join
    lines = (list(map(join, zip(map(str, chunk_ids), *chunk))) for chunk_ids, chunk in _chunk_ids(chunks, ids))
    _copy_lines(connection, table, columns, lines, total, progress, description)
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
    connection: Connection, plan: _Plan, chunks: _Chunks, total: int, progress: ProgressCallback | None,
    description: str, given_ids: Sequence[int] | None,
) -> list[int]:
    table = plan.table.name
    if given_ids is None:
        first = int(connection.exec_driver_sql(f"SELECT coalesce(max({plan.pk_name}), 0) FROM {table}").scalar_one()) + 1
        ids = list(range(first, first + total))
    else:
        ids = list(given_ids)
    columns = [*(field.column_name for field in plan.fields), plan.pk_name]  # the id last: rows are zipped columns
    rows = (list(zip(*chunk, chunk_ids)) for chunk_ids, chunk in _chunk_ids(chunks, ids))
    _insert_many(connection, table, columns, rows, total, progress, description)
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
                return store(connection, plan, prepared, total, progress, description, ids)

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
