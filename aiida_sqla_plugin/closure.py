"""The transitive closure of provenance links in ``db_dbpath``, kept exact by database triggers.

One row per (ancestor, descendant) pair with the number of distinct link paths between them (parallel links
count as distinct paths). Only links of the covered types (default: ``create`` and ``input_calc``) are in the
closure, and they must be acyclic: a link that would close a cycle is rejected by the trigger.

Adding ``k`` parallel links ``u -> v`` to a DAG adds ``k * cnt(a -> u) * cnt(v -> d)`` paths to every pair with
``a`` in ``{u} + ancestors(u)`` and ``d`` in ``{v} + descendants(v)`` (``cnt(x -> x) = 1``); removing them
subtracts the same and drops the pairs that reach zero. PostgreSQL applies this once per distinct changed
``(input, output)`` pair of a statement (statement-level triggers with transition tables, removals first) under
a transaction-level advisory lock, so concurrent writers are serialised and, under READ COMMITTED, each sees
the closure the others committed (SERIALIZABLE is safe too, through serialisation failures; REPEATABLE READ would
miss concurrent changes, so the triggers refuse it). SQLite applies it per row, so a multi-row UPDATE whose
intermediate rows close a cycle the final state does not have is rejected there (PostgreSQL accepts it).
:func:`install_tc` backfills the closure with a level-by-level path-count propagation (one set-based
statement per path length).
"""
from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import column, delete, func, insert, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from .exceptions import NotExistent, ValidationError, error_line
from .links import DEFAULT_CLOSURE_LINK_TYPES, validate_link_types
from .models import DbLink, DbPath, DbSetting, dialect_insert, table_of, utc_now
from .progress import ProgressCallback, report
from .session import transaction
from .sql import id_select, string_select

__all__ = (
    "CLOSURE_SETTING_KEY",
    "CYCLE_MESSAGE",
    "ClosureStatus",
    "closure_bulk_load",
    "closure_status",
    "delete_closed_nodes",
    "get_pg_tc",
    "insert_closed_links",
    "install_tc",
    "installed_link_types",
    "rebuild_tc",
    "uninstall_tc",
)

#: Setting recording the link types of the installed closure (absent when it is not installed).
CLOSURE_SETTING_KEY = "closure_link_types"
#: Start of every cycle error, from the triggers and from the backfill.
CYCLE_MESSAGE = "provenance links must be acyclic"
#: PostgreSQL: a statement changing many (input, output) pairs analyses the closure after every so many of them.
ANALYZE_EVERY_PAIRS = 2000

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PG_MAX_IDENTIFIER = 63
_PG_SAFE_LITERAL = re.compile(r"[A-Za-z0-9_.:\- ]*\Z")


@dataclass(frozen=True)
class ClosureStatus:
    """What :func:`closure_status` reports."""

    installed: bool
    link_types: tuple[str, ...]
    rows: int
    links: int  # links of the covered types


@dataclass(frozen=True)
class _Names:
    """Validated, double-quoted names of the links and closure tables, and the prefix of generated objects."""

    links: str
    source: str
    target: str
    closure: str
    parent: str
    child: str
    prefix: str
    lock_key: int

    def obj(self, suffix: str) -> str:
        """The quoted name of a generated trigger or function."""
        return f'"{self.prefix}_{suffix}"'


def installed_link_types(connection: Connection) -> frozenset[str] | None:
    """The link types covered by the installed closure, or None when no closure is installed."""
    value = connection.execute(select(DbSetting.val).where(DbSetting.key == CLOSURE_SETTING_KEY)).scalar_one_or_none()
    return None if value is None else frozenset(value)


