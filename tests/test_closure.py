"""The transitive closure ``db_dbpath``: exact path counts under every change of ``db_dblink``, on both dialects."""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import case, delete, func, select, text, update
from sqlalchemy import inspect as inspect_schema
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, InternalError, NotSupportedError
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateTable

from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.bulk import bulk_insert
from aiida_sqla_plugin.closure import (
    CLOSURE_SETTING_KEY,
    CYCLE_MESSAGE,
    ClosureStatus,
    closure_status,
    get_pg_tc,
    install_tc,
    installed_link_types,
    rebuild_tc,
    uninstall_tc,
)
from aiida_sqla_plugin.exceptions import NotExistent, ValidationError
from aiida_sqla_plugin.links import DEFAULT_CLOSURE_LINK_TYPES
from aiida_sqla_plugin.models import DbLink, DbNode, DbPath, DbSetting, DbUser
from helpers import closure, insert_links, insert_nodes

LINKS = DbLink.__table__
NODES = DbNode.__table__
PATHS = DbPath.__table__
Edge = tuple[int, int, str]  # (input, output, type)
CYCLE_ERRORS = (IntegrityError, InternalError)


# ------------------------------------------------------------------------------------------------ helpers


def add_nodes(connection: Connection, user_id: int, count: int) -> list[int]:
    """Store ``count`` nodes; returns their ids in order."""
    return insert_nodes(connection, [{"node_type": "data.core.int.Int.", "user_id": user_id} for _ in range(count)])


def expected_closure(edges: Iterable[Edge], types: Iterable[str] = DEFAULT_CLOSURE_LINK_TYPES) -> dict[tuple[int, int], int]:
    """Path counts computed in Python: DP over a topological order (asserts the covered graph is acyclic)."""
    covered = set(types)
    multiplicity = Counter((u, v) for u, v, kind in edges if kind in covered)
    successors: dict[int, list[tuple[int, int]]] = defaultdict(list)
    indegree: Counter[int] = Counter()
    nodes: set[int] = set()
    for (u, v), k in multiplicity.items():
        successors[u].append((v, k))
        indegree[v] += 1
        nodes |= {u, v}
    order = [node for node in nodes if indegree[node] == 0]
    for node in order:  # Kahn's algorithm: the list grows while it is walked
        for v, _ in successors[node]:
            indegree[v] -= 1
            if indegree[v] == 0:
                order.append(v)
    assert len(order) == len(nodes), "the model graph has a cycle"
    result: dict[tuple[int, int], int] = {}
    for source in nodes:
        counts: Counter[int] = Counter({source: 1})
        for node in order:  # topological: every count into `node` is final when it is expanded
            if counts[node]:
                for v, k in successors[node]:
                    counts[v] += counts[node] * k
        result.update({(source, node): n for node, n in counts.items() if node != source and n})
    return result


def is_acyclic(edges: Iterable[Edge], types: Iterable[str] = DEFAULT_CLOSURE_LINK_TYPES) -> bool:
    try:
        expected_closure(edges, types)
    except AssertionError:
        return False
    return True


def all_links(connection: Connection) -> list[Edge]:
    return [(u, v, kind) for u, v, kind in connection.execute(select(LINKS.c.input_id, LINKS.c.output_id, LINKS.c.type))]


def assert_exact(connection: Connection, types: Iterable[str] = DEFAULT_CLOSURE_LINK_TYPES) -> dict[tuple[int, int], int]:
    actual = closure(connection)
    assert actual == expected_closure(all_links(connection), types)
    return actual


@pytest.fixture
def engine(backend: SqlaBackend) -> Engine:
    return backend.engine


@pytest.fixture
def installed(backend: SqlaBackend, user: DbUser) -> Engine:
    """A migrated database with the closure installed (default link types)."""
    with Session(backend.engine) as session:
        install_tc(session)
    return backend.engine


@pytest.fixture
def nodes(installed: Engine, user: DbUser) -> list[int]:
    """Ten stored nodes, the closure installed."""
    with installed.begin() as connection:
        return add_nodes(connection, user.id, 10)


# ------------------------------------------------------------------------------------------------ exactness


def test_diamond_counts_two_paths(installed: Engine, nodes: list[int]) -> None:
    a, b, c, d = nodes[:4]
    with installed.begin() as connection:
        insert_links(connection, [(a, b, "create"), (a, c, "input_calc"), (b, d, "create"), (c, d, "create")])
    with installed.connect() as connection:
        assert closure(connection) == {(a, b): 1, (a, c): 1, (b, d): 1, (c, d): 1, (a, d): 2}


