"""Checks that a value reads back exactly as written, on SQLite and on PostgreSQL, before anything is written.

One serialiser, :func:`json_text`, writes every JSON value (settings, JSON columns through the ORM and
``bulk_insert``); :func:`check_text` checks plain strings and :func:`choice_problem` the values of columns with
``info["choices"]`` (link types); :func:`validate_flush` runs them over the objects of an ORM flush, so that a
hostile value raises :class:`ValidationError` before the flush sends any SQL.
"""
from __future__ import annotations

import json
import json.encoder
from typing import Any

from sqlalchemy import JSON, String, event, inspect
from sqlalchemy.orm import Session, UOWTransaction, sessionmaker

from .exceptions import ValidationError

__all__ = (
    "MAX_JSON_DEPTH", "TextProblem", "check_text", "choice_problem", "install", "json_text", "text_problem", "validate_flush",
)

#: Deepest nesting of lists and dicts a JSON value may have (the same limit on both dialects).
MAX_JSON_DEPTH = 256


class TextProblem(ValueError):
    """A string inside a JSON value cannot be stored (the cause of the :class:`ValidationError`)."""


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored exactly (NUL, or not encodable as UTF-8) as a phrase, or None."""
    if "\x00" in value:
        return "contains a NUL character, which PostgreSQL cannot store"
    if value.isascii():  # a flag of the string: no surrogate, no encoding needed
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"contains {value[error.start:error.end]!a}, a lone surrogate, which is not valid Unicode"
    return None


def check_text(value: str, what: str) -> None:
    """Raise :class:`ValidationError` unless ``value`` holds no NUL and is valid Unicode."""
    problem = text_problem(value)
    if problem is not None:
        raise ValidationError(f"{what} {problem}; remove it, or store binary data in the repository")


def json_text(value: Any, what: str = "value") -> str:
    """Serialise ``value`` so that it reads back equal, on SQLite and in PostgreSQL's JSONB.

    Only dicts with string keys, lists, strings, ints, finite floats, bools and None are accepted (a tuple or an
    int key would come back changed); strings may not hold NUL (JSONB cannot store it) or lone surrogates (not
    UTF-8), and nesting is limited to :data:`MAX_JSON_DEPTH`. An integral float is written with its digits and
    ``.0`` (``1e+20`` -> ``100000000000000000000.0``): JSONB keeps that scale, where it would give ``1e+20`` back
    as an int.
    """
    try:
        return _json_text(value, 0)
    except (TypeError, ValueError, RecursionError) as error:
        raise ValidationError(
            f"{what} is not storable JSON ({error}); use dicts with string keys, lists, strings without NUL or lone "
            f"surrogates, numbers (no NaN or infinity), bools or None, nested at most {MAX_JSON_DEPTH} deep"
        ) from error


def _string(value: str) -> str:
    if not value.isascii() or "\x00" in value:
        problem = text_problem(value)
        if problem is not None:
            raise TextProblem(problem)
    return _ESCAPE_ENCODER(value)


def _json_text(value: Any, depth: int) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a JSON number")
        if value.is_integer() and abs(value) >= 1e16:
            return f"{int(value)}.0"
        return float.__repr__(value)
    if depth >= MAX_JSON_DEPTH and isinstance(value, (list, dict)):
        raise ValueError(f"it is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, list):
        return "[" + ", ".join([_json_text(item, depth + 1) for item in value]) + "]"
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"dict key {key!r} is not a string")
            items.append(f"{_string(key)}: {_json_text(item, depth + 1)}")
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"{type(value).__name__} is not a JSON type")


#: Quotes and escapes one string as JSON, keeping non-ASCII characters as they are (``JSONEncoder(ensure_ascii=False)``
#: calls the same function for a string).
_ESCAPE_ENCODER = json.encoder.encode_basestring


def choice_problem(value: str, choices: tuple[str, ...]) -> str | None:
    """Why ``value`` is not one of a column's ``choices`` (its ``info["choices"]``) as a phrase, or None."""
    if value in choices:
        return None
    return f"is {value!r}, not one of: {', '.join(choices)}"


def _check_object(instance: object, new: bool) -> None:
    state = inspect(instance)
    mapper = state.mapper
    for column_attr in mapper.column_attrs:
        key = column_attr.key
        if not new and not state.attrs[key].history.has_changes():
            continue
        value = getattr(instance, key)
        if value is None:
            continue
        column_type = column_attr.columns[0].type
        what = f"{mapper.class_.__name__}.{key}"
        if isinstance(column_type, JSON):
            json_text(value, what)
        elif isinstance(column_type, String) and isinstance(value, str):
            check_text(value, what)
            choices = column_attr.columns[0].info.get("choices")
            problem = None if choices is None else choice_problem(value, choices)
            if problem is not None:
                raise ValidationError(f"{what} {problem}")
            if column_type.length is not None and len(value) > column_type.length:
                raise ValidationError(f"{what} is longer than {column_type.length} characters ({len(value)})")


def validate_flush(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    """``before_flush`` hook: check the strings and JSON values of new and changed objects."""
    for instance in session.new:
        _check_object(instance, True)
    for instance in session.dirty:
        _check_object(instance, False)


def install(target: Session | sessionmaker[Session]) -> None:
    """Check every ORM flush of ``target`` (a session or a session factory)."""
    event.listen(target, "before_flush", validate_flush)
