"""Helpers shared by the test modules: PostgreSQL test databases, row builders, counts and id sets, table locks.

Counts and id sets read through a connection of their own, so they see committed rows only.
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy import inspect as sqlalchemy_inspect
from sqlalchemy.engine import URL, Connection, Engine, make_url

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.models import DbLink, DbNode, DbPath, DbUser
from aiida_sqla_plugin.session import application_name

def _shared_archives() -> Path:
    """The folder of real AiiDA archives (test data, not part of the product): ``$AIIDA_SQLA_TEST_ARCHIVES``, else
    ``shared/aiida-archives`` beside the checkout, else the workplace's ``/work/shared/aiida-archives``."""
    if os.environ.get("AIIDA_SQLA_TEST_ARCHIVES"):
        return Path(os.environ["AIIDA_SQLA_TEST_ARCHIVES"])
    candidates = (Path(__file__).resolve().parents[2] / "shared" / "aiida-archives", Path("/work/shared/aiida-archives"))
    return next((path for path in candidates if path.is_dir()), candidates[0])


#: Where the tests read the shared AiiDA archives; tests that need them skip, naming this path, when it is absent.
SHARED_ARCHIVES = _shared_archives()

PG_ADMIN_URL = make_url(os.environ.get("AIIDA_SQLA_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
#: ``(input_id, output_id, link type)``
Edge = tuple[int, int, str]


def admin_execute(statement: str) -> None:
    """Run one statement on the PostgreSQL server's admin database, outside a transaction."""
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def create_postgres_database() -> URL:
    """A new, empty PostgreSQL database with a unique name; drop it with :func:`drop_postgres_database`."""
    name = f"aiida_sqla_test_{uuid.uuid4().hex[:12]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.set(database=name)


def drop_postgres_database(url: URL) -> None:
    admin_execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


def count_rows(backend: SqlaBackend, model: type, *where: object) -> int:
    """Committed rows of ``model`` (matching ``where``)."""
    with backend.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(model).where(*where)).scalar_one())  # type: ignore[arg-type]


def id_set(backend: SqlaBackend, column: Any = DbNode.id) -> set[int]:
    """The committed values of ``column`` (default: every node id)."""
    with backend.engine.connect() as connection:
        return set(connection.execute(select(column)).scalars())


def user_pk(backend: SqlaBackend) -> int:
    """The id of the one stored user, read through the engine (touching an expired ORM user would autobegin)."""
    with backend.engine.connect() as connection:
        return int(connection.execute(select(DbUser.id)).scalar_one())


def node_rows(user_id: int, n: int, **extra: Any) -> list[dict[str, Any]]:
    """``n`` rows of integer data nodes for ``bulk_insert``, with ``attributes = {"value": i}``."""
    return [{"node_type": "data.core.int.Int.", "user_id": user_id, "attributes": {"value": i}, **extra} for i in range(n)]


