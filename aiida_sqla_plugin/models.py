"""Typed SQLAlchemy models of the provenance schema, table and column names as AiiDA 2.x ``psql_dos``.

JSON columns are JSONB on PostgreSQL and JSON text on SQLite, UUIDs are native on PostgreSQL, and every time is
timezone-aware (stored in UTC on SQLite). Constructing a model fills its defaults, so
``DbNode(node_type="data.core.int.Int.", user_id=user.id)`` is a complete node.
"""
from __future__ import annotations

import datetime
import uuid as uuid_module
from typing import Any, cast

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    event,
    inspect,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .links import LINK_TYPES

__all__ = (
    "CREATION_DAY_DDL",
    "UTC_CREATION_DAY",
    "Base",
    "DbAuthInfo",
    "DbComment",
    "DbComputer",
    "DbGroup",
    "DbGroupNode",
    "DbLink",
    "DbLog",
    "DbNode",
    "DbPath",
    "DbSetting",
    "DbUser",
    "JsonType",
    "dialect_insert",
    "table_of",
    "utc_now",
)

NAMING_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
}


def table_of(entity: type[Base]) -> Table:
    """The :class:`Table` of a mapped class.

    ``__table__`` is typed as a ``FromClause`` (a mapping may target any selectable), but every model here maps
    one plain table, which is what ``insert()``, ``delete()`` and ``.c`` lookups want.
    """
    return cast(Table, entity.__table__)


def dialect_insert(dialect_name: str, entity: type[Base] | Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with ``ON CONFLICT`` support for the dialect (PostgreSQL or SQLite)."""
    table = entity if isinstance(entity, Table) else table_of(entity)
    return (postgresql.insert if dialect_name == "postgresql" else sqlite.insert)(table)


def utc_now() -> datetime.datetime:
    """The current time in UTC, timezone-aware."""
    return datetime.datetime.now(datetime.timezone.utc)


class UTCDateTime(TypeDecorator[datetime.datetime]):
    """A timezone-aware timestamp: ``timestamptz`` on PostgreSQL, a UTC string on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime.datetime | None, dialect: Dialect) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give times with a timezone, e.g. datetime.timezone.utc")
        return value.astimezone(datetime.timezone.utc)

    def process_result_value(self, value: datetime.datetime | None, dialect: Dialect) -> datetime.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value


class SQLiteJSONText(sqlite.JSON):
    """SQLite JSON declared as ``TEXT``: a column declared ``JSON`` gets numeric affinity, which would store the
    JSON text ``3.0`` as the integer 3 and ``2**70`` as a lossy real."""


@compiles(SQLiteJSONText, "sqlite")
def _compile_sqlite_json_text(type_: SQLiteJSONText, compiler: Any, **kwargs: Any) -> str:
    return "TEXT"


#: JSON columns: JSONB on PostgreSQL, JSON stored as TEXT on SQLite.
JsonType = JSON().with_variant(JSONB(), "postgresql").with_variant(SQLiteJSONText(), "sqlite")


def _empty_dict() -> dict[str, Any]:
    return {}