def _quote(name: object, what: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.match(name) or len(name) > _PG_MAX_IDENTIFIER:
        raise ValidationError(f"{what} must be a plain SQL identifier (letters, digits, '_'; at most 63), got {name!r}")
    return f'"{name}"'


def _names(links: str, source: str, target: str, closure: str, parent: str, child: str) -> _Names:
    quoted = (
        _quote(links, "links_table_name"),
        _quote(source, "links_table_input_field"),
        _quote(target, "links_table_output_field"),
        _quote(closure, "closure_table_name"),
        _quote(parent, "closure_table_parent_field"),
        _quote(child, "closure_table_child_field"),
    )
    prefix = f"tc_{links}_{closure}"
    if len(prefix) + len("_after_insert") > _PG_MAX_IDENTIFIER:
        raise ValidationError(f"table names {links!r} and {closure!r} are too long for the trigger names")
    digest = hashlib.sha256(f"aiida-sqla closure {closure}".encode()).digest()
    return _Names(*quoted, prefix=prefix, lock_key=int.from_bytes(digest[:8], "big", signed=True))


def _pg_literal(value: str) -> str:
    """A PostgreSQL string literal of ``value``: plain when harmless, else an escape string of code points only."""
    if "\x00" in value:
        raise ValidationError("link types must not contain NUL characters")
    if _PG_SAFE_LITERAL.match(value):
        return f"'{value}'"
    # Every other character as a \U escape: no quote, backslash or dollar sign can reach the SQL text.
    return "E'" + "".join(ch if ch.isalnum() and ch.isascii() else f"\\U{ord(ch):08X}" for ch in value) + "'"


def _sqlite_literal(value: str) -> str:
    if "\x00" in value:
        raise ValidationError("link types must not contain NUL characters")
    return "'" + value.replace("'", "''") + "'"


def _default_names() -> _Names:
    return _names("db_dblink", "input_id", "output_id", "db_dbpath", "parent_id", "child_id")


# ---------------------------------------------------------------------------------------------------- PostgreSQL


def _pg_ends(n: _Names, source: str, target: str) -> tuple[str, str]:
    """Subqueries (node, paths) of ``{source} + ancestors(source)`` and ``{target} + descendants(target)``."""
    ancestors = (
        f"(SELECT {source}::bigint AS node, 1::bigint AS paths UNION ALL "
        f"SELECT {n.parent}, {n.closure}.path_count FROM {n.closure} WHERE {n.child} = {source})"
    )
    descendants = (
        f"(SELECT {target}::bigint AS node, 1::bigint AS paths UNION ALL "
        f"SELECT {n.child}, {n.closure}.path_count FROM {n.closure} WHERE {n.parent} = {target})"
    )
    return ancestors, descendants


def _pg_statements(n: _Names, link_types: tuple[str, ...]) -> list[str]:
    covered = ", ".join(_pg_literal(value) for value in link_types)
    ancestors, descendants = _pg_ends(n, "$1", "$2")
    add = f"""CREATE OR REPLACE FUNCTION {n.obj("add")}(bigint, bigint, bigint) RETURNS void LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan SET jit = off
AS $tc$
-- Add $3 parallel links $1 -> $2 to an exact closure (caller holds the closure lock).
-- Planned per call: a plan cached while the closure was small would scan it whole once it has grown.
BEGIN
    IF $1 = $2 OR EXISTS (SELECT 1 FROM {n.closure} WHERE {n.parent} = $2 AND {n.child} = $1) THEN
        RAISE EXCEPTION '{CYCLE_MESSAGE}: a link from node % to node % would close a cycle', $1, $2
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO {n.closure} AS t ({n.parent}, {n.child}, path_count)
    SELECT a.node, d.node, $3 * a.paths * d.paths FROM {ancestors} AS a CROSS JOIN {descendants} AS d
    ON CONFLICT ({n.parent}, {n.child}) DO UPDATE SET path_count = t.path_count + EXCLUDED.path_count;
END
$tc$;"""
    remove = f"""CREATE OR REPLACE FUNCTION {n.obj("remove")}(bigint, bigint, bigint) RETURNS void LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan SET jit = off
AS $tc$
-- Remove $3 parallel links $1 -> $2 from an exact closure (caller holds the closure lock).
-- The pairs read (x, $1) and ($2, y) are never among the pairs changed: that would need a cycle.
-- Planned per call, as the add function.
BEGIN
    DELETE FROM {n.closure} AS t USING {ancestors} AS a, {descendants} AS d
    WHERE t.{n.parent} = a.node AND t.{n.child} = d.node AND t.path_count = $3 * a.paths * d.paths;
    UPDATE {n.closure} AS t SET path_count = t.path_count - $3 * a.paths * d.paths
    FROM {ancestors} AS a, {descendants} AS d WHERE t.{n.parent} = a.node AND t.{n.child} = d.node;
END
$tc$;"""
    lock = f"PERFORM pg_advisory_xact_lock({n.lock_key});"

    def covered_rows(transition: str, sign: int) -> str:
        return (
            f"SELECT {n.source} AS src, {n.target} AS dst, {sign} AS n FROM {transition} "
            f'WHERE "type" IN ({covered})'
        )

    def statement_function(suffix: str, check: str, deltas: str, shortcut: str = "") -> str:
        return f"""CREATE OR REPLACE FUNCTION {n.obj(suffix)}() RETURNS trigger LANGUAGE plpgsql AS $tc$
DECLARE
    link record;
    done bigint := 0;
BEGIN
    IF NOT EXISTS ({check}) THEN
        RETURN NULL;
    END IF;
    IF current_setting('transaction_isolation') = 'repeatable read' THEN
        RAISE EXCEPTION 'changing covered links needs READ COMMITTED or SERIALIZABLE isolation: under REPEATABLE READ '
            'the closure would miss concurrent changes' USING ERRCODE = 'feature_not_supported';
    END IF;
    {lock}{shortcut}
    FOR link IN {deltas} LOOP
        -- A long statement refreshes the planner's statistics of the closure as it goes: a closure that grew
        -- from (almost) nothing in this transaction has none, and the per-link plans would scan all of it.
        IF done % {ANALYZE_EVERY_PAIRS} = {ANALYZE_EVERY_PAIRS} - 1 THEN
            EXECUTE 'ANALYZE {n.closure}';
        END IF;
        done := done + 1;
        IF link.n > 0 THEN
            PERFORM {n.obj("add")}(link.src, link.dst, link.n);
        ELSE
            PERFORM {n.obj("remove")}(link.src, link.dst, -link.n);
        END IF;
    END LOOP;
    RETURN NULL;
END
$tc$;"""

    # When a statement leaves no covered link at all (e.g. emptying the table), the closure is simply empty.
    all_gone = f"""
    IF NOT EXISTS (SELECT 1 FROM {n.links} WHERE "type" IN ({covered})) THEN
        DELETE FROM {n.closure};
        RETURN NULL;
    END IF;"""
    grouped = "SELECT src, dst, sum(n)::bigint AS n FROM ({rows}) AS changes GROUP BY src, dst"
    on_insert = statement_function(
        "after_insert",
        covered_rows("tc_new", 1),
        grouped.format(rows=covered_rows("tc_new", 1)) + " ORDER BY src, dst",
    )
    on_delete = statement_function(
        "after_delete",
        covered_rows("tc_old", -1),
        grouped.format(rows=covered_rows("tc_old", -1)) + " ORDER BY src, dst",
        all_gone,
    )
    # An update is the net change of the multiset of covered (input, output) pairs: removals first, so that no
    # intermediate state holds a link the final one does not (no spurious cycle error).
    both = covered_rows("tc_old", -1) + " UNION ALL " + covered_rows("tc_new", 1)
    on_update = statement_function(
        "after_update",
        both,
        grouped.format(rows=both) + " HAVING sum(n) <> 0 ORDER BY sum(n) > 0, src, dst",
        all_gone,
    )
    on_truncate = f"""CREATE OR REPLACE FUNCTION {n.obj("after_truncate")}() RETURNS trigger LANGUAGE plpgsql AS $tc$
BEGIN
    {lock}
    DELETE FROM {n.closure};
    RETURN NULL;
END
$tc$;"""
    triggers = [
        f"CREATE TRIGGER {n.obj('insert')} AFTER INSERT ON {n.links} REFERENCING NEW TABLE AS tc_new "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {n.obj('after_insert')}();",
        f"CREATE TRIGGER {n.obj('delete')} AFTER DELETE ON {n.links} REFERENCING OLD TABLE AS tc_old "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {n.obj('after_delete')}();",
        f"CREATE TRIGGER {n.obj('update')} AFTER UPDATE ON {n.links} REFERENCING OLD TABLE AS tc_old NEW TABLE AS tc_new "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {n.obj('after_update')}();",
        f"CREATE TRIGGER {n.obj('truncate')} AFTER TRUNCATE ON {n.links} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {n.obj('after_truncate')}();",
    ]
    return [*_pg_drop_statements(n, functions=False), add, remove, on_insert, on_delete, on_update, on_truncate, *triggers]


def _pg_drop_statements(n: _Names, functions: bool = True) -> list[str]:
    statements = [f"DROP TRIGGER IF EXISTS {n.obj(event)} ON {n.links};" for event in ("insert", "delete", "update", "truncate")]
    if functions:
        statements += [
            f"DROP FUNCTION IF EXISTS {n.obj(name)}();" for name in ("after_insert", "after_delete", "after_update", "after_truncate")
        ]
        statements += [f"DROP FUNCTION IF EXISTS {n.obj(name)}(bigint, bigint, bigint);" for name in ("add", "remove")]
    return statements


def get_pg_tc(
    links_table_name: str,
    links_table_input_field: str,
    links_table_output_field: str,
    closure_table_name: str,
    closure_table_parent_field: str,
    closure_table_child_field: str,
    link_types: Iterable[str] = DEFAULT_CLOSURE_LINK_TYPES,
) -> str:
    """The PostgreSQL SQL (functions and statement-level triggers) keeping the closure table exact.

    The closure table needs a ``path_count`` column and a unique key on (parent, child); the links table a
    ``type`` column. Names must be plain identifiers (:class:`ValidationError` otherwise); they are quoted.
    The script is idempotent: it replaces the functions and triggers of an earlier run.
    """
    names = _names(
        links_table_name,
        links_table_input_field,
        links_table_output_field,
        closure_table_name,
        closure_table_parent_field,
        closure_table_child_field,
    )
    return "\n\n".join(_pg_statements(names, validate_link_types(link_types))) + "\n"


# ---------------------------------------------------------------------------------------------------- SQLite


def _sqlite_changes(n: _Names, row: str, condition: str, add: bool) -> list[str]:
    """Trigger-body statements adding (or removing) the link ``row`` (NEW or OLD) when ``condition`` holds."""
    source, target = f"{row}.{n.source}", f"{row}.{n.target}"
    ancestors = (
        f"(SELECT {source} AS node, 1 AS paths UNION ALL "
        f"SELECT {n.parent}, path_count FROM {n.closure} WHERE {n.child} = {source})"
    )
    descendants = (
        f"(SELECT {target} AS node, 1 AS paths UNION ALL "
        f"SELECT {n.child}, path_count FROM {n.closure} WHERE {n.parent} = {target})"
    )
    if add:
        return [
            f"SELECT RAISE(ABORT, '{CYCLE_MESSAGE}: this link would close a cycle') WHERE ({condition}) AND "
            f"({source} = {target} OR EXISTS (SELECT 1 FROM {n.closure} WHERE {n.parent} = {target} AND {n.child} = {source}));",
            f"INSERT INTO {n.closure} ({n.parent}, {n.child}, path_count) "
            f"SELECT a.node, d.node, a.paths * d.paths FROM {ancestors} AS a, {descendants} AS d WHERE {condition} "
            f"ON CONFLICT ({n.parent}, {n.child}) DO UPDATE SET path_count = path_count + excluded.path_count;",
        ]
    return [
        f"DELETE FROM {n.closure} WHERE ({condition}) AND ({n.parent}, {n.child}, path_count) IN "
        f"(SELECT a.node, d.node, a.paths * d.paths FROM {ancestors} AS a, {descendants} AS d);",
        f"UPDATE {n.closure} SET path_count = {n.closure}.path_count - a.paths * d.paths "
        f"FROM {ancestors} AS a, {descendants} AS d "
        f"WHERE ({condition}) AND {n.closure}.{n.parent} = a.node AND {n.closure}.{n.child} = d.node;",
    ]


def _sqlite_statements(n: _Names, link_types: tuple[str, ...]) -> list[str]:
    covered = ", ".join(_sqlite_literal(value) for value in link_types)
    old_in, new_in = f'OLD."type" IN ({covered})', f'NEW."type" IN ({covered})'
    same = f"{old_in} AND {new_in} AND OLD.{n.source} = NEW.{n.source} AND OLD.{n.target} = NEW.{n.target}"
    insert_body = _sqlite_changes(n, "NEW", "1", add=True)
    delete_body = _sqlite_changes(n, "OLD", "1", add=False)
    update_body = _sqlite_changes(n, "OLD", f"{old_in} AND NOT ({same})", add=False)
    update_body += _sqlite_changes(n, "NEW", f"{new_in} AND NOT ({same})", add=True)

    def trigger(suffix: str, event: str, when: str, body: list[str]) -> str:
        lines = "\n    ".join(body)
        return f"CREATE TRIGGER {n.obj(suffix)} AFTER {event} ON {n.links} FOR EACH ROW WHEN {when}\nBEGIN\n    {lines}\nEND;"

    return [
        *_sqlite_drop_statements(n),
        trigger("insert", "INSERT", new_in, insert_body),
        trigger("delete", "DELETE", old_in, delete_body),
        trigger("update", f'UPDATE OF {n.source}, {n.target}, "type"', f"{old_in} OR {new_in}", update_body),
    ]


def _sqlite_drop_statements(n: _Names) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {n.obj(event)};" for event in ("insert", "delete", "update")]


# ---------------------------------------------------------------------------------------------------- install


def _dialect(session: Session) -> str:
    name = session.get_bind().dialect.name
    if name not in ("postgresql", "sqlite"):
        raise ValidationError(f"the closure supports PostgreSQL and SQLite, not {name!r}")
    return name


def _execute_script(connection: Connection, statements: list[str]) -> None:
    for statement in statements:
        connection.execution_options(no_parameters=True).exec_driver_sql(statement)


def _lock(connection: Connection, dialect: str, names: _Names) -> None:
    if dialect == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({names.lock_key})")


_BACKFILL_TABLES = ("tc_edge", "tc_waiting", "tc_ready", "tc_next", "tc_rank", "tc_closure")


def _backfill(connection: Connection, dialect: str, link_types: tuple[str, ...], progress: ProgressCallback | None) -> int:
    """Fill the (empty) closure from the covered links; returns its row count. Raises on a cycle.

    Nodes are settled sinks first: a node is *ready* once every child it has is settled, and its closure rows are
    then ``C(a, d) = sum over links a -> x of n(a, x) * ([x = d] + C(x, d))``, one grouped statement for all nodes
    ready in a round. Each pair is written once (no per-path-length copies, never listing paths), into an
    unlogged temporary table keyed by (round, source) so that its index only ever grows at its right end (a key
    by source alone takes a random leaf per row, which thrashes PostgreSQL's small temporary buffers); it is
    copied into ``db_dbpath`` at the end, and on PostgreSQL the closure's indexes are rebuilt after that copy,
    which is several times faster than maintaining them row by row. Nodes left unsettled when no node is ready
    any more lie on or above a cycle.
    """
    temporary = "CREATE TEMPORARY TABLE {} ({}){}".format
    on_commit = " ON COMMIT DROP" if dialect == "postgresql" else ""
    # Left over by an earlier call in the same (caller's) transaction, or on SQLite by an earlier transaction.
    schema = "temp" if dialect == "sqlite" else "pg_temp"
    _execute_script(connection, [f"DROP TABLE IF EXISTS {schema}.{name}" for name in _BACKFILL_TABLES])
    if dialect == "postgresql":
        # JIT-compiling each round's small statement costs far more than it saves (~0.1 s a statement)
        connection.exec_driver_sql("SET LOCAL jit = off")
    _execute_script(
        connection,
        [
            temporary("tc_edge", "src bigint NOT NULL, dst bigint NOT NULL, n bigint NOT NULL", on_commit),
            temporary("tc_waiting", "node bigint PRIMARY KEY, waiting bigint NOT NULL", on_commit),
            temporary("tc_ready", "node bigint PRIMARY KEY", on_commit),
            temporary("tc_next", "node bigint PRIMARY KEY, settled bigint NOT NULL", on_commit),
            temporary("tc_rank", "node bigint PRIMARY KEY, round bigint NOT NULL", on_commit),
            temporary("tc_closure", "round bigint NOT NULL, src bigint NOT NULL, dst bigint NOT NULL, n bigint NOT NULL", on_commit),
        ],
    )
    links = table_of(DbLink)
    edge = table("tc_edge", column("src"), column("dst"), column("n"))
    connection.execute(
        insert(edge).from_select(
            ["src", "dst", "n"],
            select(links.c.input_id, links.c.output_id, func.count())
            .where(links.c.type.in_(string_select(dialect, link_types)))
            .group_by(links.c.input_id, links.c.output_id),
        )
    )
    analyze = ["ANALYZE tc_ready"] if dialect == "postgresql" else []
    _execute_script(
        connection,
        [
            "CREATE INDEX tc_edge_src ON tc_edge (src)",
            "CREATE INDEX tc_edge_dst ON tc_edge (dst)",
            "CREATE INDEX tc_closure_round_src ON tc_closure (round, src)",
            *(["ANALYZE tc_edge"] if dialect == "postgresql" else []),
            # how many of its children each source still waits for (children that are sources themselves)
            "INSERT INTO tc_waiting (node, waiting) SELECT e.src, "
            "sum(CASE WHEN EXISTS (SELECT 1 FROM tc_edge f WHERE f.src = e.dst) THEN 1 ELSE 0 END) "
            "FROM tc_edge e GROUP BY e.src",
            "INSERT INTO tc_ready (node) SELECT node FROM tc_waiting WHERE waiting = 0",
            *analyze,
        ],
    )
    total = connection.exec_driver_sql("SELECT count(*) FROM tc_waiting").scalar_one()

    def round_statements(number: int) -> list[str]:
        # Sorted by source, a round's rows extend the (round, source) index at its right end.
        return [
            f"INSERT INTO tc_rank (node, round) SELECT node, {number} FROM tc_ready",
            f"INSERT INTO tc_closure (round, src, dst, n) SELECT {number}, a, d, sum(c) FROM ("
            " SELECT e.src AS a, e.dst AS d, e.n AS c FROM tc_ready r JOIN tc_edge e ON e.src = r.node"
            " UNION ALL"
            " SELECT e.src, q.dst, e.n * q.n FROM tc_ready r JOIN tc_edge e ON e.src = r.node"
            " JOIN tc_rank k ON k.node = e.dst JOIN tc_closure q ON q.round = k.round AND q.src = e.dst"
            ") AS paths GROUP BY a, d ORDER BY a, d",
            "DELETE FROM tc_next",
            # the parents of this round's nodes, with how many of their waits this round ends
            "INSERT INTO tc_next (node, settled) SELECT e.src, count(*) FROM tc_ready r JOIN tc_edge e ON e.dst = r.node"
            " GROUP BY e.src",
            # without fresh statistics PostgreSQL would scan all of tc_waiting for the few parents, every round
            *(["ANALYZE tc_next"] if dialect == "postgresql" else []),
            "DELETE FROM tc_waiting WHERE node IN (SELECT node FROM tc_ready)",
            "UPDATE tc_waiting SET waiting = waiting - x.settled FROM tc_next x WHERE tc_waiting.node = x.node",
            "DELETE FROM tc_ready",
        ]

    next_ready = "INSERT INTO tc_ready (node) SELECT w.node FROM tc_waiting w JOIN tc_next x ON x.node = w.node WHERE w.waiting = 0"
    settled = 0
    number = 0
    ready = connection.exec_driver_sql("SELECT count(*) FROM tc_ready").scalar_one()
    while ready:
        _execute_script(connection, round_statements(number))
        number += 1
        settled += ready
        report(progress, "closure", settled, total)
        ready = connection.exec_driver_sql(next_ready).rowcount
        _execute_script(connection, analyze)
    if settled < total:
        raise ValidationError(f"{CYCLE_MESSAGE}: node {_node_on_cycle(connection)} reaches itself through links of types {list(link_types)}")
    rows = _copy_into_closure(connection)
    if dialect == "sqlite":
        _execute_script(connection, [f"DROP TABLE temp.{name}" for name in _BACKFILL_TABLES])
    return rows


def _node_on_cycle(connection: Connection) -> int:
    """A node on a cycle among the unsettled nodes (each of which waits for an unsettled child)."""
    children: dict[int, int] = dict(
        connection.exec_driver_sql(
            "SELECT e.src, min(e.dst) FROM tc_edge e JOIN tc_waiting w ON w.node = e.src "
            "WHERE e.dst IN (SELECT node FROM tc_waiting) GROUP BY e.src"
        ).all()
    )
    node = min(children)
    seen: set[int] = set()
    while node not in seen:
        seen.add(node)
        node = children[node]
    return node


@contextlib.contextmanager
def closure_bulk_load(connection: Connection) -> Iterator[None]:
    """A block that fills an empty ``db_dbpath`` in bulk (in key order): its (ancestor, descendant) index is
    dropped for the block and built after it, and on PostgreSQL its key too (then the table is analysed), which
    is far faster than maintaining them row by row. SQLite keeps the key: it is the table itself."""
    postgresql = connection.dialect.name == "postgresql"
    paths = table_of(DbPath)
    # Plain DDL: SQLAlchemy's DropConstraint would also detach the key from the shared Table for later create_all.
    key = f'"{paths.primary_key.name}" PRIMARY KEY ({", ".join(column.name for column in paths.primary_key)})'
    for index in paths.indexes:
        index.drop(connection)
    if postgresql:
        connection.exec_driver_sql(f'ALTER TABLE db_dbpath DROP CONSTRAINT "{paths.primary_key.name}"')
    yield
    if postgresql:
        connection.exec_driver_sql(f"ALTER TABLE db_dbpath ADD CONSTRAINT {key}")
    for index in paths.indexes:
        index.create(connection)
    if postgresql:
        connection.exec_driver_sql("ANALYZE db_dbpath")


def _copy_into_closure(connection: Connection) -> int:
    """Copy the computed pairs into ``db_dbpath`` in its key order, (descendant, ancestor): SQLite's table is
    clustered on that key, and PostgreSQL's heap gets the same order (see :class:`~aiida_sqla_plugin.models.DbPath`)."""
    copy = "INSERT INTO db_dbpath (parent_id, child_id, path_count) SELECT src, dst, n FROM tc_closure ORDER BY dst, src"
    with closure_bulk_load(connection):
        rows = connection.exec_driver_sql(copy).rowcount
    return int(rows or 0)


def _as_validation_error(error: DBAPIError) -> ValidationError | None:
    message = str(error.orig) if error.orig is not None else str(error)
    if CYCLE_MESSAGE not in message:
        return None
    return ValidationError(error_line(error))


def install_tc(
    session: Session,
    link_types: Iterable[str] = DEFAULT_CLOSURE_LINK_TYPES,
    progress: ProgressCallback | None = None,
    *,
    backfill: bool = True,
) -> None:
    """Install the closure triggers on ``db_dblink``, refill ``db_dbpath`` from the links and record the types.

    Reinstalling (with the same or other link types) replaces the triggers and recomputes the closure.
    ``backfill=False`` leaves ``db_dbpath`` as it is: for a caller that has just filled it with the exact closure
    of these links (a copy of another storage's, with the same link types). Runs in
    the caller's transaction if there is one, else in its own that it commits
    (:func:`~aiida_sqla_plugin.session.transaction`). Raises :class:`ValidationError` (and undoes its work) for
    bad link types or a cycle among the covered links.
    """
    types = validate_link_types(link_types)
    dialect = _dialect(session)
    names = _default_names()
    statements = _pg_statements(names, types) if dialect == "postgresql" else _sqlite_statements(names, types)
    try:
        with transaction(session, write=True):
            connection = session.connection()
            # Table locks first (the DDL waits for writers in flight, which may need the closure lock), then the lock.
            _execute_script(connection, statements)
            _lock(connection, dialect, names)
            if backfill:
                connection.execute(delete(table_of(DbPath)))
                _backfill(connection, dialect, types, progress)
            upsert = dialect_insert(dialect, DbSetting).values(
                key=CLOSURE_SETTING_KEY,
                val=list(types),
                description="Link types covered by the transitive closure in db_dbpath",
                time=utc_now(),
            )
            connection.execute(
                upsert.on_conflict_do_update(index_elements=["key"], set_={"val": upsert.excluded.val, "time": upsert.excluded.time})
            )
    except DBAPIError as error:
        wrapped = _as_validation_error(error)
        if wrapped is None:
            raise
        raise wrapped from error


def uninstall_tc(session: Session) -> None:
    """Drop the closure triggers, empty ``db_dbpath`` and delete the closure setting (the transaction rule applies)."""
    dialect = _dialect(session)
    names = _default_names()
    with transaction(session, write=True):
        connection = session.connection()
        _execute_script(connection, _pg_drop_statements(names) if dialect == "postgresql" else _sqlite_drop_statements(names))
        _lock(connection, dialect, names)
        connection.execute(delete(table_of(DbPath)))
        settings = table_of(DbSetting)
        connection.execute(delete(settings).where(settings.c.key == CLOSURE_SETTING_KEY))


def delete_closed_nodes(connection: Connection, pks: set[int], delete_rows: Callable[[], None]) -> bool:
    """Run ``delete_rows`` (deleting the nodes ``pks`` and their links) with one set-based closure update if possible.

    When no covered link leads from a node of ``pks`` to a node outside it (AiiDA's default deletion rules
    guarantee that), no surviving pair has a path through a deleted node, so the closure loses exactly the pairs
    whose descendant is deleted: the per-link triggers are switched off for this transaction's deletion and those
    pairs go in one statement. Returns False (and runs nothing) when the closure is not installed or ``pks`` is not
    closed under covered descendants; the caller then deletes through the triggers, which recount exactly.
    Runs in the caller's transaction; on PostgreSQL the caller must hold a lock excluding other link writers.
    """
    types = installed_link_types(connection)
    if types is None or not pks:
        return False
    dialect = connection.dialect.name
    links, paths = table_of(DbLink), table_of(DbPath)
    escaping = select(links.c.id).where(
        links.c.type.in_(string_select(dialect, types)),
        links.c.input_id.in_(id_select(dialect, pks)),
        links.c.output_id.not_in(id_select(dialect, pks)),
    )
    if connection.execute(escaping.limit(1)).first() is not None:
        return False
    names = _default_names()
    _lock(connection, dialect, names)  # the caller holds the table lock already
    with _row_maintenance_off(connection, names, types, "delete"):
        delete_rows()
    connection.execute(delete(paths).where(paths.c.child_id.in_(id_select(dialect, pks))))
    return True


@contextlib.contextmanager
def _row_maintenance_off(connection: Connection, names: _Names, types: frozenset[str], event: str) -> Iterator[None]:
    """The closure triggers off for the ``event`` ("insert" or "delete") statements of the block.

    PostgreSQL: DISABLE TRIGGER, which is transactional and takes SHARE ROW EXCLUSIVE on the links (other link
    writers wait for the commit). ENABLE refuses a table with pending trigger events, so the deferred foreign-key
    checks of the block's links are run first (SET CONSTRAINTS ... IMMEDIATE, then back to DEFERRED). SQLite,
    whose DDL is transactional too: the row triggers are dropped and created again. An error in the block leaves
    them off, for the caller's rollback to undo.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"ALTER TABLE {names.links} DISABLE TRIGGER {names.obj(event)}")
        yield
        deferred = connection.exec_driver_sql(
            "SELECT string_agg(quote_ident(conname), ', ') FROM pg_constraint "
            f"WHERE conrelid = '{names.links}'::regclass AND contype = 'f' AND condeferred"
        ).scalar_one()
        if deferred:
            connection.exec_driver_sql(f"SET CONSTRAINTS {deferred} IMMEDIATE")
        connection.exec_driver_sql(f"ALTER TABLE {names.links} ENABLE TRIGGER {names.obj(event)}")
        if deferred:
            connection.exec_driver_sql(f"SET CONSTRAINTS {deferred} DEFERRED")
    else:
        _execute_script(connection, _sqlite_drop_statements(names))
        yield
        _execute_script(connection, _sqlite_statements(names, tuple(sorted(types))))


_BATCH_TABLES = ("tc_batch", "tc_bdep", "tc_bwait", "tc_bready", "tc_bnext", "tc_bwave")


def _add_batch(connection: Connection, link_types: frozenset[str], link_ids: Iterable[int]) -> None:
    """Add the stored links ``link_ids`` (not yet in the closure) to an exact SQLite closure, set-based.

    The batch's covered (input, output) pairs are grouped; a source ``u`` must wait for every batch source ``u'``
    with a batch link ``u' -> v'`` where ``v'`` is ``u`` or reaches it in the closure before the batch. Sources
    are then settled in waves (Kahn's algorithm): no path runs through two links of one wave, so one upsert per
    wave adds ``n * cnt(a -> u) * cnt(v -> d)`` for all its links, summed per pair, and the pairs it reads are
    never among those it changes. Sources left unsettled wait on a cycle.
    """
    dialect = "sqlite"
    _execute_script(connection, [f"DROP TABLE IF EXISTS temp.{name}" for name in _BATCH_TABLES])
    _execute_script(
        connection,
        [
            f"CREATE TEMPORARY TABLE tc_batch (src bigint NOT NULL, dst bigint NOT NULL, n bigint NOT NULL)",
            f"CREATE TEMPORARY TABLE tc_bdep (prior bigint NOT NULL, later bigint NOT NULL)",
            f"CREATE TEMPORARY TABLE tc_bwait (node bigint PRIMARY KEY, waiting bigint NOT NULL)",
            f"CREATE TEMPORARY TABLE tc_bready (node bigint PRIMARY KEY)",
            f"CREATE TEMPORARY TABLE tc_bnext (node bigint PRIMARY KEY)",
            f"CREATE TEMPORARY TABLE tc_bwave (src bigint NOT NULL, dst bigint NOT NULL, n bigint NOT NULL)",
        ],
    )
    links = table_of(DbLink)
    batch = table("tc_batch", column("src"), column("dst"), column("n"))
    inserted = connection.execute(
        insert(batch).from_select(
            ["src", "dst", "n"],
            select(links.c.input_id, links.c.output_id, func.count())
            .where(links.c.id.in_(id_select(dialect, link_ids)), links.c.type.in_(string_select(dialect, link_types)))
            .group_by(links.c.input_id, links.c.output_id),
        )
    ).rowcount
    if inserted:
        _execute_script(
            connection,
            [
                "CREATE INDEX tc_batch_src ON tc_batch (src)",
                "CREATE INDEX tc_batch_dst ON tc_batch (dst)",
                # u' -> u: a batch link u' -> v' whose output is u or (before the batch) an ancestor of u
                "INSERT INTO tc_bdep (prior, later) SELECT DISTINCT b.src, s.src FROM tc_batch b"
                " JOIN (SELECT DISTINCT src FROM tc_batch) s ON s.src = b.dst"
                " UNION SELECT b.src, p.child_id FROM tc_batch b JOIN db_dbpath p ON p.parent_id = b.dst"
                " WHERE p.child_id IN (SELECT src FROM tc_batch)",
                "CREATE INDEX tc_bdep_prior ON tc_bdep (prior)",
                "CREATE INDEX tc_bdep_later ON tc_bdep (later)",
                "INSERT INTO tc_bwait (node, waiting) SELECT s.src, (SELECT count(*) FROM tc_bdep d WHERE d.later = s.src)"
                " FROM (SELECT DISTINCT src FROM tc_batch) s",
                "INSERT INTO tc_bready (node) SELECT node FROM tc_bwait WHERE waiting = 0",
            ],
        )
        # (ancestor-or-self of u) x (descendant-or-self of v) for every wave link u -> v (in tc_bwave); CROSS JOIN
        # fixes SQLite's join order (the wave first, then the indexes).
        paths = " UNION ALL ".join(
            [
                "SELECT b.src AS a, b.dst AS d, b.n AS c FROM tc_bwave b",
                "SELECT p.parent_id, b.dst, b.n * p.path_count FROM tc_bwave b CROSS JOIN db_dbpath p WHERE p.child_id = b.src",
                "SELECT b.src, q.child_id, b.n * q.path_count FROM tc_bwave b CROSS JOIN db_dbpath q WHERE q.parent_id = b.dst",
                "SELECT p.parent_id, q.child_id, b.n * p.path_count * q.path_count FROM tc_bwave b"
                " CROSS JOIN db_dbpath p CROSS JOIN db_dbpath q WHERE p.child_id = b.src AND q.parent_id = b.dst",
            ]
        )
        wave = (
            f"INSERT INTO db_dbpath (parent_id, child_id, path_count) SELECT a, d, sum(c) FROM ({paths}) AS new_paths"
            " WHERE true GROUP BY a, d ORDER BY d, a"  # the table's key order
            " ON CONFLICT (parent_id, child_id) DO UPDATE SET path_count = db_dbpath.path_count + excluded.path_count"
        )
        round_statements = [
            "DELETE FROM tc_bwave",
            "DELETE FROM tc_bnext",
            "INSERT INTO tc_bnext (node) SELECT DISTINCT d.later FROM tc_bready r CROSS JOIN tc_bdep d WHERE d.prior = r.node",
            "DELETE FROM tc_bwait WHERE node IN (SELECT node FROM tc_bready)",
            "UPDATE tc_bwait SET waiting = waiting - x.settled FROM (SELECT d.later, count(*) AS settled"
            " FROM tc_bready r CROSS JOIN tc_bdep d WHERE d.prior = r.node GROUP BY d.later) AS x WHERE tc_bwait.node = x.later",
            "DELETE FROM tc_bready",
            "INSERT INTO tc_bready (node) SELECT w.node FROM tc_bwait w JOIN tc_bnext x ON x.node = w.node WHERE w.waiting = 0",
        ]
        fill_wave = "INSERT INTO tc_bwave (src, dst, n) SELECT b.src, b.dst, b.n FROM tc_bready r CROSS JOIN tc_batch b WHERE b.src = r.node"
        while connection.exec_driver_sql(fill_wave).rowcount:
            connection.exec_driver_sql(wave)
            _execute_script(connection, round_statements)
        stuck = connection.exec_driver_sql("SELECT min(node) FROM tc_bwait").scalar_one()
        if stuck is not None:
            raise ValidationError(f"{CYCLE_MESSAGE}: these links would close a cycle through node {stuck}")
    _execute_script(connection, [f"DROP TABLE temp.{name}" for name in _BATCH_TABLES])


def insert_closed_links(connection: Connection, insert_rows: Callable[[], list[int]], rows: int) -> list[int]:
    """Run ``insert_rows`` (storing ``rows`` links, returning their ids) and add them to the closure, in the
    caller's transaction; raises :class:`ValidationError` when the links close a cycle.

    PostgreSQL's triggers are per statement over the transition table already, but still update the pairs link
    after link; a batch there with at least as many rows as there are covered links stored is therefore stored
    with the insert trigger off, and the closure recomputed from all the links by the install's algorithm
    (:func:`_backfill`, each pair written once). Smaller batches there just go through the trigger. SQLite's
    triggers are per row: they are switched off for the insertion and :func:`_add_batch` adds the whole batch in
    topological waves (measured faster there than a recompute, even into an empty closure). Without an installed
    closure it just runs ``insert_rows``.
    """
    types = installed_link_types(connection)
    if types is None:
        return insert_rows()
    names = _default_names()
    if connection.dialect.name == "postgresql":
        links = table_of(DbLink)
        # Counting stops at ``rows``: the cost of the test is bounded by the batch, not by the links table.
        stored = select(links.c.id).where(links.c.type.in_(string_select("postgresql", types))).limit(rows).subquery()
        if connection.execute(select(func.count()).select_from(stored)).scalar_one() >= rows:
            return insert_rows()
        with _row_maintenance_off(connection, names, types, "insert"):  # the table lock first, then the closure lock
            _lock(connection, "postgresql", names)
            ids = insert_rows()
        connection.execute(delete(table_of(DbPath)))
        _backfill(connection, "postgresql", tuple(sorted(types)), None)
        return ids
    with _row_maintenance_off(connection, names, types, "insert"):
        ids = insert_rows()
    _add_batch(connection, types, ids)
    return ids


def rebuild_tc(session: Session, progress: ProgressCallback | None = None) -> None:
    """Recompute the closure from the links (and reinstall its triggers) with the installed link types.

    :class:`NotExistent` when no closure is installed, :class:`ValidationError` on a cycle.
    """
    types = installed_link_types(session.connection())
    if types is None:
        raise NotExistent("no transitive closure is installed; use install_tc()")
    install_tc(session, types, progress)


def closure_status(session: Session) -> ClosureStatus:
    """Whether the closure is installed, for which link types, its row count and the number of covered links."""
    connection = session.connection()
    types = installed_link_types(connection)
    rows = connection.execute(select(func.count()).select_from(DbPath.__table__)).scalar_one()
    if types is None:
        return ClosureStatus(False, (), int(rows), 0)
    ordered = tuple(sorted(types))
    links = connection.execute(
        select(func.count()).select_from(DbLink.__table__).where(DbLink.type.in_(string_select(_dialect(session), ordered)))
    ).scalar_one()
    return ClosureStatus(True, ordered, int(rows), int(links))