def test_parallel_links_are_distinct_paths(installed: Engine, nodes: list[int]) -> None:
    a, b, c = nodes[:3]
    with installed.begin() as connection:
        insert_links(connection, [(a, b, "create"), (a, b, "input_calc")])  # one statement, two parallel links
        insert_links(connection, [(b, c, "create")])
        insert_links(connection, [(b, c, "create")])  # a parallel link in a statement of its own
    with installed.connect() as connection:
        assert closure(connection) == {(a, b): 2, (b, c): 2, (a, c): 4}
    with installed.begin() as connection:
        connection.execute(delete(LINKS).where(LINKS.c.id == select(func.min(LINKS.c.id)).scalar_subquery()))
        assert closure(connection) == {(a, b): 1, (b, c): 2, (a, c): 2}


def test_chain_and_uncovered_types(installed: Engine, nodes: list[int]) -> None:
    chain = nodes[:6]
    with installed.begin() as connection:
        insert_links(connection, [(u, v, "create") for u, v in zip(chain, chain[1:])])
        insert_links(connection, [(chain[-1], chain[0], "return"), (nodes[7], nodes[8], "call_calc")])  # not covered
        result = assert_exact(connection)
    assert len(result) == 15 and set(result.values()) == {1}
    assert (chain[0], chain[5]) in result and (nodes[7], nodes[8]) not in result


def test_deletes_remove_paths_reaching_zero(installed: Engine, nodes: list[int]) -> None:
    a, b, c, d, e = nodes[:5]
    edges = [(a, b, "create"), (b, c, "create"), (a, c, "create"), (c, d, "input_calc"), (d, e, "create")]
    with installed.begin() as connection:
        insert_links(connection, edges)
        assert closure(connection)[(a, e)] == 2
        connection.execute(delete(LINKS).where(LINKS.c.input_id == a, LINKS.c.output_id == c))
        result = assert_exact(connection)
        assert result[(a, e)] == 1
        # one statement deleting several links, leaving others
        connection.execute(delete(LINKS).where(LINKS.c.output_id.in_([b, d])))
        assert closure(connection) == {(b, c): 1, (d, e): 1} == assert_exact(connection)
        connection.execute(delete(LINKS))
        assert closure(connection) == {}


def test_updates_of_endpoints(installed: Engine, nodes: list[int]) -> None:
    a, b, c, d = nodes[:4]
    with installed.begin() as connection:
        insert_links(connection, [(a, b, "create"), (b, c, "create"), (c, d, "create")])
        connection.execute(update(LINKS).where(LINKS.c.input_id == b).values(input_id=a))  # b->c becomes a->c
        assert closure(connection) == {(a, b): 1, (a, c): 1, (c, d): 1, (a, d): 1}
        connection.execute(update(LINKS).where(LINKS.c.output_id == d).values(output_id=b))  # c->d becomes c->b
        assert_exact(connection)
        connection.execute(update(LINKS).values(label="relabelled"))  # no endpoint change: nothing to do
        assert_exact(connection)


def test_multi_row_update_reversing_links(installed: Engine, nodes: list[int], dialect: str) -> None:
    a, b, c = nodes[:3]
    with installed.begin() as connection:
        insert_links(connection, [(a, b, "create"), (b, c, "create")])
        connection.execute(
            update(LINKS).values(input_id=LINKS.c.output_id, output_id=LINKS.c.input_id)
        )  # final graph c->b->a is acyclic
        assert closure(connection) == {(c, b): 1, (b, a): 1, (c, a): 1}


def test_multi_row_type_swap(installed: Engine, nodes: list[int], dialect: str) -> None:
    """Swapping which of a->b and b->a is covered, in one UPDATE: PostgreSQL applies removals first and accepts;
    SQLite works row by row and may see the transient cycle (then it rejects the whole statement)."""
    a, b = nodes[:2]
    with installed.begin() as connection:
        insert_links(connection, [(b, a, "return")])
        insert_links(connection, [(a, b, "create")])
    swap = update(LINKS).values(type=case((LINKS.c.type == "create", "return"), else_="create"))
    try:
        with installed.begin() as connection:
            connection.execute(swap)
    except CYCLE_ERRORS as error:
        assert dialect == "sqlite" and CYCLE_MESSAGE in str(error)
        with installed.connect() as connection:
            assert closure(connection) == {(a, b): 1}
    else:
        with installed.connect() as connection:
            assert closure(connection) == {(b, a): 1}


