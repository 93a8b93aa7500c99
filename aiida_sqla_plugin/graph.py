"""Provenance-graph operations: node deletion with AiiDA's traversal rules, ancestors and descendants.

Every query is set-based and takes its ids as one bound parameter (:func:`~aiida_sqla_plugin.sql.id_select`),
so any number of nodes works on both dialects: the deletion traversal runs one query per step of its frontier,
ancestors and descendants one recursive CTE (or one query on the closure table ``db_dbpath`` when it is installed
for exactly the requested link types).

Each call runs in :meth:`SqlaBackend.transaction`: it commits, unless it is called inside another
``transaction()`` block, where it works in a savepoint and the outer block commits.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

from sqlalchemy import Select, delete, literal, select, union
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute

from .backend import SqlaBackend, get_backend
from .closure import delete_closed_nodes, installed_link_types
from .exceptions import AiidaSqlaError, ValidationError
from .links import DEFAULT_CLOSURE_LINK_TYPES, validate_link_types
from .models import DbGroup, DbGroupNode, DbLink, DbNode, DbPath, table_of
from .progress import ProgressCallback, report
from .session import idempotent_read, transaction
from .sql import id_select


__all__ = (
    "ConcurrentGraphChange",
    "DELETE_TRAVERSAL_RULES",
    "delete_group_nodes",
    "delete_nodes",
    "delete_nodes_and_connections_sqla",
    "get_ancestors",
    "get_descendants",
)

LOGGER = logging.getLogger(__name__)


#: AiiDA's DELETE rules: ``rule name -> (default, toggleable)``; True means "follow links of that type that way".
#: "forward" follows a link from its input to its output, "backward" from its output to its input.
DELETE_TRAVERSAL_RULES: Mapping[str, tuple[bool, bool]] = {
    "create_forward": (True, True),
    "create_backward": (True, False),
    "return_forward": (False, False),
    "return_backward": (True, False),
    "input_calc_forward": (True, False),
    "input_calc_backward": (False, False),
    "input_work_forward": (True, False),
    "input_work_backward": (False, False),
    "call_calc_forward": (True, True),
    "call_calc_backward": (True, False),
    "call_work_forward": (True, True),
    "call_work_backward": (True, False),
}


class ConcurrentGraphChange(AiidaSqlaError):
    """The nodes a confirmed deletion would remove changed between the confirmation and the deletion."""


#: ``dry_run`` of :func:`delete_nodes`: a bool, or a callable given the pks that would go, returning True to stop.
DryRun = bool | Callable[[set[int]], bool]


# ---------------------------------------------------------------------------------------------------- helpers


def _ids(values: Iterable[int], what: str) -> set[int]:
    """``values`` as a set of ints; anything else (including bools and a bare string) is a ValidationError."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValidationError(f"{what} must be an iterable of integers, not {type(values).__name__}")
    result: set[int] = set()
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"{what} must be integers; got {value!r}")
        result.add(int(value))
    return result


def _dialect(connection: Connection) -> str:
    return connection.dialect.name


@contextlib.contextmanager
def _connection(backend: SqlaBackend | None, write: bool) -> Iterator[Connection]:
    """The connection of the backend session's transaction, under :func:`~aiida_sqla_plugin.session.transaction`.

    A write begins a new SQLite transaction IMMEDIATE: a deferred one that reads first could not take the write
    lock later if another process wrote in between. On PostgreSQL a write calls :func:`_lock_links` once it
    knows what to delete.
    """
    with transaction(get_backend(backend).get_session(), write=write) as session:
        connection = session.connection()
        session.flush()  # the caller's pending ORM changes take part in the graph
        yield connection


