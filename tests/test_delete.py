"""delete_nodes_and_connections_sqla: what goes, what stays, and any number of pks (SQLite and PostgreSQL)."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from sqlalchemy import func, insert, select, text

from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.graph import delete_nodes, delete_nodes_and_connections_sqla, get_descendants
from aiida_sqla_plugin.models import (
    DbComment,
    DbGroup,
    DbGroupNode,
    DbLink,
    DbLog,
    DbNode,
    DbUser,
    utc_now,
)
from aiida_sqla_plugin.utils import delete_nodes_and_connections_sqla as reexported
from helpers import count_rows, id_set, insert_links, insert_nodes, user_pk


def add_nodes(backend: SqlaBackend, user: DbUser, number: int, node_type: str = "data.core.int.Int.") -> list[int]:
    """Store ``number`` nodes with one Core executemany; return their pks in order."""
    now = utc_now()
    # user.id through the engine: touching the expired ORM object would autobegin the session's transaction,
    # and backend.transaction() would then only make a savepoint that nobody commits
    user_id = user_pk(backend)
    rows = [
        {
            "uuid": uuid.uuid4(), "node_type": node_type, "label": "", "description": "", "ctime": now, "mtime": now,
            "attributes": {}, "extras": {}, "repository_metadata": {}, "user_id": user_id,
        }
        for _ in range(number)
    ]
    with backend.transaction() as session:
        return insert_nodes(session.connection(), rows)


def add_links(backend: SqlaBackend, links: list[tuple[int, int, str]]) -> None:
    with backend.transaction() as session:
        insert_links(session.connection(), links)




def test_reexported_from_utils() -> None:
    assert reexported is delete_nodes_and_connections_sqla


def test_removes_nodes_links_memberships_comments_logs_and_nothing_else(backend, user) -> None:
    data_in, calc, data_out, other_calc, other_data, unrelated = add_nodes(backend, user, 6)
    add_links(
        backend,
        [
            (data_in, calc, "input_calc"),
            (calc, data_out, "create"),
            (data_out, other_calc, "input_calc"),
            (other_calc, other_data, "create"),
            (unrelated, other_calc, "input_calc"),
        ],
    )
    user_id = user_pk(backend)
    with backend.transaction() as session:
        group = DbGroup(label="g", user_id=user_id)
        session.add(group)
        session.flush()
        group_id = group.id
        for node in (calc, data_out, unrelated):
            session.add(DbGroupNode(dbgroup_id=group.id, dbnode_id=node))
            session.add(DbComment(dbnode_id=node, user_id=user_id, content=f"on {node}"))
            session.add(DbLog(dbnode_id=node, loggername="test", levelname="INFO", message=f"on {node}"))

    delete_nodes_and_connections_sqla([calc, data_out], backend=backend)

    assert id_set(backend, DbNode.id) == {data_in, other_calc, other_data, unrelated}
    with backend.engine.connect() as connection:
        links = set(connection.execute(select(DbLink.input_id, DbLink.output_id, DbLink.type)).all())
    # every link touching a deleted node is gone, even the one from a surviving calculation's input
    assert links == {(other_calc, other_data, "create"), (unrelated, other_calc, "input_calc")}
    assert id_set(backend, DbGroupNode.dbnode_id) == {unrelated}
    assert id_set(backend, DbGroup.id) == {group_id}
    assert id_set(backend, DbComment.dbnode_id) == {unrelated}
    assert id_set(backend, DbLog.dbnode_id) == {unrelated}
    assert count_rows(backend, DbUser) == 1


def test_empty_and_unknown_pks_are_noops(backend, user) -> None:
    nodes = add_nodes(backend, user, 3)
    add_links(backend, [(nodes[0], nodes[1], "create")])
    delete_nodes_and_connections_sqla([], backend=backend)
    delete_nodes_and_connections_sqla(set(), backend=backend)
    delete_nodes_and_connections_sqla([max(nodes) + 1, max(nodes) + 1000], backend=backend)
    assert id_set(backend, DbNode.id) == set(nodes)
    assert count_rows(backend, DbLink) == 1


def test_uses_current_profile_by_default(backend, user) -> None:
    nodes = add_nodes(backend, user, 2)
    delete_nodes_and_connections_sqla(iter([nodes[0]]))  # any iterable; backend=None means the current profile
    assert id_set(backend, DbNode.id) == {nodes[1]}


def test_rolls_back_with_the_callers_transaction(backend, user) -> None:
    nodes = add_nodes(backend, user, 2)
    try:
        with backend.transaction():
            delete_nodes_and_connections_sqla(nodes, backend=backend)
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    assert id_set(backend, DbNode.id) == set(nodes)


@pytest.mark.slow
def test_more_than_seventy_thousand_pks(backend, user, dialect) -> None:
    """No statement grows with the input: 72,000 pks, beyond both drivers' parameter limits (timings: benchmarks)."""
    started = time.perf_counter()
    nodes = add_nodes(backend, user, 72_000)
    # chains of three: data -input_calc-> calc -create-> data; the first 70,500 nodes are deleted
    links = []
    for index in range(0, len(nodes) - 2, 3):
        links.append((nodes[index], nodes[index + 1], "input_calc"))
        links.append((nodes[index + 1], nodes[index + 2], "create"))
    add_links(backend, links)
    with backend.transaction() as session:
        group = DbGroup(label="big", user_id=user_pk(backend))
        session.add(group)
        session.flush()
        session.connection().execute(
            insert(DbGroupNode.__table__), [{"dbgroup_id": group.id, "dbnode_id": node} for node in nodes[::2]]
        )
    built = time.perf_counter()

    # traversal over a 24,000-node frontier, one query per step
    descendants = get_descendants(nodes[::3], backend=backend)
    assert len(descendants) == 48_000
    would, deleted = delete_nodes(nodes[::3], backend=backend)
    assert (len(would), deleted) == (72_000, False)
    traversed = time.perf_counter()

    doomed, kept = nodes[:70_500], nodes[70_500:]
    delete_nodes_and_connections_sqla(doomed + [nodes[-1] + 10**6], backend=backend)
    finished = time.perf_counter()

    assert id_set(backend, DbNode.id) == set(kept)
    assert count_rows(backend, DbLink) == len(kept) // 3 * 2
    assert count_rows(backend, DbGroupNode) == len(nodes[70_500::2])
    print(  # shown with pytest -s
        f"\n[{dialect}] build {built - started:.2f}s, traverse {traversed - built:.2f}s, "
        f"delete 70,500 {finished - traversed:.2f}s"
    )