def test_type_change_moves_links_in_and_out(installed: Engine, nodes: list[int]) -> None:
    a, b, c = nodes[:3]
    with installed.begin() as connection:
        insert_links(connection, [(a, b, "create"), (b, c, "return")])
        assert closure(connection) == {(a, b): 1}
        connection.execute(update(LINKS).where(LINKS.c.input_id == b).values(type="input_calc"))  # moves in
        assert closure(connection) == {(a, b): 1, (b, c): 1, (a, c): 1}
        connection.execute(update(LINKS).where(LINKS.c.input_id == a).values(type="call_work"))  # moves out
        assert closure(connection) == {(b, c): 1}
        connection.execute(update(LINKS).where(LINKS.c.input_id == b).values(type="create"))  # covered -> covered
        assert closure(connection) == {(b, c): 1}


def test_node_delete_cascades_links_and_closure(installed: Engine, nodes: list[int]) -> None:
    a, b, c, d = nodes[:4]
    with installed.begin() as connection:
        insert_links(connection, [(a, b, "create"), (b, c, "create"), (a, c, "create"), (c, d, "create")])
    with installed.begin() as connection:
        connection.execute(delete(LINKS).where(LINKS.c.input_id == d))  # nothing: d has no outgoing links
        connection.execute(delete(LINKS).where(LINKS.c.input_id == c))  # the outgoing link blocks deletion of c
        connection.execute(delete(NODES).where(NODES.c.id == c))  # cascades a->c and b->c through output_id
        assert connection.execute(select(func.count()).select_from(LINKS)).scalar_one() == 1
        assert closure(connection) == {(a, b): 1}
    with installed.begin() as connection:
        connection.execute(delete(NODES).where(NODES.c.id == b))  # cascades the last link
        assert closure(connection) == {}


def test_cycles_are_rejected_by_the_trigger(installed: Engine, nodes: list[int], dialect: str) -> None:
    a, b, c = nodes[:3]
    with installed.begin() as connection:
        insert_links(connection, [(a, b, "create"), (b, c, "create")])
    attempts: list[list[Edge]] = [[(c, a, "input_calc")], [(b, b, "create")], [(a, c, "create"), (c, a, "create")]]
    for edges in attempts:
        with pytest.raises(CYCLE_ERRORS) as caught, installed.begin() as connection:
            insert_links(connection, edges)
        assert CYCLE_MESSAGE in str(caught.value)
        if dialect == "postgresql":
            assert f"from node {edges[-1][0]} to node {edges[-1][1]}" in str(caught.value)
    with pytest.raises(CYCLE_ERRORS, match=CYCLE_MESSAGE), installed.begin() as connection:
        connection.execute(update(LINKS).where(LINKS.c.input_id == b).values(input_id=c, output_id=a))  # b->c => c->a: ok
        connection.execute(update(LINKS).where(LINKS.c.input_id == a).values(type="input_calc"))  # no change
        connection.execute(update(LINKS).where(LINKS.c.input_id == a).values(input_id=b))  # b->b: self-loop
    with installed.begin() as connection:
        insert_links(connection, [(c, a, "return")])  # uncovered links may close cycles
    with pytest.raises(CYCLE_ERRORS, match=CYCLE_MESSAGE), installed.begin() as connection:
        connection.execute(update(LINKS).where(LINKS.c.type == "return").values(type="create"))
    with installed.connect() as connection:
        assert closure(connection) == {(a, b): 1, (b, c): 1, (a, c): 1}


# ------------------------------------------------------------------------------------------------ install & co


@pytest.mark.parametrize("rules", [{}, {"create_forward": False}], ids=["default-rules", "create-forward-off"])
def test_delete_nodes_keeps_the_closure_exact(backend: SqlaBackend, installed: Engine, user: DbUser, rules: dict[str, bool]) -> None:
    from aiida_sqla_plugin.graph import delete_nodes, delete_nodes_and_connections_sqla  # noqa: PLC0415

    kinds = ("create", "input_calc", "return", "input_work")
    with installed.begin() as connection:
        ids = add_nodes(connection, user.id, 40)
        insert_links(connection, [(ids[u], ids[v], kinds[(u * 5 + v) % len(kinds)]) for u, v in _random_dag(40, 3)])
    backend.close()  # a fresh session sees the links
    deleted, done = delete_nodes([ids[12], ids[30]], dry_run=False, backend=backend, **rules)
    backend.close()
    assert done and deleted
    with installed.connect() as connection:
        assert_exact(connection)
        left = sorted(connection.execute(select(NODES.c.id)).scalars())
    assert set(left).isdisjoint(deleted)
    # a set not closed under descendants (the raw deletion) falls back to the exact per-link recount
    delete_nodes_and_connections_sqla([left[1]], backend=backend)
    backend.close()
    with installed.begin() as connection:
        assert_exact(connection)
        insert_links(connection, [(left[0], left[-1], "create")])  # the triggers are back in place
        assert_exact(connection)