def _lock_links(connection: Connection) -> None:
    """PostgreSQL: lock ``db_dblink`` against other writers (readers go on) until the transaction commits.

    Taking it waits for the link writers in flight to commit; statements after it (READ COMMITTED) see their links,
    and no other link can be committed until the deletion is. Link writers elsewhere in the graph wait for it too,
    which is why a deletion traverses first without it and then only checks, under it, that the set is closed.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"LOCK TABLE {DbLink.__tablename__} IN SHARE ROW EXCLUSIVE MODE")


def _locked_traversal(
    connection: Connection, start: set[int], rules: Mapping[str, bool], progress: ProgressCallback | None
) -> set[int]:
    """The nodes to delete from ``start``, with ``db_dblink`` locked as :func:`_lock_links` for the rest of the
    transaction.

    The full traversal runs before the lock, so other writers wait only for one more traversal step over the set
    found (which finds nothing new unless a link was committed meanwhile, and then follows it) and the deletion.
    """
    candidates = _traverse(connection, start, rules, progress)
    _lock_links(connection)
    if not candidates or connection.dialect.name != "postgresql":
        return candidates  # SQLite: the IMMEDIATE transaction kept every other writer out all along
    return _traverse(connection, candidates, rules, None)


def _existing(
    connection: Connection, pks: set[int], column: InstrumentedAttribute[int], what: str, warn: bool
) -> set[int]:
    """The subset of ``pks`` present in ``column``'s table; warn about the others if ``warn``."""
    statement = select(column).where(column.in_(id_select(_dialect(connection), pks)))
    found = {row[0] for row in connection.execute(statement)}
    missing = pks - found
    if missing and warn:
        shown = ", ".join(map(str, sorted(missing)[:20])) + (", ..." if len(missing) > 20 else "")
        LOGGER.warning("%d %s do not exist and are skipped: %s", len(missing), what, shown)
    return found


# ---------------------------------------------------------------------------------------------------- deletion


def _delete_rows(connection: Connection, pks: set[int]) -> None:
    """Delete the nodes ``pks``, their links in both directions and group memberships (comments, logs cascade).

    With the closure installed and ``pks`` closed under covered descendants, the closure loses the deleted
    nodes' pairs in one statement instead of a recount per deleted link (:func:`delete_closed_nodes`).
    """
    if not delete_closed_nodes(connection, pks, lambda: _delete_plain(connection, pks)):
        _delete_plain(connection, pks)


def _delete_plain(connection: Connection, pks: set[int]) -> None:
    dialect = _dialect(connection)
    link = table_of(DbLink)
    connection.execute(delete(link).where(link.c.input_id.in_(id_select(dialect, pks))))
    connection.execute(delete(link).where(link.c.output_id.in_(id_select(dialect, pks))))
    membership = table_of(DbGroupNode)
    connection.execute(delete(membership).where(membership.c.dbnode_id.in_(id_select(dialect, pks))))
    node = table_of(DbNode)
    connection.execute(delete(node).where(node.c.id.in_(id_select(dialect, pks))))


def delete_nodes_and_connections_sqla(pks_to_delete: Iterable[int], backend: SqlaBackend | None = None) -> None:
    """Delete the nodes ``pks_to_delete`` and every link into or out of them, their group memberships, comments
    and logs, in one transaction; nothing else is touched. Unknown pks are ignored, no input is a no-op.

    Any number of pks costs four statements. No graph traversal is done: see :func:`delete_nodes` for that.
    """
    pks = _ids(pks_to_delete, "pks_to_delete")
    if not pks:
        return
    with _connection(backend, write=True) as connection:
        _lock_links(connection)
        _delete_rows(connection, pks)


def _validate_rules(traversal_rules: Mapping[str, object]) -> dict[str, bool]:
    """The full DELETE rule set with the given overrides; invalid names, values or fixed-rule changes raise."""
    rules = {name: default for name, (default, _) in DELETE_TRAVERSAL_RULES.items()}
    for name, value in traversal_rules.items():
        if name not in DELETE_TRAVERSAL_RULES:
            raise ValidationError(f"unknown traversal rule {name!r}; known: {', '.join(DELETE_TRAVERSAL_RULES)}")
        if not isinstance(value, bool):
            raise ValidationError(f"traversal rule {name!r} must be a bool, not {value!r}")
        default, toggleable = DELETE_TRAVERSAL_RULES[name]
        if not toggleable and value != default:
            raise ValidationError(f"traversal rule {name!r} is fixed to {default} when deleting")
        rules[name] = value
    return rules


