"""PostgreSQL: a pooled connection whose server process was terminated is replaced at the next checkout."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from aiida_sqla_plugin import get_engine
from aiida_sqla_plugin import session as session_module
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import UnreachableStorage

from conftest import PG_ADMIN_URL


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