def _random_dag(count: int, seed: int) -> list[tuple[int, int]]:
    import random

    rng = random.Random(seed)
    return [(rng.randrange(0, j), j) for j in range(1, count) for _ in range(rng.choice((1, 1, 2, 3)))]


def test_install_backfill_matches_triggers(backend: SqlaBackend, user: DbUser) -> None:
    types = ("create", "input_calc", "input_work")
    kinds = ("create", "input_calc", "input_work", "return", "call_calc")
    with backend.engine.begin() as connection:
        ids = add_nodes(connection, user.id, 60)
        edges = [(ids[u], ids[v], kinds[(u * 7 + v) % len(kinds)]) for u, v in _random_dag(60, 1)]
        insert_links(connection, edges)
    calls: list[tuple[str, int, int | None]] = []
    with Session(backend.engine) as session:
        install_tc(session, types, progress=lambda what, done, total: calls.append((what, done, total)))
    assert calls and calls[-1][0] == "closure" and calls[-1][1] == calls[-1][2] and calls[-1][1] > 1
    with backend.engine.connect() as connection:
        backfilled = assert_exact(connection, types)
        assert installed_link_types(connection) == frozenset(types)
    assert len(backfilled) > 100
    # the same links stored one statement each through the triggers give the same table
    with backend.engine.begin() as connection:
        connection.execute(delete(LINKS))
        assert closure(connection) == {}
        for edge in edges:
            insert_links(connection, [edge])
        assert closure(connection) == backfilled
    with Session(backend.engine) as session:
        status = closure_status(session)
    assert status == ClosureStatus(True, tuple(sorted(types)), len(backfilled), sum(kind in types for *_, kind in edges))


def _link_rows(edges: Iterable[Edge]) -> list[dict[str, object]]:
    return [{"input_id": u, "output_id": v, "type": kind, "label": f"l{u}_{v}"} for u, v, kind in edges]


