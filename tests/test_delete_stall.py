"""PostgreSQL (#13): how long link writers on unrelated nodes wait while a 10,000-node deletion runs.

The deletion traverses first, then locks ``db_dblink`` (SHARE ROW EXCLUSIVE) until it commits and checks with one
more traversal step that no link appeared meanwhile; writers of links elsewhere in the graph wait only for that
step and the delete statements, not for the whole traversal. This test measures that stall
(printed with ``pytest -s``, appended to ``AIIDA_SQLA_TEST_SCALE_REPORT``) and checks that every writer carries on
afterwards and that every link it committed is stored.
"""
from __future__ import annotations

import os
import threading
import time

import pytest
from sqlalchemy import func, insert, select

from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.graph import delete_nodes
from aiida_sqla_plugin.models import DbLink, DbNode, DbUser
from helpers import insert_links, insert_nodes, node_rows, user_pk

CALCS, DATA_PER_CALC = 100, 99  # 100 + 100 x 99 = 10,000 nodes
WRITERS = int(os.environ.get("AIIDA_SQLA_TEST_STALL_WRITERS", "4"))


def build_chain(backend: SqlaBackend) -> tuple[int, set[int], list[int]]:
    """Calculations each creating 99 data nodes, one of which is the input of the next calculation; plus 2 spare
    nodes per writer. Returns the first calculation, the 10,000 nodes its deletion takes, the spare nodes."""
    user_id = user_pk(backend)
    with backend.engine.begin() as connection:
        calcs = insert_nodes(connection, node_rows(user_id, CALCS, node_type="process.calculation.calcjob.CalcJobNode."))
        data = insert_nodes(connection, node_rows(user_id, CALCS * DATA_PER_CALC))
        spare = insert_nodes(connection, node_rows(user_id, 2 * WRITERS))
        edges = []
        for index, calc in enumerate(calcs):
            created = data[index * DATA_PER_CALC:(index + 1) * DATA_PER_CALC]
            edges += [(calc, node, "create") for node in created]
            if index + 1 < CALCS:
                edges.append((created[0], calcs[index + 1], "input_calc"))
        insert_links(connection, edges)
    return calcs[0], set(calcs) | set(data), spare


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_link_writers_during_a_10000_node_deletion(backend: SqlaBackend, user: DbUser) -> None:
    start, doomed, spare = build_chain(backend)
    stop = threading.Event()
    latencies: list[list[tuple[float, float]]] = [[] for _ in range(WRITERS)]
    errors: list[BaseException] = []

    def write(index: int) -> None:
        source, target = spare[2 * index], spare[2 * index + 1]
        try:
            while not stop.is_set():
                began = time.monotonic()
                with backend.engine.begin() as connection:
                    connection.execute(insert(DbLink.__table__).values(
                        input_id=source, output_id=target, type="input_calc", label=f"w{index}_{len(latencies[index])}"))
                latencies[index].append((began, time.monotonic() - began))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    writers = [threading.Thread(target=write, args=(index,)) for index in range(WRITERS)]
    for writer in writers:
        writer.start()
    time.sleep(0.5)
    deletion_began = time.monotonic()
    deleted, done = delete_nodes([start], dry_run=False, backend=backend)
    deletion_seconds = time.monotonic() - deletion_began
    time.sleep(0.5)
    stop.set()
    for writer in writers:
        writer.join(30)
    backend.close()
    assert errors == []
    assert (deleted, done) == (doomed, True)
    after = [[began for began, _ in rows if began > deletion_began + deletion_seconds] for rows in latencies]
    assert all(after), "every writer carries on after the deletion"
    with backend.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(DbNode).where(DbNode.id.in_(doomed))) == 0
        stored = connection.scalar(select(func.count()).select_from(DbLink).where(DbLink.input_id.in_(spare)))
    assert stored == sum(map(len, latencies))  # every committed link is there
    during = [seconds for rows in latencies for began, seconds in rows if began < deletion_began + deletion_seconds]
    normal = sorted(seconds for rows in latencies for began, seconds in rows if began < deletion_began - 0.05)
    figure = (f"10,000-node deletion took {deletion_seconds:.2f} s; {WRITERS} link writers on other nodes: longest "
              f"wait {max(during):.2f} s (median link insert otherwise {normal[len(normal) // 2] * 1000:.1f} ms)")
    print(figure)
    target = os.environ.get("AIIDA_SQLA_TEST_SCALE_REPORT")
    if target:
        with open(target, "a") as file:
            file.write(figure + "\n")