def _traverse(
    connection: Connection, start: set[int], rules: Mapping[str, bool], progress: ProgressCallback | None
) -> set[int]:
    """Every node reachable from ``start`` following ``rules`` (``start`` included), one query per frontier step."""
    dialect = _dialect(connection)
    forward = [name.removesuffix("_forward") for name, on in rules.items() if on and name.endswith("_forward")]
    backward = [name.removesuffix("_backward") for name, on in rules.items() if on and name.endswith("_backward")]
    visited = set(start)
    frontier = set(start)
    report(progress, "traverse", len(visited), None)
    while frontier:
        parts: list[Select[int]] = []
        if forward:
            parts.append(
                select(DbLink.output_id.label("id")).where(
                    DbLink.input_id.in_(id_select(dialect, frontier)), DbLink.type.in_(forward)
                )
            )
        if backward:
            parts.append(
                select(DbLink.input_id.label("id")).where(
                    DbLink.output_id.in_(id_select(dialect, frontier)), DbLink.type.in_(backward)
                )
            )
        if not parts:
            break
        statement = union(*parts) if len(parts) > 1 else parts[0]
        reached = {row[0] for row in connection.execute(statement)}
        frontier = reached - visited
        visited |= frontier
        report(progress, "traverse", len(visited), None)
    return visited


def _delete_from(
    start: Callable[[Connection, bool], set[int]],
    dry_run: DryRun,
    backend: SqlaBackend | None,
    progress: ProgressCallback | None,
    traversal_rules: Mapping[str, object],
) -> tuple[set[int], bool]:
    """Traverse from the nodes ``start(connection)`` gives, then delete unless ``dry_run`` says otherwise."""
    rules = _validate_rules(traversal_rules)
    if not (isinstance(dry_run, bool) or callable(dry_run)):
        raise ValidationError(f"dry_run must be a bool or a callable, not {dry_run!r}")
    backend = get_backend(backend)

    if dry_run is False:
        with _connection(backend, write=True) as connection:
            pks = _locked_traversal(connection, start(connection, True), rules, progress)
            if pks:
                report(progress, "delete", 0, len(pks))
                _delete_rows(connection, pks)
                report(progress, "delete", len(pks), len(pks))
        return pks, True

    with _connection(backend, write=False) as connection:
        pks = _traverse(connection, start(connection, True), rules, progress)
    if not pks:
        return pks, True  # as AiiDA: nothing to delete counts as done
    if dry_run is True or dry_run(set(pks)):
        return pks, False

    # Confirmed outside any transaction (a prompt may take long); check the graph did not change meanwhile.
    with _connection(backend, write=True) as connection:
        again = _locked_traversal(connection, start(connection, False), rules, None)
        if again != pks:
            raise ConcurrentGraphChange(
                f"the nodes to delete changed while dry_run confirmed them ({len(pks)} then {len(again)}); "
                "nothing was deleted"
            )
        report(progress, "delete", 0, len(pks))
        _delete_rows(connection, pks)
        report(progress, "delete", len(pks), len(pks))
    return pks, True


def delete_nodes(
    pks: Iterable[int],
    dry_run: DryRun = True,
    backend: SqlaBackend | None = None,
    progress: ProgressCallback | None = None,
    **traversal_rules: bool,
) -> tuple[set[int], bool]:
    """Delete the nodes ``pks`` and every node AiiDA's DELETE rules drag along; return ``(pks, deleted)``.

    Deleting a data node deletes the processes that used or created it and what they created, recursively; a
    calculation takes its callers and (``create_forward``) its outputs, never its inputs; a workflow its callers
    and (``call_calc_forward``, ``call_work_forward``) what it called. Only those three rules may be switched
    (see :data:`DELETE_TRAVERSAL_RULES`). Missing pks are skipped with a warning.

    ``dry_run=True`` deletes nothing; a callable ``dry_run`` gets the pks that would go and returns True to stop.
    With a callable the confirmation runs outside the transaction; if the set changed by the time of deletion,
    :class:`ConcurrentGraphChange` is raised and nothing is deleted. ``deleted`` is True when the deletion ran
    (also when there was nothing to delete, as in AiiDA). ``progress`` gets ``"traverse"`` and ``"delete"``.
    """
    start = _ids(pks, "pks")

    def nodes(connection: Connection, warn: bool) -> set[int]:
        return _existing(connection, start, DbNode.id, "nodes", warn) if start else set()

    return _delete_from(nodes, dry_run, backend, progress, traversal_rules)