def test_bulk_links_update_the_closure_set_based(backend: SqlaBackend, installed: Engine, user: DbUser) -> None:
    """Batches whose links chain (within the batch and through links stored before) keep the closure exact."""
    kinds = ("create", "input_calc", "return", "create")
    with installed.begin() as connection:
        ids = add_nodes(connection, user.id, 80)
    edges = [(ids[u], ids[v], kinds[(u * 5 + v) % len(kinds)]) for u, v in _random_dag(80, 3)]
    first, second = edges[: len(edges) // 3], edges[len(edges) // 3 :]
    insert_links_through_triggers = first[: len(first) // 2]
    with installed.begin() as connection:
        insert_links(connection, insert_links_through_triggers)
    bulk_insert(backend, DbLink, _link_rows(first[len(first) // 2 :]))
    bulk_insert(backend, DbLink, _link_rows(second + second[:5]))  # parallel links in one batch
    with installed.begin() as connection:
        exact = assert_exact(connection)
        assert max(exact.values()) > 10 and len(exact) > 300
        # the row triggers are back: a later plain insert is counted too
        insert_links(connection, [(ids[0], ids[79], "create")])
        assert_exact(connection)


def test_bulk_links_large_and_small_batches_keep_the_closure_exact(backend: SqlaBackend, installed: Engine, user: DbUser) -> None:
    """A batch with more rows than covered links stored (on PostgreSQL the closure is then recomputed from all
    links) and a smaller one leave the exact closure, inside a caller's transaction too, with the triggers on."""
    with installed.begin() as connection:
        ids = add_nodes(connection, user.id, 60)
    edges = [(ids[u], ids[v], ("create", "input_calc", "return")[(u + v) % 3]) for u, v in _random_dag(60, 3)]
    large, small, last = edges[:-12], edges[-12:-4], edges[-4:]
    bulk_insert(backend, DbLink, _link_rows(large + large[:3]))  # into an empty closure, with parallel links
    with installed.connect() as connection:
        assert len(assert_exact(connection)) > 100
    bulk_insert(backend, DbLink, _link_rows(small))
    with installed.connect() as connection:
        assert_exact(connection)
    covered = [(u, v) for u, v, kind in last if kind != "return"]
    assert covered
    with backend.transaction(write=True) as session:  # the caller's: the recompute sees its uncommitted changes
        session.execute(DbLink.__table__.delete())
        bulk_insert(backend, DbLink, _link_rows(last))
        with pytest.raises(ValidationError, match=CYCLE_MESSAGE):
            bulk_insert(backend, DbLink, _link_rows([(covered[0][1], covered[0][0], "create")] * 5))
        assert len(session.execute(select(DbPath.parent_id)).all()) == len(expected_closure(last))
    with installed.connect() as connection:
        assert assert_exact(connection) == expected_closure(last)
        insert_links(connection, [(ids[0], ids[59], "create")])  # the row triggers are back
        connection.commit()
        assert_exact(connection)


def test_bulk_links_closing_a_cycle_store_nothing(backend: SqlaBackend, installed: Engine, nodes: list[int]) -> None:
    a, b, c, d = nodes[:4]
    bulk_insert(backend, DbLink, _link_rows([(a, b, "create")]))
    with installed.connect() as connection:
        before = closure(connection)
    for batch in ([(b, c, "create"), (c, d, "create"), (d, b, "input_calc")], [(b, a, "create")], [(c, c, "create")]):
        with pytest.raises(ValidationError, match=CYCLE_MESSAGE):
            bulk_insert(backend, DbLink, _link_rows(batch))
        with installed.connect() as connection:
            assert closure(connection) == before and len(all_links(connection)) == 1
    bulk_insert(backend, DbLink, _link_rows([(b, a, "return"), (b, c, "create")]))  # uncovered: no cycle
    with installed.connect() as connection:
        assert assert_exact(connection) == {(a, b): 1, (a, c): 1, (b, c): 1}


def test_install_rejects_existing_cycle(backend: SqlaBackend, user: DbUser) -> None:
    with backend.engine.begin() as connection:
        a, b, c, d = add_nodes(connection, user.id, 4)
        insert_links(connection, [(a, b, "create"), (b, c, "input_calc"), (c, b, "create"), (c, d, "return")])
    with Session(backend.engine) as session, pytest.raises(ValidationError, match=CYCLE_MESSAGE):
        install_tc(session)
    with Session(backend.engine) as session:  # rolled back: nothing installed, nothing left behind
        assert closure_status(session) == ClosureStatus(False, (), 0, 0)
    with backend.engine.begin() as connection:
        insert_links(connection, [(a, d, "create"), (a, d, "create")])  # no triggers: no error
        connection.execute(delete(LINKS).where(LINKS.c.input_id == c, LINKS.c.output_id == b))
    with Session(backend.engine) as session:
        install_tc(session, ["create", "input_calc", "return"])
        assert closure_status(session).rows == 6
    with backend.engine.connect() as connection:
        assert assert_exact(connection, ["create", "input_calc", "return"])[(a, d)] == 3
    with Session(backend.engine) as session:
        uninstall_tc(session)
    with backend.engine.begin() as connection:  # self-loops are cycles for the backfill too
        insert_links(connection, [(b, b, "create")])
    with Session(backend.engine) as session, pytest.raises(ValidationError, match=f"node {b} reaches itself"):
        install_tc(session)


def test_uninstall_and_rebuild(installed: Engine, nodes: list[int]) -> None:
    a, b, c = nodes[:3]
    with installed.begin() as connection:
        insert_links(connection, [(a, b, "create"), (b, c, "create")])
    with Session(installed) as session:
        assert closure_status(session) == ClosureStatus(True, DEFAULT_CLOSURE_LINK_TYPES, 3, 2)
        uninstall_tc(session)
        assert closure_status(session) == ClosureStatus(False, (), 0, 0)
        assert session.execute(select(DbSetting).where(DbSetting.key == CLOSURE_SETTING_KEY)).first() is None
    with installed.begin() as connection:
        insert_links(connection, [(c, a, "create")])  # triggers are gone: cycles and changes go unnoticed
        assert closure(connection) == {}
    with Session(installed) as session, pytest.raises(NotExistent):
        rebuild_tc(session)
    with installed.begin() as connection:
        connection.execute(delete(LINKS).where(LINKS.c.input_id == c))
    with Session(installed) as session:
        install_tc(session, ["input_calc"])  # nothing covered
        assert closure_status(session) == ClosureStatus(True, ("input_calc",), 0, 0)
        session.execute(update(DbSetting.__table__).where(DbSetting.key == CLOSURE_SETTING_KEY).values(val=["create"]))
        session.commit()
        rebuild_tc(session)
        assert closure_status(session) == ClosureStatus(True, ("create",), 3, 2)
    with installed.begin() as connection:
        assert assert_exact(connection)[(a, c)] == 1
        connection.execute(delete(PATHS))  # a damaged closure ...
        insert_links(connection, [(c, a, "create")])  # ... misses this cycle ...
        connection.execute(delete(LINKS).where(LINKS.c.input_id == c))
    with Session(installed) as session:
        rebuild_tc(session)  # ... and a rebuild repairs it
    with installed.connect() as connection:
        assert assert_exact(connection)[(a, c)] == 1


@pytest.mark.parametrize(
    "link_types", [(), "nonsense", ["create", "nonsense"], [None], ["create; DROP TABLE db_dbnode"]]
)
def test_bad_link_types(installed: Engine, link_types: object) -> None:
    with Session(installed) as session, pytest.raises(ValidationError):
        install_tc(session, link_types)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        get_pg_tc("db_dblink", "input_id", "output_id", "db_dbpath", "parent_id", "child_id", link_types)  # type: ignore[arg-type]
    with Session(installed) as session:
        assert closure_status(session).link_types == DEFAULT_CLOSURE_LINK_TYPES


@pytest.mark.parametrize(
    "bad", ['db_dblink"; DROP TABLE x; --', "1abc", "", "a b", "a.b", "x" * 64, None, "naïve"]
)
def test_get_pg_tc_rejects_bad_identifiers(bad: object) -> None:
    good = ["db_dblink", "input_id", "output_id", "db_dbpath", "parent_id", "child_id"]
    for position in range(len(good)):
        names = list(good)
        names[position] = bad  # type: ignore[call-overload]
        with pytest.raises(ValidationError):
            get_pg_tc(*names)


def test_get_pg_tc_quotes_names_and_types() -> None:
    sql = get_pg_tc("links", "src", "dst", "paths", "up", "down", ["return", "create"])
    assert 'AFTER INSERT ON "links" REFERENCING NEW TABLE' in sql
    assert "FOR EACH STATEMENT" in sql and "pg_advisory_xact_lock" in sql
    assert "\"type\" IN ('create', 'return')" in sql
    assert 'INSERT INTO "paths" AS t ("up", "down", path_count)' in sql


def test_generated_pg_sql_works_for_other_tables(dialect: str, engine: Engine, user: DbUser) -> None:
    if dialect == "sqlite":
        pytest.skip("get_pg_tc is PostgreSQL SQL")
    with engine.begin() as connection:
        connection.exec_driver_sql('CREATE TABLE "Edges" (id serial PRIMARY KEY, a int, b int, type text)')
        connection.exec_driver_sql("CREATE TABLE reach (anc int, des int, path_count bigint, PRIMARY KEY (anc, des))")
        sql = get_pg_tc("Edges", "a", "b", "reach", "anc", "des", ["call_calc"])
        connection.execution_options(no_parameters=True).exec_driver_sql(sql)
        connection.exec_driver_sql("INSERT INTO \"Edges\" (a, b, type) VALUES (1, 2, 'call_calc'), (2, 3, 'call_calc'), (1, 3, 'create')")
        rows = set(connection.exec_driver_sql("SELECT anc, des, path_count FROM reach").all())
    assert rows == {(1, 2, 1), (2, 3, 1), (1, 3, 1)}


def test_truncate_empties_the_closure(dialect: str, installed: Engine, nodes: list[int]) -> None:
    if dialect == "sqlite":
        pytest.skip("SQLite has no TRUNCATE")
    with installed.begin() as connection:
        insert_links(connection, [(nodes[0], nodes[1], "create")])
    with installed.begin() as connection:  # not in the same transaction: the deferred foreign keys are pending
        assert closure(connection) == {(nodes[0], nodes[1]): 1}
        connection.exec_driver_sql("TRUNCATE db_dblink")
        assert closure(connection) == {}


# ------------------------------------------------------------------------------------------------ concurrency


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "SERIALIZABLE"])
def test_concurrent_transactions_are_serialised(dialect: str, installed: Engine, nodes: list[int], isolation: str) -> None:
    """T1 adds a->b, T2 adds b->c while T1 is open; after both commit, (a, c) is in the closure.

    Under SERIALIZABLE, T2 may instead fail with a serialisation failure; the closure stays exact either way.
    """
    if dialect == "sqlite":
        pytest.skip("SQLite serialises writers itself")
    a, b, c = nodes[:3]
    first = installed.connect().execution_options(isolation_level=isolation)
    second = installed.connect().execution_options(isolation_level=isolation)
    errors: list[BaseException] = []
    try:
        first.begin()
        insert_links(first, [(a, b, "create")])  # T1 holds the closure lock until it commits
        second.begin()
        second.execute(select(func.count()).select_from(PATHS)).scalar_one()  # T2's snapshot predates T1's commit
        blocked = threading.Event()

        def run_second() -> None:
            try:
                insert_links(second, [(b, c, "create")])  # waits for T1's lock, then sees (a, b)
                blocked.set()
                second.commit()
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        thread = threading.Thread(target=run_second)
        thread.start()
        deadline = time.monotonic() + 20  # poll: a loaded machine may take a while to reach the lock
        waiting = 0
        while waiting == 0 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
            with installed.connect() as observer:
                waiting = observer.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                ).scalar_one()
        assert waiting == 1, "the second transaction must wait for the first one's closure lock"
        assert not blocked.is_set()
        first.commit()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        first.close()
        second.close()
    if isolation == "READ COMMITTED" or not errors:
        assert not errors
        expected = {(a, b): 1, (b, c): 1, (a, c): 1}
    else:
        assert len(errors) == 1 and getattr(errors[0].orig, "pgcode", None) == "40001", errors  # type: ignore[attr-defined]
        expected = {(a, b): 1}
    with installed.connect() as connection:
        assert closure(connection) == expected == assert_exact(connection)


def test_concurrent_cycle_is_rejected(dialect: str, installed: Engine, nodes: list[int]) -> None:
    if dialect == "sqlite":
        pytest.skip("SQLite serialises writers itself")
    a, b = nodes[:2]
    with installed.connect() as first, installed.connect() as second:
        first.begin()
        insert_links(first, [(a, b, "create")])
        second.begin()
        outcome: list[BaseException | None] = []

        def run_second() -> None:
            try:
                insert_links(second, [(b, a, "create")])
                outcome.append(None)
            except BaseException as error:  # noqa: BLE001 - checked below
                outcome.append(error)

        thread = threading.Thread(target=run_second)
        thread.start()
        time.sleep(0.3)
        first.commit()
        thread.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], CYCLE_ERRORS)
        second.rollback()
    with installed.connect() as connection:
        assert closure(connection) == {(a, b): 1}