CLOSURE_WRITERS = 12
CLOSURE_SECONDS = float(os.environ.get("AIIDA_SQLA_TEST_CLOSURE_SECONDS", "5"))
#: Nodes per writer's chain: more than a writer links in CLOSURE_SECONDS here (~80/s without the closure).
CHAIN_NODES = int(os.environ.get("AIIDA_SQLA_TEST_CLOSURE_CHAIN", "1500"))


def links_per_second(backend: SqlaBackend, chains: list[list[int]]) -> tuple[list[int], float]:
    """12 threads each extend a chain of 'create' links among their own nodes, one link per transaction."""
    stop = threading.Event()
    counts = [0] * len(chains)
    errors: list[BaseException] = []

    def write(index: int) -> None:
        nodes = chains[index]
        try:
            while not stop.is_set() and counts[index] + 1 < len(nodes):
                with backend.engine.begin() as connection:
                    position = counts[index]
                    connection.execute(insert(DbLink.__table__).values(
                        input_id=nodes[position], output_id=nodes[position + 1], type="create", label=f"c{index}_{position}"))
                counts[index] += 1
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(len(chains))]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    stop.wait(CLOSURE_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - began
    assert errors == []
    return counts, elapsed


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_closure_lock_with_twelve_link_writers(backend: SqlaBackend, user: DbUser) -> None:
    """Throughput of 12 concurrent link writers with and without the closure (its advisory lock serialises them)."""
    from aiida_sqla_plugin.closure import install_tc  # noqa: PLC0415
    from aiida_sqla_plugin.models import DbPath  # noqa: PLC0415

    user_id = user_pk(backend)
    with backend.engine.begin() as connection:
        ids = insert_nodes(connection, node_rows(user_id, 2 * CLOSURE_WRITERS * CHAIN_NODES))
    half = len(ids) // 2
    plain_chains = [ids[index:half:CLOSURE_WRITERS] for index in range(CLOSURE_WRITERS)]
    closed_chains = [ids[half + index::CLOSURE_WRITERS] for index in range(CLOSURE_WRITERS)]
    plain_counts, plain_seconds = links_per_second(backend, plain_chains)
    install_tc(backend.get_session())
    backend.close()
    closed_counts, closed_seconds = links_per_second(backend, closed_chains)
    plain, closed = sum(plain_counts), sum(closed_counts)
    with backend.engine.connect() as connection:
        links = connection.scalar(select(func.count()).select_from(DbLink))
        # a chain of k links has k (k + 1) / 2 ancestor pairs: the closure kept up with every committed link
        pairs = connection.scalar(select(func.count()).select_from(DbPath).where(DbPath.parent_id != DbPath.child_id))
    assert links == plain + closed
    assert plain and closed
    assert pairs == sum(k * (k + 1) // 2 for k in plain_counts + closed_counts)
    figure = (f"{CLOSURE_WRITERS} link writers, {CLOSURE_SECONDS:g} s: {plain / plain_seconds:.0f} links/s without the "
              f"closure, {closed / closed_seconds:.0f} links/s with it ({pairs} closure pairs)")
    print(figure)
    target = os.environ.get("AIIDA_SQLA_TEST_SCALE_REPORT")
    if target:
        with open(target, "a") as file:
            file.write(figure + "\n")
