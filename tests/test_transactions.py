"""The one transaction rule: library calls join the caller's transaction, else commit their own (both dialects)."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from aiida_sqla_plugin import graph
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.closure import closure_status, install_tc
from aiida_sqla_plugin.exceptions import ValidationError
from aiida_sqla_plugin.models import DbLink, DbNode, DbSetting, DbUser
from aiida_sqla_plugin.queries import SqlaQueryManager
from helpers import count_rows, node_rows


class Boom(Exception):
    """Raised by a test after library calls, inside the caller's block."""


def test_a_session_that_read_before_sees_the_new_rows(backend, user):
    session = backend.get_session()
    assert session.scalar(select(func.count()).select_from(DbNode)) == 0  # a read: SQLite takes a snapshot
    ids = backend.bulk_insert(DbNode, node_rows(user.id, 3))
    assert session.scalar(select(func.count()).select_from(DbNode)) == 3
    assert set(session.scalars(select(DbNode.id))) == set(ids)
    assert count_rows(backend, DbNode) == 3  # no transaction of the caller's was open: the call committed


def test_rows_are_visible_in_the_block_and_roll_back_with_it(backend, user):
    with pytest.raises(Boom), backend.transaction() as session:
        ids = backend.bulk_insert(DbNode, node_rows(user.id, 4))
        assert set(session.scalars(select(DbNode.id))) == set(ids)
        assert count_rows(backend, DbNode) == 0
        raise Boom
    assert count_rows(backend, DbNode) == 0
    assert backend.get_session().scalar(select(func.count()).select_from(DbNode)) == 0


def test_two_bulk_inserts_in_one_block_commit_together(backend, user):
    with backend.transaction():
        data, calc = backend.bulk_insert(DbNode, node_rows(user.id, 2))
        backend.bulk_insert(DbLink, [{"input_id": data, "output_id": calc, "label": "x", "type": "input_calc"}])
        assert count_rows(backend, DbNode) == 0 and count_rows(backend, DbLink) == 0
    assert count_rows(backend, DbNode) == 2 and count_rows(backend, DbLink) == 1
    assert graph.get_ancestors([calc]) == {data}


def test_an_invalid_call_in_a_block_undoes_only_itself(backend, user):
    with backend.transaction():
        backend.bulk_insert(DbNode, node_rows(user.id, 2))
        with pytest.raises(ValidationError):
            backend.bulk_insert(DbLink, [{"input_id": 10**9, "output_id": 1, "label": "x", "type": "create"}])
        with pytest.raises(ValidationError, match="refused"):
            backend.bulk_insert(DbUser, [{"email": user.email}])  # unique violation raised by the database
    assert count_rows(backend, DbNode) == 2 and count_rows(backend, DbLink) == 0


def test_rows_may_refer_to_pending_orm_objects(backend, user):
    with backend.transaction() as session:
        node = DbNode(node_type="data.core.int.Int.", user_id=user.id)
        session.add(node)  # not flushed: bulk_insert flushes it
        session.flush()
        (other,) = backend.bulk_insert(DbNode, node_rows(user.id, 1))
        backend.bulk_insert(DbLink, [{"input_id": node.id, "output_id": other, "label": "x", "type": "create"}])
    assert count_rows(backend, DbLink) == 1


def test_an_explicitly_begun_session_transaction_is_the_callers(backend, user):
    session = backend.get_session()
    session.commit()
    with session.begin():
        backend.bulk_insert(DbNode, node_rows(user.id, 2))
        assert count_rows(backend, DbNode) == 0
    assert count_rows(backend, DbNode) == 2
    session.begin()
    backend.bulk_insert(DbNode, node_rows(user.id, 2))
    session.rollback()
    assert count_rows(backend, DbNode) == 2


def test_closure_functions_follow_the_rule(backend, user):
    data, calc = backend.bulk_insert(DbNode, node_rows(user.id, 2))
    backend.bulk_insert(DbLink, [{"input_id": data, "output_id": calc, "label": "x", "type": "create"}])
    session = backend.get_session()
    with pytest.raises(Boom), backend.transaction():
        install_tc(session)
        assert closure_status(session).installed
        raise Boom
    assert not closure_status(session).installed
    with backend.transaction():
        install_tc(session)
        install_tc(session, ("create",))  # twice in one transaction: the work tables are made anew
    assert closure_status(session).link_types == ("create",)
    assert count_rows(backend, DbSetting) >= 1