def test_isolation_levels(dialect: str, installed: Engine, nodes: list[int]) -> None:
    """REPEATABLE READ would miss concurrent closure changes: refused; SERIALIZABLE works."""
    if dialect == "sqlite":
        pytest.skip("PostgreSQL isolation levels")
    a, b, c = nodes[:3]
    with pytest.raises(NotSupportedError, match="REPEATABLE READ"):
        with installed.connect().execution_options(isolation_level="REPEATABLE READ") as connection, connection.begin():
            insert_links(connection, [(a, b, "create")])
    with installed.connect().execution_options(isolation_level="REPEATABLE READ") as connection, connection.begin():
        insert_links(connection, [(a, b, "return")])  # uncovered links are not the closure's business
    with installed.connect().execution_options(isolation_level="SERIALIZABLE") as connection, connection.begin():
        insert_links(connection, [(a, b, "create"), (b, c, "create")])
    with installed.connect() as connection:
        assert closure(connection) == {(a, b): 1, (b, c): 1, (a, c): 1}


# ------------------------------------------------------------------------------------------------ random changes


class ClosureMachine(RuleBasedStateMachine):
    """Random link changes over a dozen nodes; after every step ``db_dbpath`` equals the Python model."""

    engine: Engine
    backend: SqlaBackend
    node_ids: list[int]
    kinds = ("create", "input_calc", "return")

    def __init__(self) -> None:
        super().__init__()
        with self.engine.begin() as connection:
            connection.execute(delete(LINKS))
            assert closure(connection) == {}
        self.links: dict[int, Edge] = {}

    def _try(self, edges_after: list[Edge], change: Callable[[Connection], object] | Callable[[], object]) -> None:
        """Run ``change`` (in a transaction it is given, or without argument in its own); it must succeed exactly
        when the resulting covered graph is acyclic."""
        acyclic = is_acyclic(edges_after)
        try:
            if change.__code__.co_argcount:
                with self.engine.begin() as connection:
                    change(connection)  # type: ignore[call-arg]
            else:
                change()  # type: ignore[call-arg]
        except (*CYCLE_ERRORS, ValidationError) as error:
            assert not acyclic, f"rejected an acyclic change: {error}"
            assert CYCLE_MESSAGE in str(error)
        else:
            assert acyclic, "accepted a change that closes a cycle"
        with self.engine.connect() as connection:
            self.links = {
                row.id: (row.input_id, row.output_id, row.type)
                for row in connection.execute(select(LINKS.c.id, LINKS.c.input_id, LINKS.c.output_id, LINKS.c.type))
            }

    @rule(
        new=st.lists(
            st.tuples(st.integers(0, 11), st.integers(0, 11), st.sampled_from(kinds)), min_size=1, max_size=4
        )
    )
    def insert_links(self, new: list[tuple[int, int, str]]) -> None:
        edges = [(self.node_ids[u], self.node_ids[v], kind) for u, v, kind in new]
        self._try([*self.links.values(), *edges], lambda connection: insert_links(connection, edges))

    @rule(
        new=st.lists(
            st.tuples(st.integers(0, 11), st.integers(0, 11), st.sampled_from(kinds)), min_size=1, max_size=6
        )
    )
    def bulk_insert_links(self, new: list[tuple[int, int, str]]) -> None:
        """The set-based path: links of one batch may chain, repeat or close a cycle."""
        edges = [(self.node_ids[u], self.node_ids[v], kind) for u, v, kind in new]
        self._try([*self.links.values(), *edges], lambda: bulk_insert(self.backend, DbLink, _link_rows(edges)))

    @precondition(lambda self: bool(self.links))
    @rule(data=st.data())
    def delete_links(self, data: st.DataObject) -> None:
        chosen = data.draw(st.sets(st.sampled_from(sorted(self.links)), min_size=1, max_size=3))
        remaining = [edge for key, edge in self.links.items() if key not in chosen]
        self._try(remaining, lambda connection: connection.execute(delete(LINKS).where(LINKS.c.id.in_(sorted(chosen)))))

    @precondition(lambda self: bool(self.links))
    @rule(data=st.data(), src=st.integers(0, 11), dst=st.integers(0, 11), kind=st.sampled_from(kinds))
    def update_link(self, data: st.DataObject, src: int, dst: int, kind: str) -> None:
        key = data.draw(st.sampled_from(sorted(self.links)))
        which = data.draw(st.sampled_from(("input_id", "output_id", "type", "all")))
        old_source, old_target, old_kind = self.links[key]
        values = {
            "input_id": {"input_id": self.node_ids[src]},
            "output_id": {"output_id": self.node_ids[dst]},
            "type": {"type": kind},
            "all": {"input_id": self.node_ids[src], "output_id": self.node_ids[dst], "type": kind},
        }[which]
        edge = (values.get("input_id", old_source), values.get("output_id", old_target), values.get("type", old_kind))
        after = [edge if other == key else value for other, value in self.links.items()]
        self._try(after, lambda connection: connection.execute(update(LINKS).where(LINKS.c.id == key).values(**values)))

    @precondition(lambda self: len(self.links) >= 2)
    @rule(kind=st.sampled_from(kinds), data=st.data())
    def retype_many(self, kind: str, data: st.DataObject) -> None:
        chosen = data.draw(st.sets(st.sampled_from(sorted(self.links)), min_size=2, max_size=4))
        # retyping to an uncovered type only removes links: no order of rows can make a spurious cycle
        if kind in DEFAULT_CLOSURE_LINK_TYPES and not all(self.links[key][2] in DEFAULT_CLOSURE_LINK_TYPES for key in chosen):
            kind = "return"
        after = [(u, v, kind) if key in chosen else (u, v, t) for key, (u, v, t) in self.links.items()]
        self._try(after, lambda connection: connection.execute(update(LINKS).where(LINKS.c.id.in_(sorted(chosen))).values(type=kind)))

    @invariant()
    def closure_is_exact(self) -> None:
        with self.engine.connect() as connection:
            assert closure(connection) == expected_closure(self.links.values())