def insert_nodes(connection: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Store node rows with one Core executemany; returns their ids in order."""
    first = connection.execute(select(func.coalesce(func.max(DbNode.id), 0))).scalar_one()
    connection.execute(insert(DbNode.__table__), rows)  # type: ignore[arg-type]
    ids = list(connection.execute(select(DbNode.id).where(DbNode.id > first).order_by(DbNode.id)).scalars())
    assert len(ids) == len(rows)
    return ids


def insert_links(connection: Connection, edges: Iterable[Edge]) -> None:
    """Store links with one Core executemany, labelled ``l<input>_<output>``."""
    rows = [{"input_id": u, "output_id": v, "type": kind, "label": f"l{u}_{v}"} for u, v, kind in edges]
    connection.execute(insert(DbLink.__table__), rows)  # type: ignore[arg-type]


def closure(connection: Connection) -> dict[tuple[int, int], int]:
    """``db_dbpath`` as a dict: (ancestor, descendant) -> number of paths."""
    return {(p, c): n for p, c, n in connection.execute(select(DbPath.parent_id, DbPath.child_id, DbPath.path_count))}


def insert_ladder_from_its_end(connection: Connection, ids: list[int]) -> None:
    """``create`` links from each node to the next two (path counts are Fibonacci numbers), one statement per
    source from the last to the first: with the closure installed its pairs arrive grouped by ancestor."""
    for i in reversed(range(len(ids) - 1)):
        insert_links(connection, [(ids[i], ids[j], "create") for j in (i + 1, i + 2) if j < len(ids)])


def closure_layout(connection: Connection) -> dict[str, Any]:
    """db_dbpath's key and index columns, whether SQLite clusters it on its key, and on PostgreSQL how closely the
    heap follows child_id (1.0: stored in descendant order)."""
    schema = sqlalchemy_inspect(connection)
    layout: dict[str, Any] = {
        "key": schema.get_pk_constraint("db_dbpath")["constrained_columns"],
        "indexes": [index["column_names"] for index in schema.get_indexes("db_dbpath")],
    }
    if connection.dialect.name == "sqlite":
        sql = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'db_dbpath'").scalar_one()
        layout["clustered"] = "WITHOUT ROWID" in sql.upper()
    else:
        connection.exec_driver_sql("ANALYZE db_dbpath")
        layout["clustered"] = connection.exec_driver_sql(
            "SELECT correlation FROM pg_stats WHERE tablename = 'db_dbpath' AND attname = 'child_id'"
        ).scalar_one() > 0.99
    return layout


def database_fingerprint(url: URL | str) -> dict[str, int]:
    """Every table of the database with its row count, read through an engine of its own (SQLite: the file must exist).

    Two equal fingerprints mean no table appeared, vanished or changed its number of rows in between.
    """
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            names = sqlalchemy_inspect(connection).get_table_names()
            quote = connection.dialect.identifier_preparer.quote
            return {name: int(connection.execute(text(f"SELECT count(*) FROM {quote(name)}")).scalar_one()) for name in names}
    finally:
        engine.dispose()


def truncated_sqlite_database(tmp_path: Path) -> bytes:
    """The first half of a migrated, filled SQLite database."""
    source = tmp_path / "source.sqlite"
    profile = aiida_sqla_plugin.Profile(name="source", storage_backend="sqlalchemy", storage_config={"url": f"sqlite:///{source}"})
    aiida_sqla_plugin.reset_session(profile)
    SqlaBackendManager(profile).migrate()
    backend = SqlaBackend(profile)
    with backend.transaction() as session:
        user = DbUser(email="u@example.org")
        session.add(user)
    backend.bulk_insert(DbNode, [{"node_type": "data.", "user_id": user.id, "label": "n" * 200}] * 2000)
    aiida_sqla_plugin.dispose_engines()
    data = source.read_bytes()
    return data[: len(data) // 2]


def new_profile(dialect: str, tmp_path: Path, request: Any, name: str = "restored") -> aiida_sqla_plugin.Profile:
    """A profile of a new, empty database of ``dialect`` (a PostgreSQL one is dropped when the test ends), with its
    object store in ``tmp_path`` (not in the user data directory other tests share)."""
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / f'{name}.sqlite'}"
    else:
        new_url = create_postgres_database()

        def drop() -> None:
            aiida_sqla_plugin.dispose_engines()
            drop_postgres_database(new_url)

        request.addfinalizer(drop)
        url = new_url.render_as_string(hide_password=False)
    return aiida_sqla_plugin.Profile(name, "sqlalchemy", {"url": url, "repository": str(tmp_path / f"{name}.objects")})


#: Seconds a test waits for a server process of this process to reach a lock before it fails.
WAIT_SECONDS = 60.0


class LockedTables:
    """Holds ``ACCESS EXCLUSIVE`` on tables of a database, so a statement of this process reading them waits in flight.

    The lock is held by an engine without this package's hooks; a second, autocommit connection watches
    ``pg_stat_activity`` (a transaction would see a frozen snapshot of it) and terminates the waiting processes.
    """

    def __init__(self, url: URL, tables: tuple[str, ...]) -> None:
        self.engine: Engine = create_engine(url)
        self.holder = self.engine.connect()
        self.holder.execute(text(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE"))
        self.monitor = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.seen: list[int] = []

    def next_waiter(self) -> int:
        """The server pid of the next connection of this process that waits for the lock (not one seen before)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            pids = self.monitor.scalars(
                text("SELECT pid FROM pg_stat_activity WHERE application_name = :name AND wait_event_type = 'Lock' "
                     "AND datname = current_database()"),
                {"name": application_name()},
            ).all()
            new = [pid for pid in pids if pid not in self.seen]
            if new:
                self.seen.append(new[0])
                return new[0]
            assert time.monotonic() < deadline, f"no new connection waited for the lock (seen {self.seen})"
            time.sleep(0.05)

    def kill_next_waiter(self) -> int:
        pid = self.next_waiter()
        assert self.monitor.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}) is True
        return pid

    def release(self) -> None:
        self.holder.rollback()

    def close(self) -> None:
        """Drop both connections without a rollback (they may have died with the server); the lock goes with them."""
        for connection in (self.holder, self.monitor):
            connection.invalidate()
            connection.close()
        self.engine.dispose()


def run_in_thread(call: Callable[[], Any]) -> tuple[ThreadPoolExecutor, Future[Any]]:
    """Start ``call`` in a thread of its own: its own scoped session, no caller transaction."""
    executor = ThreadPoolExecutor(max_workers=1)
    return executor, executor.submit(call)
