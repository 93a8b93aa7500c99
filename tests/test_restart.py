"""PostgreSQL: connections whose server process was terminated (as by a server restart).

A pooled connection that died while idle is replaced at the next checkout (pre-ping). A read whose connection dies
in flight runs again once (``session.idempotent_read``), unless the lost transaction was the caller's; writes never
run again. "In flight" is made deterministic by an ``ACCESS EXCLUSIVE`` lock that the read waits for, so that the
test terminates exactly the server process running it, and sees the second attempt arrive on a new one.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from aiida_sqla_plugin import get_engine
from aiida_sqla_plugin import session as session_module
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import ConnectionLost, UnreachableStorage
from aiida_sqla_plugin.graph import get_ancestors
from aiida_sqla_plugin.models import DbLink, DbNode, DbUser
from aiida_sqla_plugin.reports import count_entities, missing_nodes
from aiida_sqla_plugin.settings import list_settings

from conftest import PG_ADMIN_URL
from helpers import WAIT_SECONDS, LockedTables, count_rows, run_in_thread

def terminate(pid: int) -> None:
    """End server process ``pid`` from an administrator connection, and give it a moment to go."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            assert connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}) is True
            connection.execute(text("SELECT pg_sleep(0.2)"))
    finally:
        admin.dispose()


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_terminated_pooled_connection_is_replaced_by_the_pre_ping(backend: SqlaBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only connections idle for longer than PRE_PING_IDLE_SECONDS are pinged; this one was returned just now.
    monkeypatch.setattr(session_module, "PRE_PING_IDLE_SECONDS", 0.0)
    engine = get_engine()
    with engine.connect() as connection:
        dead_pid = connection.scalar(text("SELECT pg_backend_pid()"))
        dead = connection.connection.dbapi_connection
    terminate(dead_pid)
    with engine.connect() as connection:  # the pre-ping finds it dead and opens another; no error reaches us
        assert connection.connection.dbapi_connection is not dead
        assert connection.scalar(text("SELECT pg_backend_pid()")) != dead_pid
        assert connection.scalar(text("SELECT count(*) FROM db_dbnode")) == 0
    session = backend.get_session()  # and the ORM session, which checks out from the same pool
    assert session.scalar(text("SELECT 1")) == 1


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_without_pre_ping_the_dead_connection_would_reach_the_caller(backend: SqlaBackend) -> None:
    """The control: the same termination on an engine without pre-ping fails, so the test above can fail."""
    engine = create_engine(backend.engine.url, pool_size=1)
    try:
        with engine.connect() as connection:
            dead_pid = connection.scalar(text("SELECT pg_backend_pid()"))
        terminate(dead_pid)
        with pytest.raises(OperationalError):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_connection_lost_in_use_raises_unreachable_storage_and_the_next_checkout_works(backend: SqlaBackend) -> None:
    engine = get_engine()
    with engine.connect() as connection:
        terminate(connection.scalar(text("SELECT pg_backend_pid()")))
        with pytest.raises(UnreachableStorage, match="was lost"):
            connection.execute(text("SELECT 1"))
    with engine.connect() as connection:  # the pool was invalidated: a new connection, no error
        assert connection.scalar(text("SELECT 1")) == 1


def stored_graph(backend: SqlaBackend) -> tuple[int, int]:
    """Two nodes, a ``create`` link from the first to the second, and the setting ``answer = 42``."""
    with backend.transaction(write=True) as session:
        user = DbUser(email="reader@example.org")
        first, second = DbNode(node_type="data.core.int.Int.", user=user), DbNode(node_type="data.core.int.Int.", user=user)
        session.add_all([first, second])
        session.flush()
        session.add(DbLink(input_id=first.id, output_id=second.id, type="create", label="result"))
        ids = first.id, second.id
    backend.settings.set("answer", 42)
    return ids


#: Public reads, the tables to lock so that each waits in flight, and the answer: ``(tables, read, expected)``.
READS: dict[str, tuple[tuple[str, ...], Callable[[SqlaBackend, tuple[int, int]], Any], Callable[[tuple[int, int]], Any]]] = {
    "get_ancestors": (("db_dblink", "db_dbpath"), lambda b, ids: get_ancestors([ids[1]], backend=b), lambda ids: {ids[0]}),
    "get_creation_statistics": (("db_dbnode",), lambda b, ids: b.query_manager.get_creation_statistics()["total"], lambda ids: 2),
    "settings.get": (("db_dbsetting",), lambda b, ids: b.settings.get("answer").value, lambda ids: 42),
    "list_settings": (("db_dbsetting",), lambda b, ids: [s.key for s in list_settings(b.engine) if s.key == "answer"], lambda ids: ["answer"]),
    "count_entities": (("db_dbnode",), lambda b, ids: count_entities(b.engine)["links"], lambda ids: 1),
    "missing_nodes": (("db_dbnode",), lambda b, ids: missing_nodes(b.engine, [*ids, ids[1] + 1]), lambda ids: {ids[1] + 1}),
}


@pytest.mark.parametrize("read", sorted(READS))
@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_a_read_whose_connection_dies_in_flight_runs_again_once(
    backend: SqlaBackend, read: str, caplog: pytest.LogCaptureFixture
) -> None:
    tables, call, expected = READS[read]
    ids = stored_graph(backend)
    caplog.set_level(logging.WARNING, logger=session_module.__name__)
    locks = LockedTables(backend.engine.url, tables)
    try:
        executor, future = run_in_thread(lambda: call(backend, ids))
        first = locks.kill_next_waiter()  # the read's statement, waiting for the lock on the server
        second = locks.next_waiter()  # the second attempt, on a new connection
        assert second != first
        locks.release()
        assert future.result(timeout=WAIT_SECONDS) == expected(ids)
        executor.shutdown()
    finally:
        locks.close()
    assert [record.getMessage() for record in caplog.records if "running it again once" in record.getMessage()]


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_a_second_loss_in_a_row_is_raised(backend: SqlaBackend) -> None:
    ids = stored_graph(backend)
    locks = LockedTables(backend.engine.url, ("db_dblink", "db_dbpath"))
    try:
        executor, future = run_in_thread(lambda: get_ancestors([ids[1]], backend=backend))
        locks.kill_next_waiter()
        locks.kill_next_waiter()
        # Raised while the lock is still held: there was no third attempt (it would wait for the lock).
        with pytest.raises(ConnectionLost, match="was lost") as caught:
            future.result(timeout=WAIT_SECONDS)
        assert not caught.value.callers_transaction
        executor.shutdown()
    finally:
        locks.close()
    assert get_ancestors([ids[1]], backend=backend) == {ids[0]}  # and the next call works


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_a_write_whose_connection_dies_is_not_run_again(backend: SqlaBackend) -> None:
    stored_graph(backend)
    locks = LockedTables(backend.engine.url, ("db_dbsetting",))
    try:
        executor, future = run_in_thread(lambda: backend.settings.set("answer", 43))
        locks.kill_next_waiter()
        with pytest.raises(ConnectionLost, match="was lost"):  # while the lock is held: not attempted again
            future.result(timeout=WAIT_SECONDS)
        executor.shutdown()
    finally:
        locks.close()
    assert backend.settings.get("answer").value == 42


@pytest.mark.parametrize("opened", ["backend.transaction()", "session.begin()", "implicit"])
@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_a_read_in_the_callers_lost_transaction_is_not_run_again(backend: SqlaBackend, opened: str) -> None:
    """The caller's transaction: a block, one begun explicitly, or one the session began when it flushed."""
    ids = stored_graph(backend)
    session = backend.get_session()
    blocks: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
        "backend.transaction()": lambda: backend.transaction(write=True),
        "session.begin()": session.begin,
        "implicit": contextlib.nullcontext,
    }
    with pytest.raises(ConnectionLost, match="was lost") as caught:
        with blocks[opened]():
            user_id = session.scalar(select(DbUser.id))
            session.add(DbNode(node_type="data.core.int.Int.", user_id=user_id, label="half-written"))
            session.flush()
            terminate(session.scalar(text("SELECT pg_backend_pid()")))
            get_ancestors([ids[1]], backend=backend)  # would answer if it ran again on a new connection
    assert caught.value.callers_transaction
    session.rollback()  # ends the implicit transaction (a no-op after the blocks)
    assert count_rows(backend, DbNode, DbNode.label == "half-written") == 0
    assert get_ancestors([ids[1]], backend=backend) == {ids[0]}  # the next call, in its own transaction, works


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_a_read_on_a_pooled_connection_that_died_idle_runs_again(
    backend: SqlaBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the pre-ping, a dead idle connection reaches the read, which runs again on a new one.

    Every idle connection of this process is terminated: the pool is a FIFO queue, so the next checkout takes the
    one returned longest ago, not the one returned last; killing only the latter would leave a live one in front.
    """
    ids = stored_graph(backend)
    monkeypatch.setattr(session_module, "PRE_PING_IDLE_SECONDS", float("inf"))
    monkeypatch.setattr(session_module, "_socket_readable", lambda dbapi_connection: False)
    caplog.set_level(logging.WARNING, logger=session_module.__name__)
    admin = create_engine(backend.engine.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            idle = connection.scalars(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name "
                     "AND datname = current_database() AND state = 'idle'"),
                {"name": session_module.application_name()},
            ).all()
            connection.execute(text("SELECT pg_sleep(0.2)"))
    finally:
        admin.dispose()
    assert idle and all(idle)
    pool = backend.engine.pool
    assert isinstance(pool, QueuePool) and pool.checkedin() == len(idle)  # every pooled connection is dead
    assert get_ancestors([ids[1]], backend=backend) == {ids[0]}
    assert [record for record in caplog.records if "running it again once" in record.getMessage()]
