"""Benchmark of bulk storage, statistics, ancestry (with and without the closure) and deletion.

Each run builds the synthetic graph of ``--nodes`` nodes in a fresh database and prints ONE JSON object:

    python benchmarks/bench.py --nodes 100000 --dialect both
    python benchmarks/bench.py --statistics-only --nodes 1000000 --dialect postgresql
    python benchmarks/bench.py --statistics-only --graph peer --dialect both  # the peer graph's nodes only

PostgreSQL databases are created through ``AIIDA_SQLA_BENCH_PG_URL`` (default: the tests' admin URL,
``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres``) and dropped afterwards; SQLite files live in a
temporary directory. Times are wall-clock seconds; "best" is the minimum of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import sqlalchemy
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import URL, make_url

import aiida_sqla_plugin
from aiida_sqla_plugin import bulk
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.bulk import bulk_insert
from aiida_sqla_plugin.closure import closure_status, install_tc, rebuild_tc
from aiida_sqla_plugin.graph import delete_nodes, get_ancestors, get_descendants
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.models import DbComputer, DbLink, DbNode, DbPath, DbUser, table_of
from aiida_sqla_plugin.synthetic import build_graph, node_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_table  # noqa: E402  (benchmarks/peer_table.py, beside this script)

PG_ADMIN_URL = make_url(os.environ.get("AIIDA_SQLA_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
#: Nodes stored one by one through the ORM for the baseline (kept small: it is slow by design).
ORM_BASELINE_NODES = 5_000
T = TypeVar("T")


def machine_facts() -> dict[str, Any]:
    """Hardware and software versions the figures depend on."""
    memory_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as meminfo:
        memory_kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    server = None
    with contextlib.suppress(Exception):
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as connection:
            server = connection.execute(text("SHOW server_version")).scalar_one()
        engine.dispose()
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(memory_kib / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": server,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg2": psycopg2.__version__.split()[0],
    }


def _admin(statement: str, admin_url: URL | str = PG_ADMIN_URL) -> None:
    """Run one statement (CREATE/DROP DATABASE) on the PostgreSQL admin database, outside a transaction."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_backend(dialect: str, name: str = "bench") -> Iterator[SqlaBackend]:
    """A migrated backend on a new, empty database of ``dialect``, dropped afterwards."""
    with contextlib.ExitStack() as stack:
        if dialect == "sqlite":
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="aiida-sqla-bench-"))
            url = f"sqlite:///{directory}/storage.sqlite"
        else:
            database = f"aiida_sqla_bench_{uuid.uuid4().hex[:10]}"
            _admin(f'CREATE DATABASE "{database}"')
            stack.callback(_admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            url = PG_ADMIN_URL.set(database=database).render_as_string(hide_password=False)
        stack.callback(aiida_sqla_plugin.dispose_engines)
        profile = aiida_sqla_plugin.Profile(f"{name}-{dialect}", "sqlalchemy", {"url": url})
        aiida_sqla_plugin.reset_session(profile)
        SqlaBackendManager(profile).migrate()
        yield SqlaBackend(profile)


def timed(function: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def best(function: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Minimum time of ``repeat`` runs, and the last result."""
    times = []
    result: Any = None
    for _ in range(repeat):
        seconds, result = timed(function)
        times.append(seconds)
    return min(times), result


def _round(value: float) -> float:
    return round(value, 4)


def _rate(count: int, seconds: float) -> int:
    return round(count / seconds) if seconds > 0 else 0


def _owner_rows(backend: SqlaBackend) -> tuple[int, int]:
    (user,) = bulk_insert(backend, DbUser, [{"email": "bench@example.org"}])
    (computer,) = bulk_insert(backend, DbComputer, [{"label": "localhost", "hostname": "localhost"}])
    return user, computer


def raw_copy_seconds(nodes: int, seed: int) -> float:
    """COPY of the same node rows, pre-formatted with ids, into a fresh PostgreSQL database (including commit)."""
    with fresh_backend("postgresql", "bench-copy") as backend:
        user, computer = _owner_rows(backend)
        rows = list(node_rows(nodes, user, computer, seed=seed))
        plan = bulk._plan(DbNode)
        lines, _ = bulk._prepare(plan, rows, backend.engine.dialect, for_copy=True)
        columns = ", ".join(["id", *(f'"{field.column_name}"' for field in plan.fields)])
        chunks = [
            "".join(f"{index + 1}\t{lines[index]}\n" for index in range(start, min(start + bulk.CHUNK_SIZE, nodes)))
            for start in range(0, nodes, bulk.CHUNK_SIZE)
        ]
        start = time.perf_counter()
        with backend.engine.begin() as connection:
            cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            for chunk in chunks:
                cursor.copy_expert(f"COPY db_dbnode ({columns}) FROM STDIN", io.StringIO(chunk), size=1 << 16)
        return time.perf_counter() - start


def orm_baseline(dialect: str, nodes: int, seed: int) -> dict[str, Any]:
    """The same node rows stored by adding ORM objects one by one (a flush each), then with bulk_insert."""
    with fresh_backend(dialect, "bench-orm") as backend:
        user, computer = _owner_rows(backend)
        rows = list(node_rows(nodes, user, computer, seed=seed))
        session = backend.get_session()
        start = time.perf_counter()
        for row in rows:
            session.add(DbNode(**row))
            session.flush()
        session.commit()
        one_by_one = time.perf_counter() - start
        start = time.perf_counter()
        session.add_all([DbNode(**row) for row in rows])
        session.commit()
        add_all = time.perf_counter() - start
        backend.close()
        bulk_seconds, _ = timed(lambda: bulk_insert(backend, DbNode, rows))
    return {
        "nodes": nodes,
        "one_by_one_seconds": _round(one_by_one),
        "add_all_seconds": _round(add_all),
        "bulk_insert_seconds": _round(bulk_seconds),
        "bulk_speedup_vs_one_by_one": round(one_by_one / bulk_seconds, 1),
        "bulk_speedup_vs_add_all": round(add_all / bulk_seconds, 1),
    }


def ancestry(backend: SqlaBackend, pk: int, repeat: int) -> dict[str, Any]:
    ancestors_seconds, ancestors = best(lambda: get_ancestors([pk], backend=backend), repeat)
    descendants_seconds, descendants = best(lambda: get_descendants([pk], backend=backend), repeat)
    return {
        "ancestors": len(ancestors),
        "ancestors_seconds": _round(ancestors_seconds),
        "descendants": len(descendants),
        "descendants_seconds": _round(descendants_seconds),
        "_sets": (ancestors, descendants),
    }


def newest_tenth(node_ids: Sequence[int]) -> list[int]:
    """The last tenth of ``node_ids`` (stored in creation order): the nodes the deletion benchmarks start from."""
    return list(node_ids[len(node_ids) - len(node_ids) // 10 :])


def delete_newest_tenth(backend: SqlaBackend, node_ids: tuple[int, ...]) -> dict[str, Any]:
    """Delete the newest 10% of the nodes with the default rules (dry_run=False); returns counts and time.

    The newest tenth, not a random one: deleting a data node takes everything derived from it, so a random
    sample of an old graph would take almost all of it along.
    """
    requested = newest_tenth(node_ids)
    backend.close()
    seconds, (deleted, done) = timed(lambda: delete_nodes(requested, dry_run=False, backend=backend))
    backend.close()
    with backend.engine.connect() as connection:
        left = connection.execute(select(func.count()).select_from(DbNode)).scalar_one()
    assert done and left == len(node_ids) - len(deleted)
    return {"requested": len(requested), "deleted": len(deleted), "seconds": _round(seconds)}


def chain_run(dialect: str, depth: int, repeat: int) -> dict[str, Any]:
    """Ancestors of the end of a chain ``depth`` links deep (create and input_calc alternating), with and without
    the closure."""
    with fresh_backend(dialect, "bench-chain") as backend:
        user, computer = _owner_rows(backend)
        chain = bulk_insert(backend, DbNode, list(node_rows(depth + 1, user, computer, seed=0)))
        bulk_insert(
            backend,
            DbLink,
            [
                {"input_id": parent, "output_id": child, "label": "x", "type": ("create", "input_calc")[step % 2]}
                for step, (parent, child) in enumerate(zip(chain, chain[1:]))
            ],
        )
        without_seconds, without = best(lambda: get_ancestors([chain[-1]], backend=backend), repeat)
        session = backend.get_session()
        install_tc(session)
        backend.close()
        with_seconds, with_closure = best(lambda: get_ancestors([chain[-1]], backend=backend), repeat)
        assert without == with_closure == set(chain[:-1])
    return {
        "depth": depth,
        "ancestors": len(with_closure),
        "without_closure_seconds": _round(without_seconds),
        "with_closure_seconds": _round(with_seconds),
    }


def graph_run(dialect: str, nodes: int, seed: int, repeat: int, orm_nodes: int) -> dict[str, Any]:
    """The full benchmark on one dialect: one graph without the closure, then a second one with it."""
    result: dict[str, Any] = {"benchmark": "graph", "dialect": dialect, "nodes": nodes, "seed": seed}
    with fresh_backend(dialect) as backend:
        build_seconds, graph = timed(lambda: build_graph(backend, nodes, seed=seed))
        stored = graph.store_seconds
        result.update(
            links=graph.link_count,
            depth=graph.depth,
            build_graph_seconds=_round(build_seconds),
            store={
                "nodes_seconds": _round(stored["nodes"]),
                "nodes_per_second": _rate(nodes, stored["nodes"]),
                "links_seconds": _round(stored["links"]),
                "links_per_second": _rate(graph.link_count, stored["links"]),
            },
        )
        statistics_seconds, statistics = best(backend.query_manager.get_creation_statistics, repeat)
        assert statistics["total"] == nodes
        result["statistics_seconds"] = _round(statistics_seconds)

        deep = graph.deepest_node
        assert deep is not None
        plain_deep = ancestry(backend, deep, repeat)
        oldest = min(plain_deep["_sets"][0])  # the oldest ancestor: a shared root with many descendants
        plain_oldest = ancestry(backend, oldest, repeat)
        delete_plain = delete_newest_tenth(backend, graph.node_ids)

    with fresh_backend(dialect) as backend:
        same = build_graph(backend, nodes, seed=seed)
        assert (same.deepest_node, same.node_ids[0]) == (deep, graph.node_ids[0])
        session = backend.get_session()
        install_seconds, _ = timed(lambda: install_tc(session))
        status = closure_status(session)
        session.commit()
        backend.close()
        result["closure"] = {
            "install_seconds": _round(install_seconds),
            "rows": status.rows,
            "covered_link_types": list(status.link_types),
            "rows_per_link": round(status.rows / graph.link_count, 2),
            "rows_per_covered_link": round(status.rows / status.links, 2) if status.links else None,
        }
        closure_deep = ancestry(backend, deep, repeat)
        closure_oldest = ancestry(backend, oldest, repeat)
        assert closure_deep.pop("_sets") == plain_deep.pop("_sets"), "closure and CTE disagree (deep node)"
        assert closure_oldest.pop("_sets") == plain_oldest.pop("_sets"), "closure and CTE disagree (oldest ancestor)"
        result["deep_node"] = {"pk": deep, "without_closure": plain_deep, "with_closure": closure_deep}
        result["oldest_ancestor_of_deep_node"] = {"pk": oldest, "without_closure": plain_oldest, "with_closure": closure_oldest}
        delete_closure = delete_newest_tenth(backend, same.node_ids)
        with backend.engine.connect() as connection:
            status_rows = connection.execute(text("SELECT count(*) FROM db_dbpath")).scalar_one()
        result["delete_10_percent"] = {
            "without_closure": delete_plain,
            "with_closure": delete_closure,
            "closure_rows_after": status_rows,
        }
    if dialect == "postgresql":
        copy_seconds = raw_copy_seconds(nodes, seed)
        result["raw_copy"] = {
            "seconds": _round(copy_seconds),
            "rows_per_second": _rate(nodes, copy_seconds),
            "store_to_copy_ratio": round(stored["nodes"] / copy_seconds, 2),
        }
    with fresh_backend(dialect) as backend:
        install_tc(backend.get_session())  # on the empty database: every link goes through the triggers
        backend.close()
        kept = build_graph(backend, nodes, seed=seed)
        result["store_with_closure_installed"] = {
            "links_seconds": _round(kept.store_seconds["links"]),
            "links_per_second": _rate(kept.link_count, kept.store_seconds["links"]),
        }
    result["chain_400"] = chain_run(dialect, 400, repeat)
    if orm_nodes:
        result["orm_baseline"] = orm_baseline(dialect, min(orm_nodes, nodes), seed)
    return result


def statistics_run(dialect: str, nodes: int, seed: int, repeat: int) -> dict[str, Any]:
    """Only nodes (no links): store ``nodes`` rows and time the creation statistics."""
    result: dict[str, Any] = {"benchmark": "statistics", "dialect": dialect, "nodes": nodes, "seed": seed}
    with fresh_backend(dialect, "bench-stats") as backend:
        user, computer = _owner_rows(backend)
        rows = node_rows(nodes, user, computer, seed=seed)
        start = time.perf_counter()
        while chunk := [row for _, row in zip(range(100_000), rows)]:
            bulk_insert(backend, DbNode, chunk)
        store_seconds = time.perf_counter() - start
        first_seconds, statistics = timed(backend.query_manager.get_creation_statistics)
        best_seconds, statistics = best(backend.query_manager.get_creation_statistics, repeat)
        user_seconds, _ = best(lambda: backend.query_manager.get_creation_statistics(user_pk=user), repeat)
        assert statistics["total"] == nodes
        result.update(
            store_seconds=_round(store_seconds),
            nodes_per_second=_rate(nodes, store_seconds),
            statistics_first_seconds=_round(first_seconds),
            statistics_seconds=_round(best_seconds),
            statistics_user_filter_seconds=_round(user_seconds),
            days=len(statistics["ctime_by_day"]),
            types=len(statistics["types"]),
        )
    return result


# ---------------------------------------------------------------------------------------------------- peer graph

#: The shared comparison scripts: ``../shared/bench/`` next to the repository (override: AIIDA_SQLA_PEER_BENCH).
PEER_BENCH_DIR = Path(os.environ.get("AIIDA_SQLA_PEER_BENCH", Path(__file__).resolve().parents[1].parent / "shared" / "bench"))


def _peer_module() -> Any:
    """The shared ``aiida_peer_bench`` module (graph generator and raw-driver anchors)."""
    if not (PEER_BENCH_DIR / "aiida_peer_bench.py").is_file():
        raise SystemExit(f"--graph peer needs {PEER_BENCH_DIR}/aiida_peer_bench.py (set AIIDA_SQLA_PEER_BENCH)")
    sys.path.insert(0, str(PEER_BENCH_DIR))
    import aiida_peer_bench  # noqa: PLC0415

    return aiida_peer_bench


def _closure_matches_recompute(backend: SqlaBackend) -> bool:
    """Recompute the closure from the links (``rebuild_tc``) and compare it with the one kept by the triggers."""
    with backend.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS bench_kept")
        connection.exec_driver_sql("CREATE TABLE bench_kept AS SELECT parent_id, child_id, path_count FROM db_dbpath")
    rebuild_tc(backend.get_session())
    backend.close()
    with backend.engine.begin() as connection:
        columns = "parent_id, child_id, path_count"
        differ = sum(
            connection.exec_driver_sql(f"SELECT count(*) FROM (SELECT {columns} FROM {a} EXCEPT SELECT {columns} FROM {b}) AS d").scalar_one()
            for a, b in (("bench_kept", "db_dbpath"), ("db_dbpath", "bench_kept"))
        )
        connection.exec_driver_sql("DROP TABLE bench_kept")
    return differ == 0


def raw_pairs_seconds(backend: SqlaBackend, deleted: set[int]) -> tuple[float, float]:
    """The raw driver on the closure's own rows: (load, delete) seconds, each with its commit.

    Load: the (ancestor, descendant, count) rows from Python to committed rows of an indexed table of the same
    shape (``db_dbpath``'s own definition under another name: key, index, SQLite ``WITHOUT ROWID``), in its key
    order, through COPY text built in Python (PostgreSQL) or ``executemany`` (SQLite); streamed in chunks.
    Delete: one ``DELETE`` of the pairs whose descendant is in ``deleted`` from that table, the ids as one
    parameter (what a deletion with the closure must remove at the least)."""
    dialect = backend.engine.dialect.name
    paths = table_of(DbPath)
    (index,) = paths.indexes
    raw_table = sqlalchemy.Table(
        "bench_raw_path",
        sqlalchemy.MetaData(),
        *(sqlalchemy.Column(column.name, column.type, nullable=False) for column in paths.columns),
        sqlalchemy.PrimaryKeyConstraint(*(column.name for column in paths.primary_key)),
        sqlalchemy.Index("bench_raw_path_index", *(column.name for column in index.columns)),
        sqlite_with_rowid=paths.dialect_options["sqlite"]["with_rowid"],
    )
    with backend.engine.begin() as connection:
        raw_table.drop(connection, checkfirst=True)
        raw_table.create(connection)
        rows = connection.exec_driver_sql("SELECT parent_id, child_id, path_count FROM db_dbpath ORDER BY child_id, parent_id").all()
    with backend.engine.begin() as connection:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        start = time.perf_counter()
        for first in range(0, len(rows), 200_000):
            chunk = rows[first : first + 200_000]
            if dialect == "postgresql":
                text_rows = "".join(f"{a}\t{d}\t{c}\n" for a, d, c in chunk)
                cursor.copy_expert("COPY bench_raw_path FROM STDIN", io.StringIO(text_rows), size=1 << 16)
            else:
                cursor.executemany("INSERT INTO bench_raw_path VALUES (?, ?, ?)", chunk)
    load_seconds = time.perf_counter() - start  # the commit included
    del rows
    with backend.engine.begin() as connection:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        start = time.perf_counter()
        if dialect == "postgresql":
            cursor.execute("DELETE FROM bench_raw_path WHERE child_id = ANY(%s)", (sorted(deleted),))
        else:
            cursor.execute("DELETE FROM bench_raw_path WHERE child_id IN (SELECT value FROM json_each(?))", (json.dumps(sorted(deleted)),))
    delete_seconds = time.perf_counter() - start
    with backend.engine.begin() as connection:
        raw_table.drop(connection)
    return load_seconds, delete_seconds


def _peer_store(backend: SqlaBackend, peer: Any, graph: dict[str, Any]) -> tuple[float, float, list[int]]:
    (user,) = bulk_insert(backend, DbUser, [{"email": "peer@example.org"}])
    rows = peer.aiida_node_rows(graph, user)
    nodes_seconds, ids = timed(lambda: bulk_insert(backend, DbNode, rows))
    links = [{"input_id": ids[s], "output_id": ids[d], "label": label, "type": kind} for s, d, label, kind in graph["links"]]
    links_seconds, _ = timed(lambda: bulk_insert(backend, DbLink, links))
    return nodes_seconds, links_seconds, ids


def peer_statistics_run(dialect: str, nodes: int, seed: int, repeat: int) -> dict[str, Any]:
    """Only the nodes of the shared comparison graph (no links): the creation statistics row of issue #11."""
    peer = _peer_module()
    graph = peer.make_graph(nodes, seed)
    result: dict[str, Any] = {"benchmark": "peer-statistics", "dialect": dialect, "nodes": nodes, "seed": seed}
    with fresh_backend(dialect, "bench-peer-stats") as backend:
        (user,) = bulk_insert(backend, DbUser, [{"email": "peer@example.org"}])
        rows = peer.aiida_node_rows(graph, user)
        result["store_nodes_seconds"] = _round(timed(lambda: bulk_insert(backend, DbNode, rows))[0])
        backend.close()
        first_seconds, statistics = timed(backend.query_manager.get_creation_statistics)
        best_seconds, statistics = best(backend.query_manager.get_creation_statistics, repeat)
        assert statistics["total"] == nodes
        result.update(statistics_first_seconds=_round(first_seconds), statistics_seconds=_round(best_seconds),
                      days=len(statistics["ctime_by_day"]), types=len(statistics["types"]))
    return result


def _settings_seconds(backend: SqlaBackend) -> tuple[float, float]:
    settings = backend.settings
    settings.set("bench_key", {"value": 0})
    backend.close()
    get_seconds, _ = timed(lambda: [settings.get("bench_key") for _ in range(1000)])

    def set_get() -> None:
        for index in range(1000):
            settings.set("bench_key", {"value": index})
            assert settings.get("bench_key").value == {"value": index}

    set_get_seconds, _ = timed(set_get)
    return get_seconds, set_get_seconds


def _peer_closure_block(
    dialect: str, peer: Any, graph: dict[str, Any], ancestors_target_index: int, ancestors: set[int] | None, repeat: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """The "bench-peer-tc" block: links stored with the closure installed, the closure rebuilt from the links,
    the raw pairs anchor and the 10% deletion, each closure checked against a recompute."""
    timings: dict[str, float] = {}
    checks: dict[str, Any] = {}
    with fresh_backend(dialect, "bench-peer-tc") as backend:
        install_tc(backend.get_session())  # on the empty database: every link goes through the triggers
        backend.close()
        _, timings["store_links_with_closure"], ids = _peer_store(backend, peer, graph)
        backend.close()
        checks["closure_after_store_matches_recompute"] = _closure_matches_recompute(backend)
        install_seconds, _ = timed(lambda: rebuild_tc(backend.get_session()))
        backend.close()
        timings["closure_install"] = install_seconds
        with backend.engine.connect() as connection:
            checks["closure_pairs"] = connection.exec_driver_sql("SELECT count(*) FROM db_dbpath").scalar_one()
        deleted, _ = delete_nodes(newest_tenth(ids), dry_run=True, backend=backend)
        backend.close()
        timings["raw_closure_pairs"], timings["raw_closure_pair_delete"] = raw_pairs_seconds(backend, deleted)
        target = ids[ancestors_target_index]
        timings["ancestors_with_closure"], closure_ancestors = best(lambda: get_ancestors([target], backend=backend), repeat)
        if ancestors is not None:
            checks["ancestors_with_closure"] = closure_ancestors == ancestors
        delete_closure = delete_newest_tenth(backend, tuple(ids))
        timings["delete_10_percent_with_closure"] = delete_closure["seconds"]
        checks["closure_after_delete_matches_recompute"] = _closure_matches_recompute(backend)
        checks["deleted_with_closure"] = delete_closure["deleted"]
    return timings, checks


def _closure_ratios(timings: dict[str, float]) -> dict[str, float]:
    """Issue #11's closure ratios (a), (b), (c)."""
    return {
        "closure_install_to_raw_pairs": round(timings["closure_install"] / timings["raw_closure_pairs"], 2),
        "store_links_with_closure_to_without": round(timings["store_links_with_closure"] / timings["store_links"], 2),
        "delete_with_closure_to_without": round(timings["delete_10_percent_with_closure"] / timings["delete_10_percent"], 2),
        "store_links_with_closure_to_raw_pairs": round(timings["store_links_with_closure"] / timings["raw_closure_pairs"], 2),
        "delete_closure_extra_to_raw_pair_delete": round(
            (timings["delete_10_percent_with_closure"] - timings["delete_10_percent"]) / timings["raw_closure_pair_delete"], 2
        ),
    }


def closure_only_run(dialect: str, nodes: int, seed: int, repeat: int) -> dict[str, Any]:
    """Only what the closure ratios need: the shared graph stored and its newest tenth deleted without the closure,
    then the closure block of :func:`peer_run` (no raw-driver anchors, statistics or ancestry without closure)."""
    peer = _peer_module()
    graph = peer.make_graph(nodes, seed)
    analysis = peer.graph_analysis(graph)
    result: dict[str, Any] = {"benchmark": "peer_closure", "dialect": dialect, "nodes": nodes, "seed": seed, "links": len(graph["links"])}
    timings: dict[str, float] = {}
    with fresh_backend(dialect, "bench-peer") as backend:
        timings["store_nodes"], timings["store_links"], ids = _peer_store(backend, peer, graph)
        backend.close()
        timings["delete_10_percent"] = delete_newest_tenth(backend, tuple(ids))["seconds"]
    closure_timings, checks = _peer_closure_block(dialect, peer, graph, analysis["anc_target"], None, repeat)
    timings.update(closure_timings)
    result["timings"] = {key: _round(value) for key, value in timings.items()}
    result["ratios"] = _closure_ratios(timings)
    result["checks"] = checks
    return result


def peer_run(dialect: str, nodes: int, seed: int, repeat: int) -> dict[str, Any]:
    """The shared comparison graph (``make_graph(nodes, seed)``): every row of issue #11 and the raw figures."""
    peer = _peer_module()
    graph = peer.make_graph(nodes, seed)
    analysis = peer.graph_analysis(graph)
    result: dict[str, Any] = {"benchmark": "peer", "dialect": dialect, "nodes": nodes, "seed": seed, "links": len(graph["links"])}
    result["graph"] = {key: value for key, value in analysis.items() if not key.endswith("_target")}
    timings: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    with fresh_backend(dialect, "bench-peer") as backend:
        timings["store_nodes"], timings["store_links"], ids = _peer_store(backend, peer, graph)
        backend.close()
        timings["creation_statistics"], statistics = best(backend.query_manager.get_creation_statistics, repeat)
        checks["statistics_total"] = statistics["total"] == nodes
        ancestors_target, descendants_target = ids[analysis["anc_target"]], ids[analysis["desc_target"]]
        get_ancestors([ancestors_target], backend=backend)  # warm
        timings["ancestors"], ancestors = best(lambda: get_ancestors([ancestors_target], backend=backend), repeat)
        get_descendants([descendants_target], backend=backend)
        timings["descendants"], descendants = best(lambda: get_descendants([descendants_target], backend=backend), repeat)
        checks["ancestors"] = len(ancestors) == analysis["anc_expected_distinct"]
        checks["descendants"] = len(descendants) == analysis["desc_expected_distinct"]
        timings["settings_get_x1000"], timings["settings_set_get_x1000"] = _settings_seconds(backend)
        delete_plain = delete_newest_tenth(backend, tuple(ids))
        timings["delete_10_percent"] = delete_plain["seconds"]
        checks["deleted"] = delete_plain["deleted"]

    closure_timings, closure_checks = _peer_closure_block(dialect, peer, graph, analysis["anc_target"], ancestors, repeat)
    timings.update(closure_timings)
    checks.update(closure_checks)

    result["raw_driver"] = _peer_raw(dialect, peer, graph)
    raw_nodes, raw_links = _raw_store_seconds(dialect, result["raw_driver"])
    timings.update(raw_nodes=raw_nodes, raw_links=raw_links)
    result["timings"] = {key: _round(value) for key, value in timings.items()}
    result["ratios"] = {
        "store_nodes_to_raw": round(timings["store_nodes"] / raw_nodes, 2),
        "store_links_to_raw": round(timings["store_links"] / raw_links, 2),
        **_closure_ratios(timings),
    }
    result["checks"] = checks
    return result


def _peer_raw(dialect: str, peer: Any, graph: dict[str, Any]) -> dict[str, float]:
    """The shared script's raw-driver anchors (``bench_raw_pg`` / ``bench_raw_sqlite``) on a scratch database."""
    raw: dict[str, Any] = {"timings": {}}
    with contextlib.ExitStack() as stack:
        if dialect == "postgresql":
            database = f"aiida_sqla_bench_raw_{uuid.uuid4().hex[:10]}"
            _admin(f'CREATE DATABASE "{database}"')
            stack.callback(_admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            peer.PG.update(
                host=PG_ADMIN_URL.host or "127.0.0.1", port=PG_ADMIN_URL.port or 5432, user=PG_ADMIN_URL.username,
                password=PG_ADMIN_URL.password or "", dbname=database,
            )
            peer.bench_raw_pg(graph, raw)
        else:
            peer.DATA_DIR = stack.enter_context(tempfile.TemporaryDirectory(prefix="aiida-sqla-raw-"))
            peer.bench_raw_sqlite(graph, raw)
    return dict(raw["timings"])


def _raw_store_seconds(dialect: str, raw: dict[str, float]) -> tuple[float, float]:
    """The raw figures issue #11 compares with: COPY (PostgreSQL) or executemany (SQLite), indexed tables."""
    driver = "pg_idx_copy" if dialect == "postgresql" else "sqlite_idx_executemany"
    return raw[f"raw_{driver}_nodes"], raw[f"raw_{driver}_links"]


def peer_store_run(dialect: str, nodes: int, seed: int) -> dict[str, Any]:
    """Only the bulk store of the shared graph's nodes and links and the raw store of the same rows, one run."""
    peer = _peer_module()
    graph = peer.make_graph(nodes, seed)
    result: dict[str, Any] = {"benchmark": "peer_store", "dialect": dialect, "nodes": nodes, "seed": seed, "links": len(graph["links"])}
    with fresh_backend(dialect, "bench-peer-store") as backend:
        store_nodes, store_links, _ = _peer_store(backend, peer, graph)
    result["raw_driver"] = _peer_raw(dialect, peer, graph)
    raw_nodes, raw_links = _raw_store_seconds(dialect, result["raw_driver"])
    result["timings"] = {
        key: _round(value)
        for key, value in (("store_nodes", store_nodes), ("store_links", store_links), ("raw_nodes", raw_nodes), ("raw_links", raw_links))
    }
    result["ratios"] = {
        "store_nodes_to_raw": round(store_nodes / raw_nodes, 2),
        "store_links_to_raw": round(store_links / raw_links, 2),
    }
    return result


def aiida_core_run(python: str, dialect: str, nodes: int, seed: int) -> dict[str, Any]:
    """aiida-core's side of the peer comparison, in the same run: the shared script under ``python``.

    ``python`` is the interpreter of a virtual environment holding aiida-core (its pins differ from ours). The
    script gets a scratch folder of its own and, for PostgreSQL, a uniquely named database it creates itself.
    """
    script = PEER_BENCH_DIR / "aiida_peer_bench.py"
    backend = "psql_dos" if dialect == "postgresql" else "sqlite_dos"
    with contextlib.ExitStack() as stack:
        env = dict(os.environ, PEER_BENCH_DIR=stack.enter_context(tempfile.TemporaryDirectory(prefix="aiida-core-peer-")))
        if dialect == "postgresql":
            database = f"aiida_sqla_bench_core_{uuid.uuid4().hex[:10]}"
            stack.callback(_admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            env.update(
                PEER_PG_HOST=PG_ADMIN_URL.host or "127.0.0.1", PEER_PG_PORT=str(PG_ADMIN_URL.port or 5432),
                PEER_PG_USER=PG_ADMIN_URL.username or "postgres", PEER_PG_PASSWORD=PG_ADMIN_URL.password or "",
                PEER_PG_DB=database,
            )
        command = [python, str(script), "--backend", backend, "--nodes", str(nodes), "--seed", str(seed)]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"aiida-core's side failed ({' '.join(command)}):\n{completed.stderr[-3000:]}")
    aiida = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"benchmark": "peer-aiida-core", "dialect": dialect, "nodes": nodes, "seed": seed,
            "versions": aiida["versions"], "timings": aiida["timings"], "checks": aiida["checks"]}


def closure_links_run(dialect: str, nodes: int, seed: int) -> dict[str, Any]:
    """Store the shared graph's links in two batches (90%, then the last 10%) three ways, same run: without the
    closure, with it through ``bulk_insert`` (set-based waves) and with it through a plain Core insert (the
    per-link triggers); checks the set-based closure against a recompute."""
    peer = _peer_module()
    graph = peer.make_graph(nodes, seed)
    result: dict[str, Any] = {"benchmark": "closure_links", "dialect": dialect, "nodes": nodes, "seed": seed, "links": len(graph["links"])}
    for way in ("without", "set_based", "triggers"):
        with fresh_backend(dialect, "bench-links") as backend:
            if way != "without":
                install_tc(backend.get_session())
                backend.close()
            (user,) = bulk_insert(backend, DbUser, [{"email": "peer@example.org"}])
            ids = bulk_insert(backend, DbNode, peer.aiida_node_rows(graph, user))
            links = [{"input_id": ids[s], "output_id": ids[d], "label": label, "type": kind} for s, d, label, kind in graph["links"]]
            cut = len(links) * 9 // 10

            def store(batch: list[dict[str, Any]]) -> None:
                if way == "triggers":
                    with backend.engine.begin() as connection:
                        connection.execute(DbLink.__table__.insert(), batch)
                else:
                    bulk_insert(backend, DbLink, batch)

            first, _ = timed(lambda: store(links[:cut]))
            last, _ = timed(lambda: store(links[cut:]))
            result[way] = {"first_90_percent_seconds": _round(first), "last_10_percent_seconds": _round(last)}
            if way == "set_based":
                result["closure_matches_recompute"] = _closure_matches_recompute(backend)
                with backend.engine.connect() as connection:
                    result["closure_pairs"] = connection.exec_driver_sql("SELECT count(*) FROM db_dbpath").scalar_one()
    for part in ("first_90_percent_seconds", "last_10_percent_seconds"):
        result[f"ratio_{part.removesuffix('_seconds')}"] = {
            "set_based_to_without": round(result["set_based"][part] / result["without"][part], 2),
            "set_based_to_triggers": round(result["set_based"][part] / result["triggers"][part], 2),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100_000, help="nodes of the synthetic graph (default 100000)")
    parser.add_argument("--dialect", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per timed query; the best is reported")
    parser.add_argument("--orm-nodes", type=int, default=ORM_BASELINE_NODES, help="nodes for the ORM baseline (0: skip)")
    parser.add_argument(
        "--statistics-only", action="store_true", help="store nodes only and time the statistics (with --graph peer: its nodes)"
    )
    parser.add_argument(
        "--closure-links", action="store_true",
        help="with --graph peer: store the links with the closure set-based, through the triggers and without it",
    )
    parser.add_argument(
        "--store-only", action="store_true",
        help="with --graph peer: only store the nodes and links and the raw driver's store of the same rows",
    )
    parser.add_argument(
        "--closure-only", action="store_true",
        help="with --graph peer: only the closure rows of issue #11 (install, delete and store links, with their anchors)",
    )
    parser.add_argument(
        "--graph", choices=("synthetic", "peer"), default="synthetic",
        help="peer: the shared comparison graph of ../shared/bench/ (seed 42 unless --seed is given)",
    )
    parser.add_argument(
        "--aiida-python", metavar="PYTHON",
        help="with --graph peer: also run aiida-core's side (the shared script) under this interpreter, same run, "
        "and print the comparison table (benchmarks/peer_table.py) to stderr at the end",
    )
    args = parser.parse_args(argv)
    dialects = ("sqlite", "postgresql") if args.dialect == "both" else (args.dialect,)
    machine = machine_facts()
    peer_seed = 42 if args.seed == 0 else args.seed
    printed: list[dict[str, Any]] = []
    for dialect in dialects:
        results: list[dict[str, Any]] = []
        if args.graph == "peer" and args.closure_links:
            results.append(closure_links_run(dialect, args.nodes, peer_seed))
        elif args.graph == "peer" and args.statistics_only:
            results.append(peer_statistics_run(dialect, args.nodes, peer_seed, args.repeat))
        elif args.graph == "peer" and args.store_only:
            results.append(peer_store_run(dialect, args.nodes, peer_seed))
        elif args.graph == "peer" and args.closure_only:
            results.append(closure_only_run(dialect, args.nodes, peer_seed, args.repeat))
        elif args.graph == "peer":
            results.append(peer_run(dialect, args.nodes, peer_seed, args.repeat))
            if args.aiida_python:
                results.append(aiida_core_run(args.aiida_python, dialect, args.nodes, peer_seed))
        elif args.statistics_only:
            results.append(statistics_run(dialect, args.nodes, args.seed, args.repeat))
        else:
            results.append(graph_run(dialect, args.nodes, args.seed, args.repeat, args.orm_nodes))
        for result in results:
            result["machine"] = machine
            print(json.dumps(result), flush=True)
        printed.extend(results)
    if args.graph == "peer" and args.aiida_python:
        print(peer_table.render(printed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
