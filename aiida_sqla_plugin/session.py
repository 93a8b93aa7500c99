"""Engines and scoped sessions, one pair per profile, safe across ``fork()``.

The module keeps a *current profile*: :func:`get_scoped_session` builds its engine lazily. A forked child
must never use, close, roll back or finalise a connection it inherited (SQLite files and libpq sockets are
shared with the parent), so :func:`after_fork_in_child` swaps every engine's pool and session registry for new
ones and keeps the inherited objects referenced, so that garbage collection never resets them either.
A pid check on pool checkout and in :func:`get_scoped_session` guards forks that bypass ``os.register_at_fork``.

SQLite keeps its lock state in process memory, so a child forked while its parent holds SQLite's *write* lock
(uncommitted, flushed writes) can never write; transactions therefore begin deferred and reads take no write
lock. Commit, or at least do not flush, before forking on SQLite.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext
from sqlalchemy.orm import Session, SessionTransactionOrigin, scoped_session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool

from . import values
from .exceptions import (
    AiidaSqlaError,
    AuthenticationFailed,
    ConfigurationError,
    ConnectionLost,
    CorruptStorage,
    DatabaseNotFound,
    PoolExhausted,
    ReadOnlyStorage,
    StorageFull,
    UnreachableStorage,
    error_line,
)
from .profile import ProfileLike, database_url, describe_url, engine_kwargs, is_read_only, sqlite_path

__all__ = (
    "POSTGRESQL_POOL_DEFAULTS",
    "WorkerPool",
    "after_fork_in_child",
    "application_name",
    "check_connection",
    "dispose_engines",
    "single_statement",
    "get_current_profile",
    "get_engine",
    "get_scoped_session",
    "get_session_factory",
    "idempotent_read",
    "recreate_after_fork",
    "reset_session",
    "set_current_profile",
    "sqlite_write_options",
    "storage_error",
    "transaction",
)

#: Milliseconds a SQLite connection waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 60_000
#: Page cache of each SQLite connection, in KiB (SQLite's default is 2 MiB). A large write (bulk store, closure
#: install or deletion) modifies more pages than 2 MiB hold, and SQLite then spills them to the WAL and reads them
#: back mid-transaction; pages are allocated only as used, so small work costs no more memory.
SQLITE_CACHE_KIB = 32_768
#: Words in a sqlite3 error that mean the file is damaged, not busy.
_CORRUPT_MARKERS = ("malformed", "not a database", "corrupt")
#: Tables of which one marks a SQLite file as this plugin's, whose journal mode may be changed (SQL tuple literal).
_OWN_TABLES = "('alembic_version', 'db_dbsetting', 'db_dbnode', 'db_dbuser')"
#: A pooled connection idle for longer than this is pinged at checkout (when pre-ping is on).
PRE_PING_IDLE_SECONDS = 5.0
#: Execution option naming the SQLite ``BEGIN`` mode of a connection (``DEFERRED`` unless set).
SQLITE_BEGIN_OPTION = "aiida_sqlite_begin"
#: Pool settings of a PostgreSQL profile unless its ``engine_kwargs`` say otherwise: one process holds at most
#: ``pool_size + max_overflow`` connections (the connection budget rule, docs/deployment.md), waits ``pool_timeout``
#: seconds for a free one, and replaces a connection older than ``pool_recycle`` seconds (idle server timeouts).
POSTGRESQL_POOL_DEFAULTS: dict[str, Any] = {"pool_size": 4, "max_overflow": 4, "pool_timeout": 30, "pool_recycle": 1800}
#: PostgreSQL error code of a write in a read-only transaction.
_READ_ONLY_SQLSTATE = "25006"
#: Seconds a read whose connection was lost waits for the server to accept a connection before running again.
RECONNECT_WAIT_SECONDS = 10.0
#: Seconds between two connection attempts while waiting for the server.
_RECONNECT_PAUSE_SECONDS = 0.25
#: Key in ``Session.info`` counting the :func:`transaction` blocks open on that session.
_TRANSACTION_DEPTH = "aiida_sqla_transaction_depth"
#: True while an :func:`idempotent_read` runs in this thread (or task): a read it calls does not retry on its own.
_in_read: ContextVar[bool] = ContextVar("aiida_sqla_in_idempotent_read", default=False)

LOGGER = logging.getLogger(__name__)
_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass
class _ProfileStorage:
    profile: ProfileLike
    url: URL
    engine: Engine
    registry: scoped_session[Session]


_lock = threading.RLock()
_storages: dict[str, _ProfileStorage] = {}
_current_profile: ProfileLike | None = None
_pid = os.getpid()
#: Pools and registries inherited from a parent process; kept referenced so they are never finalised here.
_inherited: list[object] = []


def json_dumps(value: Any) -> str:
    """Serialise a JSON column value so that it reads back equal (see :func:`values.json_text`)."""
    return values.json_text(value, "a JSON column value")


def _new_registry(engine: Engine) -> scoped_session[Session]:
    factory = sessionmaker(bind=engine, expire_on_commit=True)
    values.install(factory)
    return scoped_session(factory)


class WorkerPool(QueuePool):
    """A :class:`QueuePool` whose exhaustion raises :class:`PoolExhausted` naming the limits and the settings."""

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            return super()._do_get()
        except exc.TimeoutError as error:
            raise PoolExhausted(
                f"all {self.size()} + {self._max_overflow} connections of this process's pool (pool_size + "
                f"max_overflow) stayed in use for pool_timeout={self._timeout:g} s; close sessions and connections "
                "sooner, run fewer threads per process, or raise pool_size/max_overflow in the profile's "
                "storage_config engine_kwargs within the server's connection budget (docs/deployment.md)"
            ) from error


def application_name(prefix: str = "aiida-sqla") -> str:
    """What a PostgreSQL connection of this process calls itself: ``prefix@host:pid`` (at most 63 bytes)."""
    return f"{prefix}@{socket.gethostname()}:{os.getpid()}".encode()[-63:].decode(errors="ignore")


def _name_connections(engine: Engine, prefix: str) -> None:
    """Set ``application_name`` at every connect, so that a forked child's new connections carry its own pid."""

    @event.listens_for(engine, "do_connect")
    def _set_name(dialect: Any, record: ConnectionPoolEntry, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["application_name"] = application_name(prefix)


def _report_disconnects(engine: Engine, profile_name: str) -> None:
    """A connection lost in use (server restart, terminated backend) raises :class:`ConnectionLost`.

    SQLAlchemy still invalidates the pool (every connection opened before now), so the next checkout opens a new one.
    """

    @event.listens_for(engine, "handle_error")
    def _on_disconnect(context: ExceptionContext) -> None:
        # A failed connect (no connection yet) is the engine's general error hook's: it names the cause.
        if context.connection is not None and context.is_disconnect:
            error = ConnectionLost(
                f"Profile {profile_name!r}: the connection to the {describe_url(engine.url)} was lost "
                f"({error_line(context.original_exception)}); the open transaction was rolled back and none of it was "
                "written: run it again once the server answers."
            )
            error.engine = engine
            raise error from context.sqlalchemy_exception


def _open_read_only(engine: Engine, profile_name: str) -> None:
    """Every transaction read-only (PostgreSQL ``BEGIN READ ONLY``, SQLite ``mode=ro``); a write raises
    :class:`ReadOnlyStorage`."""
    if engine.dialect.name == "sqlite":
        path = sqlite_path(engine.url)

        @event.listens_for(engine, "do_connect")
        def _read_only_uri(dialect: Any, record: ConnectionPoolEntry, cargs: Any, cparams: dict[str, Any]) -> None:
            if path is not None:  # pysqlite connects with the file name as first argument
                cargs[0] = f"{path.resolve().as_uri()}?mode=ro"
                cparams["uri"] = True

    @event.listens_for(engine, "handle_error")
    def _on_write(context: ExceptionContext) -> None:
        error = context.original_exception
        if getattr(error, "pgcode", None) == _READ_ONLY_SQLSTATE or (
            isinstance(error, sqlite3.OperationalError) and "readonly database" in str(error)
        ):
            raise ReadOnlyStorage(
                f"Profile {profile_name!r} has \"read_only\": true in its storage config, so it cannot write "
                f"({error_line(error)}); use a profile without that flag to change the storage."
            ) from context.sqlalchemy_exception


def _ping(engine: Engine, dbapi_connection: Any) -> None:
    """Check that a pooled connection still answers; raise :class:`DisconnectionError` if it does not."""
    cursor = None
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
    except engine.dialect.loaded_dbapi.Error as error:
        raise exc.DisconnectionError(f"the pooled connection is dead ({error}); opening a new one") from error
    finally:
        if cursor is not None:
            with contextlib.suppress(Exception):
                cursor.close()


def _socket_readable(dbapi_connection: Any) -> bool:
    """Whether an idle connection's socket holds unread data (a system call, no round trip); True if unknown."""
    fileno = getattr(dbapi_connection, "fileno", None)
    if fileno is None:  # SQLite and drivers without a socket: nothing to look at, ping as before
        return True
    try:
        readable, _, _ = select.select([fileno()], [], [], 0)
    except (OSError, ValueError, TypeError):
        return True
    return bool(readable)


def _install_fork_guard(engine: Engine, pre_ping: bool) -> None:
    """Replace, rather than reuse, a pooled connection that was opened by another process.

    The pid check runs before anything touches the connection, which is why the pre-ping (when enabled) is done
    here instead of by ``pool_pre_ping``: that one would send a query over a socket the parent still uses.
    """

    @event.listens_for(engine, "connect")
    def _remember_pid(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["pid"] = os.getpid()
        record.info["fresh"] = True

    @event.listens_for(engine, "checkin")
    def _remember_idle(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check_pid(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
        if record.info.get("pid") != os.getpid():
            # Keep it referenced and detach it, so that the pool neither closes nor finalises it here.
            _inherited.append(dbapi_connection)
            record.dbapi_connection = proxy.dbapi_connection = None  # type: ignore[misc]
            raise exc.DisconnectionError("connection was opened by another process; opening a new one")
        fresh = record.info.pop("fresh", False)
        idle = time.monotonic() - record.info.get("idle_since", float("-inf"))
        # Pinging every checkout would double the round trips of every short call. A connection back in the pool
        # for less than PRE_PING_IDLE_SECONDS is pinged only when its socket has something to read: an idle
        # connection is sent nothing unless the server ended it (its FATAL message and end of file) or has a
        # notice; one that was idle longer is pinged anyway, since a dropped network sends nothing.
        if pre_ping and not fresh and (idle > PRE_PING_IDLE_SECONDS or _socket_readable(dbapi_connection)):
            _ping(engine, dbapi_connection)


def _switch_to_wal(cursor: Any) -> None:
    """Put an empty database file, or one of this plugin, in WAL mode unless it is already, without waiting.

    The switch needs an exclusive lock; two processes opening a new file at once would each hold a lock the other
    waits for until the busy timeout. Failing fast is safe: WAL is a property of the file, so when another process
    is switching it this connection finds it in WAL mode at its next transaction.
    """
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    tables, ours = cursor.execute(
        f"SELECT count(*), count(CASE WHEN name IN {_OWN_TABLES} THEN 1 END) FROM sqlite_master WHERE type = 'table'"
    ).fetchone()
    if tables and not ours:
        return  # a file of another application: opening it must not change it
    cursor.execute("PRAGMA busy_timeout=0")
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as error:
        if "locked" not in str(error) and "busy" not in str(error):
            raise


def _configure_sqlite(engine: Engine) -> None:
    """Foreign keys, WAL, a busy timeout, a larger page cache and transactions that begin (deferred) when
    SQLAlchemy says so."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # pysqlite must not emit BEGIN itself
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            _switch_to_wal(cursor)
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def create_profile_engine(profile: ProfileLike) -> Engine:
    """Build (without connecting) the engine for a profile's database."""
    url = database_url(profile)
    postgresql = url.get_backend_name() == "postgresql"
    kwargs: dict[str, Any] = {"json_serializer": json_dumps, "json_deserializer": json.loads}
    if postgresql:
        kwargs["connect_args"] = {"connect_timeout": 10}
        kwargs.update(POSTGRESQL_POOL_DEFAULTS)
    if postgresql or sqlite_path(url) is not None:
        kwargs["poolclass"] = WorkerPool
    read_only = is_read_only(profile)
    if read_only and postgresql:
        kwargs["execution_options"] = {"postgresql_readonly": True}
    user_kwargs = engine_kwargs(profile)
    if "connect_args" in user_kwargs:
        kwargs["connect_args"] = {**kwargs.get("connect_args", {}), **user_kwargs.pop("connect_args")}
    name_prefix = str(url.query.get("application_name") or kwargs.get("connect_args", {}).get("application_name") or "aiida-sqla")
    # Pre-ping is done by the fork guard, after its pid check; on by default for PostgreSQL.
    pre_ping = bool(user_kwargs.pop("pool_pre_ping", url.get_backend_name() == "postgresql"))
    kwargs.update(user_kwargs)
    try:
        engine = create_engine(url, **kwargs)
    except (TypeError, exc.ArgumentError) as error:
        raise ConfigurationError(f"Profile {profile.name!r}: invalid engine_kwargs ({error}).") from error
    _install_fork_guard(engine, pre_ping)
    if postgresql:
        _name_connections(engine, name_prefix)
        _report_disconnects(engine, profile.name)
    if url.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    if read_only:
        _open_read_only(engine, profile.name)  # before the hook below: the flag, not the file, is the reason

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        original = context.original_exception
        error = storage_error(engine.url, profile.name, original)
        if error is None and context.connection is None and not context.is_pre_ping and isinstance(
            original, engine.dialect.loaded_dbapi.OperationalError
        ):
            error = _unreachable(engine.url, profile.name, original)  # connecting failed, from whichever entry point
        if error is not None:
            raise error from context.sqlalchemy_exception

    return engine


def _sqlite_not_writable(path: Path | None) -> bool:
    """True when the file exists but it or its directory cannot be written (a read-only mount, permissions)."""
    return path is not None and path.exists() and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def storage_error(url: URL, profile_name: str, error: BaseException) -> AiidaSqlaError | None:
    """The library's exception for a driver error that says what is wrong with the storage, else None.

    SQLite: a file that is not a database (:class:`CorruptStorage`), a read-only file or directory
    (:class:`ReadOnlyStorage`), a full disk (:class:`StorageFull`). PostgreSQL: a rejected password
    (:class:`AuthenticationFailed`), a database that does not exist (:class:`DatabaseNotFound`).
    """
    where = describe_url(url)
    text = str(error)
    if url.get_backend_name() == "sqlite":
        # Plain DatabaseError (not one of its subclasses) is how sqlite3 reports a file it cannot read.
        if type(error) is sqlite3.DatabaseError or isinstance(error, sqlite3.OperationalError) and any(
            marker in text for marker in _CORRUPT_MARKERS
        ):
            return CorruptStorage(
                f"Profile {profile_name!r}: the {where} cannot be read ({error}); restore it from a backup or point "
                "the profile at another database"
            )
        if not isinstance(error, sqlite3.OperationalError):
            return None
        if "database or disk is full" in text:
            return StorageFull(
                f"Profile {profile_name!r}: the disk holding the {where} is full ({error}); the statement was rolled "
                "back and the database is as before it; free space on that disk (or move the file) and try again"
            )
        if "readonly database" in text or "unable to open" in text and _sqlite_not_writable(sqlite_path(url)):
            return ReadOnlyStorage(
                f"Profile {profile_name!r}: the {where} is read-only ({error}); SQLite must write both the file and "
                "its directory (WAL), even to read: make them writable, or copy the file somewhere writable"
            )
        return None
    reason = error_line(error)
    if "password authentication failed" in text:
        return AuthenticationFailed(
            f"Profile {profile_name!r}: the server rejected the password of the {where} ({reason}); fix the "
            "password in the profile (aiida-sqla profile show) or the server's pg_hba.conf"
        )
    if "does not exist" in text and f'database "{url.database}"' in text:
        return DatabaseNotFound(
            f"Profile {profile_name!r}: the {where} does not exist ({reason}); create it (createdb {url.database}) "
            "or fix the database name in the profile"
        )
    return None


def check_connection(profile: ProfileLike | None = None) -> None:
    """Connect once to the profile's database, raising :class:`UnreachableStorage` with the fix if it fails."""
    with get_engine(profile or get_current_profile()).connect():
        pass  # a failure to connect raises UnreachableStorage (or a subclass) through the engine's error hook


def _unreachable(url: URL, profile_name: str, error: BaseException) -> UnreachableStorage:
    hint = (
        "check that the directory exists and is writable"
        if url.get_backend_name() == "sqlite"
        else "check that the server is running, and the host, port, user, password and database name"
    )
    return UnreachableStorage(f"Profile {profile_name!r}: cannot reach the {describe_url(url)} ({error_line(error)}); {hint}.")


def sqlite_write_options(dialect_name: str) -> dict[str, str]:
    """Execution options making a new SQLite transaction begin ``IMMEDIATE`` (write lock at once); ``{}`` elsewhere.

    A deferred SQLite transaction that reads first cannot take the write lock later if another process committed
    in between; one that begins ``IMMEDIATE`` waits (up to the busy timeout) for the lock instead.
    """
    return {SQLITE_BEGIN_OPTION: "IMMEDIATE"} if dialect_name == "sqlite" else {}


@contextlib.contextmanager
def transaction(session: Session, write: bool = False) -> Iterator[Session]:
    """The one transaction rule: join the caller's transaction if there is one, else run in an own one and commit.

    The caller's transaction is an enclosing block of this function (``SqlaBackend.transaction()``) or one the
    caller began explicitly (``session.begin()``); the block then runs in a savepoint, so an error undoes only its
    own work, and the caller commits. Otherwise the block commits on success and rolls back on error; a transaction
    the session had begun implicitly (by loading an object) is committed with it. ``write=True`` marks a block
    that writes: on SQLite it then begins ``IMMEDIATE``, committing first an implicit transaction of the session
    (which has a snapshot that may be too old to write in).

    A :class:`ConnectionLost` out of a block that joined a transaction (the caller's, or one the session had begun
    implicitly, which may hold flushed writes) is marked ``callers_transaction``: :func:`idempotent_read` leaves it
    to the caller.
    """
    depth = session.info.get(_TRANSACTION_DEPTH, 0)
    session.info[_TRANSACTION_DEPTH] = depth + 1
    current = session.get_transaction()
    try:
        implicit = current is not None and current.origin is SessionTransactionOrigin.AUTOBEGIN
        if depth > 0 or (current is not None and not implicit):
            with session.begin_nested():
                yield session
            return
        options = sqlite_write_options(session.get_bind().dialect.name) if write else {}
        if implicit and options:
            session.commit()
            implicit = False
        if implicit:
            with session.begin_nested():
                yield session
            session.commit()
        else:
            with session.begin():
                if options:
                    session.connection(execution_options=options)
                yield session
    except ConnectionLost as error:
        if depth > 0 or current is not None:
            error.callers_transaction = True
        raise
    finally:
        session.info[_TRANSACTION_DEPTH] = depth


def _await_server(engine: Engine) -> None:
    """Return once a new connection to ``engine``'s database opens; after :data:`RECONNECT_WAIT_SECONDS` raise the
    :class:`UnreachableStorage` of the last attempt (at once for a wrong password, a missing database, a full pool).
    """
    deadline = time.monotonic() + RECONNECT_WAIT_SECONDS
    while True:
        try:
            with engine.connect():
                return
        except (AuthenticationFailed, DatabaseNotFound, PoolExhausted):
            raise
        except UnreachableStorage:  # refused, or the server is shutting down or starting up
            if time.monotonic() >= deadline:
                raise
            time.sleep(_RECONNECT_PAUSE_SECONDS)


def idempotent_read(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run the read ``function`` once more when its connection was lost in a transaction of its own.

    Only for functions that do not write: running them twice gives what running them once would. The second run
    waits (up to :data:`RECONNECT_WAIT_SECONDS`) for the server to accept a connection, as after a restart, and
    runs on a new connection (the loss invalidated the pool); its failure is raised. No retry when the lost
    transaction was the caller's (``ConnectionLost.callers_transaction``: the caller's earlier work is gone and
    only the caller can redo it), nor for a read called by another one (the outer read runs again as a whole).
    """

    @functools.wraps(function)
    def read(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if _in_read.get():
            return function(*args, **kwargs)
        token = _in_read.set(True)
        try:
            try:
                return function(*args, **kwargs)
            except ConnectionLost as error:
                if error.callers_transaction:
                    raise
                LOGGER.warning("%s: %s; running it again once", function.__qualname__, error_line(error))
                if error.engine is not None:
                    _await_server(error.engine)
            return function(*args, **kwargs)
        finally:
            _in_read.reset(token)

    return read


@contextlib.contextmanager
def single_statement(session: Session, write: bool = False) -> Iterator[Session | Connection]:
    """Where to execute ONE statement under the one transaction rule.

    In the caller's transaction it is that transaction (as :func:`transaction` gives it), so the statement sees
    and joins the caller's uncommitted work. Otherwise one statement is a transaction by itself: on PostgreSQL it
    runs on a connection in autocommit, one round trip instead of ``BEGIN``, the statement and ``COMMIT`` (a
    write on a read-only profile keeps its ``BEGIN READ ONLY`` transaction, which refuses it); on SQLite, where
    ``BEGIN`` and ``COMMIT`` cost no round trip, in a short transaction of its own.
    """
    bind = session.get_bind()
    own = session.info.get(_TRANSACTION_DEPTH, 0) == 0 and session.get_transaction() is None
    if (
        own
        and isinstance(bind, Engine)
        and bind.dialect.name == "postgresql"
        and not (write and bind.get_execution_options().get("postgresql_readonly"))
    ):
        with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            yield connection
    else:
        with transaction(session, write=write) as joined:
            yield joined


def set_current_profile(profile: ProfileLike) -> None:
    """Make ``profile`` the one that :func:`get_scoped_session` serves (its engine is built lazily)."""
    global _current_profile
    with _lock:
        _current_profile = profile


def get_current_profile() -> ProfileLike:
    """The current profile, or :class:`ConfigurationError` if none was loaded."""
    if _current_profile is None:
        raise ConfigurationError(
            "No profile is loaded: call aiida_sqla_plugin.reset_session(profile) or load one through the host."
        )
    return _current_profile


def _check_fork() -> None:
    """Second guard for forks that bypass ``os.register_at_fork``: treat this process as a new child."""
    if os.getpid() != _pid:
        after_fork_in_child()


def _storage(profile: ProfileLike) -> _ProfileStorage:
    _check_fork()
    url = database_url(profile)
    with _lock:
        storage = _storages.get(profile.name)
        if storage is None or storage.url != url:
            if storage is not None:
                _dispose(storage)
            engine = create_profile_engine(profile)
            storage = _ProfileStorage(profile, url, engine, _new_registry(engine))
            _storages[profile.name] = storage
        return storage


def get_engine(profile: ProfileLike | None = None) -> Engine:
    """The engine of ``profile`` (default: the current profile)."""
    return _storage(profile or get_current_profile()).engine


def get_session_factory(profile: ProfileLike | None = None) -> scoped_session[Session]:
    """The ``scoped_session`` registry of ``profile`` (default: the current profile)."""
    return _storage(profile or get_current_profile()).registry


def get_scoped_session(**kwargs: Any) -> Session:
    """The current thread's session for the current profile; ``kwargs`` configure a new one."""
    return get_session_factory()(**kwargs)


def _dispose(storage: _ProfileStorage) -> None:
    storage.registry.remove()
    storage.engine.dispose()


def reset_session(profile: ProfileLike | None = None) -> None:
    """Build a fresh engine and session registry for ``profile`` (default: current) and make it current.

    The old engine of that profile, if any, is disposed: its sessions are closed and its connections too.
    """
    _check_fork()
    profile = profile or get_current_profile()
    with _lock:
        storage = _storages.pop(profile.name, None)
        if storage is not None:
            _dispose(storage)
        set_current_profile(profile)
        _storage(profile)


def dispose_engines() -> None:
    """Close every session and engine of this process and forget the current profile."""
    global _current_profile
    _check_fork()
    with _lock:
        for storage in _storages.values():
            _dispose(storage)
        _storages.clear()
        _current_profile = None


def recreate_after_fork(engine: Engine | None = None) -> None:
    """In a forked child: drop ``engine``'s inherited pool (``dispose(close=False)``) and give it a new registry.

    With ``engine=None`` every engine of the process is treated. Nothing inherited is closed, rolled back or
    finalised: the parent may still be using it.
    """
    with _lock:
        managed = False
        for storage in _storages.values():
            if engine is not None and storage.engine is not engine:
                continue
            managed = True
            _inherited.append(storage.registry)
            _forget_pool(storage.engine)
            storage.registry = _new_registry(storage.engine)
        if engine is not None and not managed:
            _forget_pool(engine)


def _forget_pool(engine: Engine) -> None:
    """Give ``engine`` a new pool; the inherited one stays referenced and untouched."""
    _inherited.append(engine.pool)
    engine.dispose(close=False)


def after_fork_in_child() -> None:
    """Make every engine and session of this (child) process safe; run it right after ``fork()``."""
    global _pid, _lock
    _lock = threading.RLock()  # the parent's lock may have been held by another thread at fork time
    _pid = os.getpid()
    recreate_after_fork(None)