def delete_group_nodes(
    group_pks: Iterable[int],
    dry_run: DryRun = True,
    backend: SqlaBackend | None = None,
    progress: ProgressCallback | None = None,
    **traversal_rules: bool,
) -> tuple[set[int], bool]:
    """:func:`delete_nodes` starting from the nodes of the groups ``group_pks`` (the groups themselves stay).

    Missing groups are skipped with a warning.
    """
    groups = _ids(group_pks, "group_pks")

    def nodes(connection: Connection, warn: bool) -> set[int]:
        if not groups:
            return set()
        found = _existing(connection, groups, DbGroup.id, "groups", warn)
        if not found:
            return set()
        members = select(DbGroupNode.dbnode_id).where(
            DbGroupNode.dbgroup_id.in_(id_select(_dialect(connection), found))
        )
        return {row[0] for row in connection.execute(members)}

    return _delete_from(nodes, dry_run, backend, progress, traversal_rules)


# ---------------------------------------------------------------------------------------------------- ancestry


def _validate_depth(max_depth: int | None) -> int | None:
    if max_depth is None:
        return None
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
        raise ValidationError(f"max_depth must be None or an integer >= 0, not {max_depth!r}")
    return max_depth


def _reachable(
    pks: Iterable[int],
    link_types: Collection[str] | str,
    max_depth: int | None,
    backend: SqlaBackend | None,
    upward: bool,
) -> set[int]:
    """Nodes reachable from ``pks`` by one or more links of ``link_types`` (against links when ``upward``)."""
    start = _ids(pks, "pks")
    types = validate_link_types(link_types)
    depth = _validate_depth(max_depth)
    if not start or depth == 0:
        return set()
    near, far = (DbLink.output_id, DbLink.input_id) if upward else (DbLink.input_id, DbLink.output_id)
    with _connection(backend, write=False) as connection:
        dialect = _dialect(connection)
        if depth is None and installed_link_types(connection) == frozenset(types):
            mine, other = (DbPath.child_id, DbPath.parent_id) if upward else (DbPath.parent_id, DbPath.child_id)
            statement = (
                select(other).distinct().where(mine.in_(id_select(dialect, start)), DbPath.parent_id != DbPath.child_id)
            )
            return {row[0] for row in connection.execute(statement)}

        if depth is None:
            # UNION (not UNION ALL) over (node, reached): each node enters the CTE at most twice, whatever the
            # number of paths. The anchor is the start nodes themselves (reached = 0), so no statement filters the
            # links by a list of ids: SQLite would scan them by the type index and probe the list (30x slower).
            ids = id_select(dialect, start).subquery()
            anchor = select(ids.c.id.label("id"), literal(0).label("reached"))
            reached = anchor.cte("reached", recursive=True)
            step = (
                select(far, literal(1))
                .select_from(reached)
                .join(DbLink.__table__, near == reached.c.id)
                .where(DbLink.type.in_(types))
            )
            reached = reached.union(step)
            statement = select(reached.c.id).where(reached.c.reached == 1)  # a node may come twice: the set dedupes
            return {row[0] for row in connection.execute(statement)}

        # Bounded depth: breadth-first, one query per level, each node expanded once.
        found: set[int] = set()
        expanded = set(start)
        frontier = set(start)
        for _ in range(depth):
            statement = select(far).distinct().where(near.in_(id_select(dialect, frontier)), DbLink.type.in_(types))
            level = {row[0] for row in connection.execute(statement)}
            found |= level
            frontier = level - expanded
            expanded |= frontier
            if not frontier:
                break
        return found


@idempotent_read
def get_ancestors(
    pks: Iterable[int],
    link_types: Collection[str] | str = DEFAULT_CLOSURE_LINK_TYPES,
    max_depth: int | None = None,
    backend: SqlaBackend | None = None,
) -> set[int]:
    """Ids of the nodes from which a path of 1 to ``max_depth`` (None: any number of) links of ``link_types`` leads
    to one of ``pks``.

    A start node is in the result only if it is itself an ancestor of a start node (the closure-table semantics).
    Answered from ``db_dbpath`` when the closure is installed for exactly these link types and ``max_depth`` is None.
    """
    return _reachable(pks, link_types, max_depth, backend, upward=True)


@idempotent_read
def get_descendants(
    pks: Iterable[int],
    link_types: Collection[str] | str = DEFAULT_CLOSURE_LINK_TYPES,
    max_depth: int | None = None,
    backend: SqlaBackend | None = None,
) -> set[int]:
    """Ids of the nodes reached from ``pks`` by a path of 1 to ``max_depth`` links of ``link_types``.

    Same conventions as :func:`get_ancestors`.
    """
    return _reachable(pks, link_types, max_depth, backend, upward=False)

