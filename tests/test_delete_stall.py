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
