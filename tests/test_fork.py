"""Real ``os.fork()`` and ``multiprocessing`` (fork context) on SQLite and PostgreSQL.

The parent keeps a transaction open across the fork; the child queries and writes through a connection of its own
and reports success through its exit code; the parent then commits. The fork callback is registered once per
process by the host stub (``os.register_at_fork``), as a real host does; ``fork_hooks_suspended`` simulates a fork
that bypasses it, where the pid guards must still give the child fresh connections.

SQLite keeps its lock state in process memory, which a child inherits: a child forked while its parent holds the
*write* lock can never write (see :func:`test_sqlite_child_forked_during_a_write_cannot_write`). Hence reads never
take that lock. And in WAL mode a transaction that has read cannot write once another connection committed after
its read began (``SQLITE_BUSY_SNAPSHOT``), so on SQLite the parent's pending row is held by its session and the
database transaction begins at the commit; processes end a read before they write.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from aiida_sqla_plugin import Profile, get_engine, plugins, get_scoped_session, get_session_factory, recreate_after_fork
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.models import DbUser
from aiida_sqla_plugin.session import SQLITE_BEGIN_OPTION, create_profile_engine

from host_stub import Host, fork_hooks_suspended

CHILD_TIMEOUT = 60.0
#: Set to a test's node id in the fresh interpreter that runs that test alone.
FRESH_INTERPRETER = "AIIDA_SQLA_TEST_FRESH_INTERPRETER"


def ran_in_fresh_interpreter(request: pytest.FixtureRequest) -> bool:
    """Run this test again in a new interpreter and return True once it passed there (the caller returns).

    Tests of forks that bypass the hooks must not profit from a fork callback that earlier tests (the CLI's)
    registered for good with ``os.register_at_fork``; in the new interpreter nothing registered one but the
    host stub, whose hooks the test suspends. Inside that interpreter this returns False and the body runs.
    """
    nodeid = request.node.nodeid
    if os.environ.get(FRESH_INTERPRETER) == nodeid:
        assert not plugins._fork_hooks_registered, "the library's fork callback must not be registered here"
        return False
    environment = {**os.environ, FRESH_INTERPRETER: nodeid}
    # ``python -m`` puts its working directory first on sys.path: run it from tests/, so the new interpreter
    # imports the installed package (as the suite does), not the source tree, whose layout differs from it.
    tests = request.config.rootpath / "tests"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(request.config.rootpath / nodeid)],
        cwd=tests, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"{nodeid} failed in a fresh interpreter:\n{result.stdout}\n{result.stderr}"
    assert "1 passed" in result.stdout, result.stdout
    return True


@pytest.fixture
def host(backend: SqlaBackend) -> Iterator[Host]:
    """A host serving the test's (migrated) profile; its fork callback is registered once per process."""
    config = {"url": backend.profile.storage_config["url"]}
    host = Host({"default_profile": backend.profile.name, "profiles": {backend.profile.name: {"storage_backend": "sqlalchemy", "storage_config": config}}})
    host.get_backend()
    yield host


def wait_for(pid: int, timeout: float = CHILD_TIMEOUT) -> int:
    """The exit code of child ``pid``; kill it and fail if it runs longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child {pid} did not finish within {timeout} s")
        time.sleep(0.01)


def fork(child: Callable[[], None]) -> int:
    """Fork; the child runs ``child`` and leaves with ``os._exit`` (0 on success, 1 on an exception)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child()
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the exit code
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def emails(session: Session) -> set[str]:
    return set(session.scalars(select(DbUser.email)))


def backend_pid(session: Session) -> int | None:
    """The PostgreSQL server process behind the session's connection (None on SQLite)."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    return int(session.scalar(text("SELECT pg_backend_pid()")))


def open_parent_transaction(dialect: str) -> Session:
    """The parent's session, in a transaction with a pending row (read and flushed to the server on PostgreSQL)."""
    session = get_scoped_session()
    if dialect == "postgresql":
        assert emails(session) == {"tester@example.org"}  # the transaction has begun and read
    session.add(DbUser(email="parent@example.org"))
    if dialect == "postgresql":
        session.flush()  # the row is written, uncommitted, on the parent's connection
    assert session.in_transaction()
    return session


def child_writes(parent: Session, email: str) -> Callable[[], None]:
    """What a child does: check it got a new session and connection, read, write and commit."""
    parent_registry = get_session_factory()
    parent_connection = parent.connection().connection.dbapi_connection if parent.get_bind().dialect.name == "postgresql" else None
    parent_server_pid = backend_pid(parent)

    def child() -> None:
        session = get_scoped_session()
        assert session is not parent
        assert session.connection().connection.dbapi_connection is not parent_connection
        assert get_session_factory() is not parent_registry
        server_pid = backend_pid(session)
        assert server_pid is None or server_pid != parent_server_pid
        assert "parent@example.org" not in emails(session)  # uncommitted in the parent
        session.rollback()  # end the read (SQLite: a stale snapshot cannot write)
        session.add(DbUser(email=email))
        session.commit()
        assert email in emails(session)

    return child


def test_os_fork_child_writes_parent_commits_after(backend: SqlaBackend, user: DbUser, host: Host, dialect: str) -> None:
    parent = open_parent_transaction(dialect)
    pid = fork(child_writes(parent, "child@example.org"))
    assert wait_for(pid) == 0
    parent.commit()
    assert emails(parent) == {"tester@example.org", "parent@example.org", "child@example.org"}


def test_multiprocessing_children_write_parent_commits_after(
    backend: SqlaBackend, user: DbUser, host: Host, dialect: str
) -> None:
    parent = open_parent_transaction(dialect)
    context = multiprocessing.get_context("fork")  # the targets are closures: the fork context does not pickle
    processes = [context.Process(target=child_writes(parent, f"worker{i}@example.org")) for i in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(CHILD_TIMEOUT)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    parent.commit()
    assert emails(parent) == {"tester@example.org", "parent@example.org"} | {f"worker{i}@example.org" for i in range(3)}


def test_fork_bypassing_hooks_uses_the_session_pid_guard(backend: SqlaBackend, user: DbUser, host: Host, dialect: str, request: pytest.FixtureRequest) -> None:
    if ran_in_fresh_interpreter(request):
        return
    parent = open_parent_transaction(dialect)
    with fork_hooks_suspended():
        pid = fork(child_writes(parent, "unhooked@example.org"))
    assert wait_for(pid) == 0
    parent.commit()
    assert "unhooked@example.org" in emails(parent)


def test_fork_bypassing_hooks_uses_the_pool_pid_guard(backend: SqlaBackend, user: DbUser, host: Host, dialect: str, request: pytest.FixtureRequest) -> None:
    """A child that only uses an engine object from before the fork gets a new connection from its pool."""
    if ran_in_fresh_interpreter(request):
        return
    engine = get_engine()
    with engine.connect() as connection:  # leaves a connection checked in, in the parent's pool
        pooled = connection.connection.dbapi_connection
        pooled_server_pid = connection.scalar(text("SELECT pg_backend_pid()")) if dialect == "postgresql" else None
    parent = open_parent_transaction(dialect)

    def child() -> None:
        with engine.connect() as connection:
            assert connection.connection.dbapi_connection is not pooled
            if dialect == "postgresql":
                assert connection.scalar(text("SELECT pg_backend_pid()")) != pooled_server_pid
            connection.execute(DbUser.__table__.insert().values(email="raw@example.org", first_name="", last_name="", institution=""))
            connection.commit()

    with fork_hooks_suspended():
        pid = fork(child)
    assert wait_for(pid) == 0
    parent.commit()
    with engine.connect() as connection:  # the parent's pooled connection is intact and still in use
        assert connection.connection.dbapi_connection is pooled
        if dialect == "postgresql":
            assert connection.scalar(text("SELECT pg_backend_pid()")) == pooled_server_pid
        assert connection.scalar(select(DbUser.id).where(DbUser.email == "raw@example.org")) is not None


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_sqlite_children_write_after_parent_released_the_write_lock(backend: SqlaBackend, user: DbUser, host: Host) -> None:
    """A parent that wrote and committed, then forks inside a read transaction, leaves its children free to write."""
    parent = get_scoped_session()
    parent.add(DbUser(email="first@example.org"))
    parent.commit()
    parent.connection(execution_options={SQLITE_BEGIN_OPTION: "DEFERRED"})
    assert "first@example.org" in emails(parent)  # an open read transaction at the fork
    pids = [fork(child_writes(parent, f"late{i}@example.org")) for i in range(2)]
    assert [wait_for(pid) for pid in pids] == [0, 0]
    parent.commit()  # end the read transaction before writing
    parent.add(DbUser(email="parent@example.org"))
    parent.commit()
    assert {"late0@example.org", "late1@example.org", "parent@example.org"} <= emails(parent)


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_sqlite_child_forked_during_a_write_cannot_write(backend: SqlaBackend, user: DbUser, host: Host) -> None:
    """SQLite's limit, pinned: its lock state lives in process memory, so never fork while holding the write lock.

    The child waits until the parent has committed (a pipe says so), checks that it sees the committed row, and
    only then fails to write: the write lock the parent released after the fork is still held in the child's
    inherited lock state.
    """
    parent = get_scoped_session()
    parent.add(DbUser(email="parent@example.org"))
    parent.flush()  # takes the write lock
    committed_read, committed_write = os.pipe()

    def child() -> None:
        os.close(committed_write)
        with os.fdopen(committed_read) as committed:
            assert committed.read() == "committed"
        session = get_scoped_session()
        session.connection().exec_driver_sql("PRAGMA busy_timeout=300")
        assert "parent@example.org" in emails(session)  # the parent's commit is visible: the lock was released
        session.rollback()
        with pytest.raises(OperationalError, match="database is locked"):
            session.execute(DbUser.__table__.insert().values(email="x@example.org", first_name="", last_name="", institution=""))

    pid = fork(child)
    os.close(committed_read)
    parent.commit()
    with os.fdopen(committed_write, "w") as committed:
        committed.write("committed")
    assert wait_for(pid) == 0
    parent.add(DbUser(email="after@example.org"))
    parent.commit()  # the parent itself still writes


def test_recreate_after_fork_of_an_engine_the_backend_does_not_manage(profile: Profile, dialect: str, request: pytest.FixtureRequest) -> None:
    if ran_in_fresh_interpreter(request):
        return
    engine = create_profile_engine(profile)
    try:
        with engine.connect() as connection:
            pooled = connection.connection.dbapi_connection
        pool = engine.pool

        def child() -> None:
            recreate_after_fork(engine)
            assert engine.pool is not pool
            with engine.connect() as connection:
                assert connection.connection.dbapi_connection is not pooled
                assert connection.scalar(text("SELECT 1")) == 1

        with fork_hooks_suspended():
            pid = fork(child)
        assert wait_for(pid) == 0
        with engine.connect() as connection:
            assert connection.connection.dbapi_connection is pooled
            assert connection.scalar(text("SELECT 2")) == 2
    finally:
        engine.dispose()
