"""SQL building blocks shared by the graph, bulk and query modules."""
from __future__ import annotations

import json
import uuid as uuid_module
from collections.abc import Iterable

from sqlalchemy import ARRAY, BigInteger, String, Uuid, bindparam, cast, func, select
from sqlalchemy.sql import Select

__all__ = ("id_select", "string_select", "uuid_select")


def id_select(dialect_name: str, ids: Iterable[int]) -> Select[int]:
    """``SELECT id FROM <the given ids>`` with one bound parameter, whatever the number of ids.

    PostgreSQL gets one array (``unnest``), SQLite one JSON text (``json_each``), so no statement ever hits
    the drivers' limits on bind parameters (65,535 on PostgreSQL, 32,766 on SQLite).
    """
    values = sorted({int(value) for value in ids})
    if dialect_name == "postgresql":
        literal = "{" + ",".join(map(str, values)) + "}"  # one text parameter: far faster than a list adapter
        rows = func.unnest(cast(bindparam(None, literal, type_=String), ARRAY(BigInteger))).table_valued("id").render_derived()
        return select(rows.c.id.label("id"))
    rows = func.json_each(bindparam(None, json.dumps(values), type_=String)).table_valued("value")
    return select(rows.c.value.label("id"))


def string_select(dialect_name: str, values: Iterable[str]) -> Select[str]:
    """``SELECT value FROM <the given strings>`` with one bound parameter (see :func:`id_select`)."""
    items = sorted(set(values))
    if dialect_name == "postgresql":
        rows = func.unnest(bindparam(None, items, type_=ARRAY(String))).table_valued("value").render_derived()
        return select(rows.c.value.label("value"))
    rows = func.json_each(bindparam(None, json.dumps(items), type_=String)).table_valued("value")
    return select(rows.c.value.label("value"))


def uuid_select(dialect_name: str, uuids: Iterable[uuid_module.UUID]) -> Select[str]:
    """``SELECT uuid FROM <the given UUIDs>`` with one bound parameter, comparable with a ``Uuid`` column.

    PostgreSQL gets one ``uuid[]``; SQLite, where the column holds 32 hex digits, one JSON text of them.
    """
    values = sorted({value.hex for value in uuids})
    if dialect_name == "postgresql":
        literal = "{" + ",".join(values) + "}"
        rows = func.unnest(cast(bindparam(None, literal, type_=String), ARRAY(Uuid))).table_valued("uuid").render_derived()
        return select(rows.c.uuid.label("uuid"))
    rows = func.json_each(bindparam(None, json.dumps(values), type_=String)).table_valued("value")
    return select(rows.c.value.label("uuid"))
