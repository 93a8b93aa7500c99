"""Fork storms: a parent with an open transaction and a busy pool forks 20 children, each of which writes.

Run with the host's fork hook and without it (the pid guards alone); ``os.fork`` and the multiprocessing fork
context. Afterwards every row is present exactly once and the SQLite file passes ``PRAGMA integrity_check``.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, text

from aiida_sqla_plugin import get_engine, get_scoped_session
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.models import DbUser

from host_stub import Host, fork_hooks_suspended
from test_fork import ran_in_fresh_interpreter

CHILDREN = 20
TIMEOUT = 120.0


@pytest.fixture
def host(backend: SqlaBackend) -> Iterator[Host]:
    config = {"url": backend.profile.storage_config["url"]}
    host = Host({"default_profile": backend.profile.name, "profiles": {backend.profile.name: {"storage_backend": "sqlalchemy", "storage_config": config}}})
    host.get_backend()
    yield host


def child_work(index: int) -> None:
    """Write one row through the child's own session, then one through the engine's pool."""
    try:
        session = get_scoped_session()
        session.add(DbUser(email=f"child{index}@example.org"))
        session.commit()
        with get_engine().connect() as connection:
            connection.execute(DbUser.__table__.insert().values(email=f"raw{index}@example.org", first_name="", last_name="", institution=""))
            connection.commit()
        session.close()
    except BaseException:  # noqa: BLE001 - reported through the exit code
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def os_fork_child(index: int) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            child_work(index)
        finally:
            os._exit(0)
    return pid


def wait_all(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + TIMEOUT
    codes: dict[int, int] = {}
    while len(codes) < len(pids):
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            for pid in set(pids) - set(codes):
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            pytest.fail(f"{len(pids) - len(codes)} children did not finish within {TIMEOUT} s")
        time.sleep(0.01)
    return [codes[pid] for pid in pids]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
@pytest.mark.parametrize("hooked", [True, False], ids=["hook", "pid-guards-only"])
def test_twenty_children_write_while_the_parent_holds_a_transaction(
    backend: SqlaBackend, user: DbUser, host: Host, dialect: str, how: str, hooked: bool, request: pytest.FixtureRequest
) -> None:
    if not hooked and ran_in_fresh_interpreter(request):  # no fork callback of earlier tests may help
        return
    engine = get_engine()
    busy = [engine.connect() for _ in range(3)]  # a busy pool: connections checked out at the fork
    for connection in busy:
        connection.execute(text("SELECT 1"))
    idle = engine.connect()
    idle.execute(text("SELECT 1"))
    idle.close()  # and one checked in
    parent = get_scoped_session()
    if dialect == "postgresql":
        parent.scalars(select(DbUser.email)).all()
    parent.add(DbUser(email="parent@example.org"))
    if dialect == "postgresql":
        parent.flush()  # SQLite: never fork while holding the write lock (see test_fork.py)
    with fork_hooks_suspended() if not hooked else contextlib.nullcontext():
        if how == "os.fork":
            codes = wait_all([os_fork_child(index) for index in range(CHILDREN)])
        else:
            processes = [multiprocessing.get_context("fork").Process(target=child_work, args=(index,)) for index in range(CHILDREN)]
            for process in processes:
                process.start()
            for process in processes:
                process.join(TIMEOUT)
            codes = [process.exitcode if process.exitcode is not None else -1 for process in processes]
    assert codes == [0] * CHILDREN
    for connection in busy:  # the parent's checked-out connections still work
        assert connection.execute(text("SELECT 2")).scalar_one() == 2
        connection.close()
    parent.commit()
    expected = {"tester@example.org", "parent@example.org"}
    expected |= {f"child{i}@example.org" for i in range(CHILDREN)} | {f"raw{i}@example.org" for i in range(CHILDREN)}
    with engine.connect() as connection:
        emails = connection.scalars(select(DbUser.email)).all()
        assert sorted(emails) == sorted(expected)  # each exactly once
        assert connection.execute(select(func.count()).select_from(DbUser)).scalar_one() == len(expected)
        if dialect == "sqlite":
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