def test_graph_deletion_joins_the_callers_block(backend, user):
    (pk,) = backend.bulk_insert(DbNode, node_rows(user.id, 1))
    with pytest.raises(Boom), backend.transaction():
        graph.delete_nodes([pk], dry_run=False)
        raise Boom
    assert count_rows(backend, DbNode) == 1


@pytest.fixture
def sqlite_backend(backend: SqlaBackend, dialect: str) -> SqlaBackend:
    if dialect != "sqlite":
        pytest.skip("SQLite's snapshot conflict (SQLITE_BUSY_SNAPSHOT)")
    return backend


def _write_from_another_connection(backend: SqlaBackend, user_id: int) -> None:
    """Another writer, on an engine of its own (as another process would be), commits a node."""
    engine = create_engine(backend.engine.url)
    try:
        with Session(engine) as other, other.begin():
            other.add(DbNode(node_type="data.core.int.Int.", user_id=user_id))
    finally:
        engine.dispose()


def test_sqlite_read_then_write_after_another_commit_is_locked(sqlite_backend, user):
    backend = sqlite_backend
    user_id = user.id
    with pytest.raises(OperationalError, match="database is locked"), backend.transaction() as session:
        session.scalar(select(func.count()).select_from(DbNode))  # the block's snapshot begins here
        _write_from_another_connection(backend, user_id)
        session.add(DbNode(node_type="data.core.int.Int.", user_id=user_id))
        session.flush()  # the write lock cannot be taken on a stale snapshot: fails at once
    assert count_rows(backend, DbNode) == 1


def test_sqlite_write_blocks_and_library_calls_do_not_meet_it(sqlite_backend, user):
    backend = sqlite_backend
    user_id = user.id
    session = backend.get_session()
    session.scalar(select(func.count()).select_from(DbNode))  # an implicit read transaction of the session
    _write_from_another_connection(backend, user_id)
    backend.bulk_insert(DbNode, node_rows(user_id, 2))  # commits that read transaction first, then begins IMMEDIATE
    with backend.transaction(write=True) as session:
        session.scalar(select(func.count()).select_from(DbNode))
        session.add(DbNode(node_type="data.core.int.Int.", user_id=user_id))
    assert count_rows(backend, DbNode) == 4


def test_settings_join_the_callers_block_and_roll_back_with_it(backend, user):
    settings = backend.settings
    settings.set("kept", 1)
    with pytest.raises(Boom), backend.transaction(write=True):
        backend.bulk_insert(DbNode, node_rows(user.id, 2))
        settings.set("kept", 2)
        settings.set("discarded", [1, 2])
        assert settings.get("kept").value == 2  # the block sees its own writes
        settings.delete("kept")
        raise Boom
    assert settings.get("kept").value == 1
    assert count_rows(backend, DbSetting, DbSetting.key == "discarded") == 0
    assert count_rows(backend, DbNode) == 0
    with backend.transaction(write=True):
        settings.set("committed", True)
    assert count_rows(backend, DbSetting, DbSetting.key == "committed") == 1


def test_reads_outside_a_block_leave_the_next_block_atomic(backend, user):
    """A read outside any block is its own transaction (PostgreSQL: in autocommit, one round trip); the pooled
    connection it used must come back transactional, so a later failing block still loses all of its work."""
    settings = backend.settings
    settings.set("kept", 1)
    for attempt in range(3):  # the reads and blocks go round the pool's connections
        assert settings.get("kept").value == 1
        with pytest.raises(Boom), backend.transaction(write=True):
            settings.set("kept", attempt + 2)
            backend.bulk_insert(DbNode, node_rows(user.id, 2))
            raise Boom
        assert settings.get("kept").value == 1
        assert count_rows(backend, DbNode) == 0


def test_creation_statistics_see_the_callers_uncommitted_nodes(backend, user):
    statistics = SqlaQueryManager(backend)
    with pytest.raises(Boom), backend.transaction(write=True):
        backend.bulk_insert(DbNode, node_rows(user.id, 3))
        assert statistics.get_creation_statistics()["total"] == 3
        raise Boom
    assert statistics.get_creation_statistics()["total"] == 0