def test_random_changes_keep_the_closure_exact(backend: SqlaBackend, installed: Engine, user: DbUser) -> None:
    with installed.begin() as connection:
        node_ids = add_nodes(connection, user.id, 12)
    machine = type("BoundClosureMachine", (ClosureMachine,), {"engine": installed, "backend": backend, "node_ids": node_ids})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=25, stateful_step_count=15, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )


def test_install_rebuilds_the_closure_indexes_and_leaves_the_model_intact(installed: Engine, nodes: list[int]) -> None:
    """The backfill may drop and rebuild db_dbpath's key and index, but they must be back, and the shared Table
    must still create them for the next database."""
    a, b, c = nodes[:3]
    with installed.begin() as connection:
        insert_links(connection, [(a, b, "create"), (b, c, "input_calc")])
    with Session(installed) as session:
        rebuild_tc(session)
    with installed.connect() as connection:
        schema = inspect_schema(connection)
        assert schema.get_pk_constraint("db_dbpath")["constrained_columns"] == ["child_id", "parent_id"]
        assert [index["column_names"] for index in schema.get_indexes("db_dbpath")] == [["parent_id", "child_id"]]
        assert closure(connection) == {(a, b): 1, (b, c): 1, (a, c): 1}
    ddl = str(CreateTable(PATHS).compile(installed))
    assert "PRIMARY KEY (child_id, parent_id)" in ddl
