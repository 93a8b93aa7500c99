"""Scoped sessions per thread and profile, engine disposal, and the SQLite connection set-up."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

import aiida_sqla_plugin
from aiida_sqla_plugin import Profile, get_engine, get_scoped_session, reset_session
from aiida_sqla_plugin.session import SQLITE_BUSY_TIMEOUT_MS, SQLITE_CACHE_KIB, get_current_profile

from helpers import create_postgres_database, drop_postgres_database


@pytest.fixture
def other_profile(dialect: str, tmp_path: Path) -> Iterator[Profile]:
    """A second profile of the test's dialect, on a database of its own."""
    if dialect == "sqlite":
        yield Profile("other", "sqlalchemy", {"url": f"sqlite:///{tmp_path / 'other.sqlite'}"})
        return
    url = create_postgres_database()
    try:
        yield Profile("other", "sqlalchemy", {"url": url.render_as_string(hide_password=False)})
    finally:
        aiida_sqla_plugin.dispose_engines()
        drop_postgres_database(url)


def database_identity(session: Session) -> str:
    """The file or database name the session is connected to."""
    if session.get_bind().dialect.name == "sqlite":
        return str(session.execute(text("PRAGMA database_list")).all()[0][2])
    return str(session.scalar(text("SELECT current_database()")))


def test_same_session_in_a_thread_other_session_in_another(profile: Profile) -> None:
    reset_session(profile)
    first = get_scoped_session()
    assert get_scoped_session() is first
    seen: list[Session] = []
    thread = threading.Thread(target=lambda: seen.append(get_scoped_session()))
    thread.start()
    thread.join()
    assert len(seen) == 1 and seen[0] is not first
    assert seen[0].get_bind() is first.get_bind()


def test_sessions_are_built_lazily_for_the_current_profile(profile: Profile) -> None:
    aiida_sqla_plugin.set_current_profile(profile)
    assert get_current_profile() is profile
    assert get_scoped_session().scalar(text("SELECT 1")) == 1


def test_reset_session_switches_databases(profile: Profile, other_profile: Profile) -> None:
    reset_session(profile)
    session_a = get_scoped_session()
    identity_a = database_identity(session_a)
    session_a.execute(text("CREATE TABLE marker (value VARCHAR(20))"))
    session_a.execute(text("INSERT INTO marker VALUES ('written in A')"))
    session_a.commit()

    reset_session(other_profile)
    session_b = get_scoped_session()
    assert session_b is not session_a
    assert get_current_profile() is other_profile
    assert database_identity(session_b) != identity_a
    assert not inspect(session_b.connection()).has_table("marker")
    session_b.rollback()

    reset_session(profile)
    assert get_scoped_session().scalar(text("SELECT value FROM marker")) == "written in A"


def test_reset_session_disposes_the_old_engine(profile: Profile) -> None:
    reset_session(profile)
    old_engine = get_engine()
    old_session = get_scoped_session()
    old_session.scalar(text("SELECT 1"))
    assert old_session.in_transaction()
    closed: list[Any] = []
    event.listen(old_engine.pool, "close", lambda dbapi_connection, record: closed.append(dbapi_connection))

    reset_session(profile)

    assert get_engine() is not old_engine
    assert get_scoped_session() is not old_session
    assert not old_session.in_transaction()  # closed: its connection went back to the old pool
    assert len(closed) == 1  # ... and the old pool closed it
    assert old_engine.pool.checkedout() == 0 and old_engine.pool.checkedin() == 0


def test_dispose_engines_forgets_the_current_profile(profile: Profile) -> None:
    reset_session(profile)
    aiida_sqla_plugin.dispose_engines()
    with pytest.raises(aiida_sqla_plugin.exceptions.ConfigurationError):
        get_current_profile()


def test_changed_url_of_the_same_profile_name_gets_a_new_engine(profile: Profile, tmp_path: Path) -> None:
    reset_session(profile)
    engine = get_engine()
    moved = Profile(profile.name, "sqlalchemy", {"url": f"sqlite:///{tmp_path / 'moved.sqlite'}"})
    assert get_engine(moved) is not engine
    assert get_engine(moved).url.database == str(tmp_path / "moved.sqlite")


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_sqlite_pragmas_on_every_connection(profile: Profile) -> None:
    engine = get_engine(profile)
    connections = [engine.connect() for _ in range(3)]
    try:
        assert len({id(connection.connection.dbapi_connection) for connection in connections}) == 3
        for connection in connections:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
            assert connection.exec_driver_sql("PRAGMA cache_size").scalar() == -SQLITE_CACHE_KIB
    finally:
        for connection in connections:
            connection.close()


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_sqlite_ddl_is_transactional(profile: Profile) -> None:
    engine = get_engine(profile)
    with engine.connect() as connection:
        connection.execute(text("CREATE TABLE scratch (x INTEGER)"))
        connection.rollback()
        assert not inspect(connection).has_table("scratch")


def _short_busy_timeout(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA busy_timeout=500")  # fail fast instead of waiting 60 s


def test_reads_do_not_take_the_write_lock(profile: Profile) -> None:
    engine = get_engine(profile)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (value INTEGER)"))
        connection.execute(text("INSERT INTO counter VALUES (1)"))
    with engine.connect() as reader, engine.connect() as writer:
        _short_busy_timeout(writer)
        assert reader.scalar(text("SELECT value FROM counter")) == 1
        assert reader.in_transaction()
        writer.execute(text("UPDATE counter SET value = 2"))
        writer.commit()  # would raise "database is locked" if the reader held the write lock
        if reader.dialect.name == "sqlite":  # WAL: the reader keeps its snapshot (PostgreSQL: read committed)
            assert reader.scalar(text("SELECT value FROM counter")) == 1
        reader.commit()
        assert reader.scalar(text("SELECT value FROM counter")) == 2


def test_session_read_does_not_block_another_writer(profile: Profile) -> None:
    """An ORM session that only read leaves other connections free to write."""
    reset_session(profile)
    session = get_scoped_session()
    session.execute(text("CREATE TABLE t (x INTEGER)"))
    session.commit()
    assert session.scalar(text("SELECT count(*) FROM t")) == 0
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with get_engine().connect() as connection:
                _short_busy_timeout(connection)
                connection.execute(text("INSERT INTO t VALUES (1)"))
                connection.commit()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and errors == []
    session.rollback()
    assert session.scalar(text("SELECT count(*) FROM t")) == 1