def test_link_committed_while_deletion_waits_is_followed(backend, user, dialect):
    """PostgreSQL: a deletion waits for a concurrent link writer and then follows the new link too."""
    if dialect != "postgresql":
        pytest.skip("SQLite serialises writers with its database lock")
    data, calc = add_nodes(backend, user, 2)
    writer = backend.engine.connect()
    writer.execute(insert(DbLink.__table__).values(input_id=data, output_id=calc, label="x", type="input_calc"))
    result: dict[str, object] = {}

    def delete() -> None:
        try:
            result["pks"] = delete_nodes([data], dry_run=False, backend=backend)[0]
        finally:
            backend.close()

    thread = threading.Thread(target=delete)
    thread.start()
    writer_pid = writer.scalar(text("SELECT pg_backend_pid()"))
    deadline = time.monotonic() + 30
    with backend.engine.connect() as observer:  # the deletion's lock request waits on the writer's transaction
        while not observer.scalar(
            text("SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> :writer AND pid IN "
                 "(SELECT pid FROM pg_stat_activity WHERE datname = current_database())"),
            {"writer": writer_pid},
        ):
            assert thread.is_alive() and time.monotonic() < deadline, "the deletion must wait for the link writer"
            time.sleep(0.02)
            observer.rollback()
    assert thread.is_alive()
    writer.commit()
    writer.close()
    thread.join(30)
    assert result["pks"] == {data, calc}
    assert count_rows(backend, DbNode, DbNode.id.in_([data, calc])) == 0