class Base(DeclarativeBase):
    """Declarative base carrying the constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime.datetime: UTCDateTime, dict[str, Any]: JsonType, uuid_module.UUID: Uuid}

    def __init__(self, **kwargs: Any) -> None:
        # Fill Python-side defaults at construction time, so a new object is complete before flush.
        for prop in inspect(type(self)).column_attrs:
            default = prop.columns[0].default
            if prop.key not in kwargs and default is not None and default.is_callable:
                kwargs[prop.key] = default.arg(None)
        for key, value in kwargs.items():
            if not hasattr(type(self), key):
                raise TypeError(f"{key!r} is not an attribute of {type(self).__name__}")
            setattr(self, key, value)


def _uuid_column() -> Mapped[uuid_module.UUID]:
    return mapped_column(default=lambda ctx: uuid_module.uuid4(), unique=True)


def _time_column(**kwargs: Any) -> Mapped[datetime.datetime]:
    return mapped_column(default=lambda ctx: utc_now(), **kwargs)


def _json_column(nullable: bool = False) -> Mapped[dict[str, Any]]:
    return mapped_column(default=lambda ctx: _empty_dict(), nullable=nullable)


class DbUser(Base):
    """A user, identified by e-mail."""

    __tablename__ = "db_dbuser"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    first_name: Mapped[str] = mapped_column(String(254), default=lambda ctx: "")
    last_name: Mapped[str] = mapped_column(String(254), default=lambda ctx: "")
    institution: Mapped[str] = mapped_column(String(254), default=lambda ctx: "")


class DbComputer(Base):
    """A computer on which calculations run."""

    __tablename__ = "db_dbcomputer"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[uuid_module.UUID] = _uuid_column()
    label: Mapped[str] = mapped_column(String(255), unique=True)
    hostname: Mapped[str] = mapped_column(String(255), default=lambda ctx: "")
    description: Mapped[str] = mapped_column(Text, default=lambda ctx: "")
    scheduler_type: Mapped[str] = mapped_column(String(255), default=lambda ctx: "")
    transport_type: Mapped[str] = mapped_column(String(255), default=lambda ctx: "")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=lambda ctx: _empty_dict())


class DbAuthInfo(Base):
    """How a user connects to a computer."""

    __tablename__ = "db_dbauthinfo"
    __table_args__ = (UniqueConstraint("aiidauser_id", "dbcomputer_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    aiidauser_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbuser.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"), index=True
    )
    dbcomputer_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbcomputer.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"), index=True
    )
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=lambda ctx: _empty_dict())
    auth_params: Mapped[dict[str, Any]] = _json_column()
    enabled: Mapped[bool] = mapped_column(Boolean, default=lambda ctx: True)


class DbNode(Base):
    """A node of the provenance graph: data, calculation or workflow."""

    __tablename__ = "db_dbnode"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[uuid_module.UUID] = _uuid_column()
    node_type: Mapped[str] = mapped_column(String(255), index=True)
    process_type: Mapped[str | None] = mapped_column(String(255), index=True)
    label: Mapped[str] = mapped_column(String(255), index=True, default=lambda ctx: "")
    description: Mapped[str] = mapped_column(Text, default=lambda ctx: "")
    ctime: Mapped[datetime.datetime] = _time_column(index=True)
    mtime: Mapped[datetime.datetime] = _time_column(index=True)
    attributes: Mapped[dict[str, Any] | None] = _json_column(nullable=True)
    extras: Mapped[dict[str, Any] | None] = _json_column(nullable=True)
    repository_metadata: Mapped[dict[str, Any]] = _json_column()
    dbcomputer_id: Mapped[int | None] = mapped_column(
        ForeignKey("db_dbcomputer.id", ondelete="RESTRICT", deferrable=True, initially="DEFERRED"), index=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbuser.id", ondelete="RESTRICT", deferrable=True, initially="DEFERRED"), index=True
    )

    user: Mapped[DbUser] = relationship()
    dbcomputer: Mapped[DbComputer | None] = relationship()


#: A node's UTC creation day as SQL over ``db_dbnode``: the text 'YYYY-MM-DD' on SQLite (times are stored as UTC
#: text), a date on PostgreSQL. The creation statistics group by exactly this text, and the schema object below is
#: keyed on it, so the two must stay equal (SQLite matches an expression index only against an identical expression).
UTC_CREATION_DAY = {"sqlite": "substr(ctime, 1, 10)", "postgresql": "CAST(timezone('UTC', ctime) AS DATE)"}
#: Per dialect, the name of the schema object below: an index on SQLite, a statistics object on PostgreSQL.
CREATION_DAY_NAME = {"sqlite": "ix_db_dbnode_creation_day", "postgresql": "st_db_dbnode_creation_day"}
#: Per dialect, (create, drop) of what makes the creation statistics fast. SQLite has no hash aggregate: an index in
#: (day, type, user) order turns the GROUP BY into one ordered index scan. PostgreSQL's planner never chose such an
#: index over a parallel heap scan; what it lacked was the number of distinct (day, type) pairs (it sorted 1M rows
#: on disk instead of hashing 200 groups), which ndistinct statistics give it at no cost to inserts.
CREATION_DAY_DDL = {
    "sqlite": (
        f"CREATE INDEX {CREATION_DAY_NAME['sqlite']} ON db_dbnode ({UTC_CREATION_DAY['sqlite']}, node_type, user_id)",
        f"DROP INDEX {CREATION_DAY_NAME['sqlite']}",
    ),
    "postgresql": (
        f"CREATE STATISTICS {CREATION_DAY_NAME['postgresql']} (ndistinct) "
        f"ON ({UTC_CREATION_DAY['postgresql']}), node_type FROM db_dbnode",
        f"DROP STATISTICS {CREATION_DAY_NAME['postgresql']}",
    ),
}
for _dialect, (_create, _) in CREATION_DAY_DDL.items():  # create_all of a new database; main_0003 for older ones
    event.listen(table_of(DbNode), "after_create", DDL(_create).execute_if(dialect=_dialect))


class DbLink(Base):
    """A labelled, typed link from ``input_id`` to ``output_id``."""

    __tablename__ = "db_dblink"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    input_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbnode.id", deferrable=True, initially="DEFERRED"), index=True
    )
    output_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbnode.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"), index=True
    )
    label: Mapped[str] = mapped_column(String(255), index=True)
    #: One of :data:`~aiida_sqla_plugin.links.LINK_TYPES`: the ORM flush and ``bulk_insert`` refuse any other.
    type: Mapped[str] = mapped_column(String(255), index=True, info={"choices": LINK_TYPES})


class DbGroup(Base):
    """A named collection of nodes."""

    __tablename__ = "db_dbgroup"
    __table_args__ = (UniqueConstraint("label", "type_string"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[uuid_module.UUID] = _uuid_column()
    label: Mapped[str] = mapped_column(String(255), index=True)
    type_string: Mapped[str] = mapped_column(String(255), index=True, default=lambda ctx: "core")
    time: Mapped[datetime.datetime] = _time_column()
    description: Mapped[str] = mapped_column(Text, default=lambda ctx: "")
    extras: Mapped[dict[str, Any]] = _json_column()
    user_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbuser.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"), index=True
    )


class DbGroupNode(Base):
    """Membership of a node in a group."""

    __tablename__ = "db_dbgroup_dbnodes"
    __table_args__ = (UniqueConstraint("dbgroup_id", "dbnode_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dbnode_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbnode.id", deferrable=True, initially="DEFERRED"), index=True
    )
    dbgroup_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbgroup.id", deferrable=True, initially="DEFERRED"), index=True
    )


class DbComment(Base):
    """A comment a user wrote on a node."""

    __tablename__ = "db_dbcomment"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[uuid_module.UUID] = _uuid_column()
    dbnode_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbnode.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"), index=True
    )
    ctime: Mapped[datetime.datetime] = _time_column()
    mtime: Mapped[datetime.datetime] = _time_column()
    user_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbuser.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"), index=True
    )
    content: Mapped[str] = mapped_column(Text, default=lambda ctx: "")


class DbLog(Base):
    """A log record attached to a node."""

    __tablename__ = "db_dblog"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[uuid_module.UUID] = _uuid_column()
    time: Mapped[datetime.datetime] = _time_column()
    loggername: Mapped[str] = mapped_column(String(255), index=True)
    levelname: Mapped[str] = mapped_column(String(50), index=True)
    dbnode_id: Mapped[int] = mapped_column(
        ForeignKey("db_dbnode.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"), index=True
    )
    message: Mapped[str] = mapped_column(Text, default=lambda ctx: "")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=lambda ctx: _empty_dict())


class DbSetting(Base):
    """A key/value setting of the storage (e.g. ``schema_generation``)."""

    __tablename__ = "db_dbsetting"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(1024), unique=True)
    val: Mapped[Any] = mapped_column(JsonType, nullable=True)
    description: Mapped[str] = mapped_column(Text, default=lambda ctx: "")
    time: Mapped[datetime.datetime] = _time_column()


class DbPath(Base):
    """One row per (ancestor, descendant) pair with the number of distinct paths between them.

    Kept exact by the closure triggers (see :mod:`aiida_sqla_plugin.closure`); empty while they are not
    installed. It has no foreign keys: the triggers remove its rows together with the links they stand for.

    Keyed by descendant first, and on SQLite clustered on that key (``WITHOUT ROWID``): new pairs arrive with new
    descendants and a deletion takes the pairs of its (newest) descendants, so both touch the key's right end
    instead of pages all over the table; the (ancestor, descendant) index serves the descendant queries. A
    refilled closure is written in key order on both dialects (migration ``main_0004`` reorders older ones).
    """

    __tablename__ = "db_dbpath"
    __table_args__ = (
        PrimaryKeyConstraint("child_id", "parent_id"),
        Index(None, "parent_id", "child_id"),
        {"sqlite_with_rowid": False},
    )
    parent_id: Mapped[int] = mapped_column(Integer)
    child_id: Mapped[int] = mapped_column(Integer)
    path_count: Mapped[int] = mapped_column(BigInteger)
