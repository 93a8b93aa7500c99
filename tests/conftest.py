"""Shared fixtures: every database test runs on SQLite and on PostgreSQL, each in a database of its own.

PostgreSQL is reached through ``AIIDA_SQLA_TEST_PG_URL`` (default: user ``postgres`` on 127.0.0.1:5432); a new
database is created for each test and dropped after it. Without a server the PostgreSQL tests skip with the
reason, except on CI (``CI=true``), where they fail.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.models import DbUser
from helpers import PG_ADMIN_URL, create_postgres_database, drop_postgres_database
from pg_cluster import PgCluster, private_cluster

DIALECTS = ("sqlite", "postgresql")
_pg_unavailable_reason: str | None = None
_pg_checked = False


def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can (checked once per session)."""
    global _pg_checked, _pg_unavailable_reason
    if not _pg_checked:
        _pg_checked = True
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 5})
        try:
            with engine.connect():
                pass
        except OperationalError as error:
            _pg_unavailable_reason = f"PostgreSQL at {PG_ADMIN_URL.render_as_string()} is unreachable: {error.orig}"
        finally:
            engine.dispose()
    return _pg_unavailable_reason


def require_postgres() -> None:
    """Skip (fail on CI) when no PostgreSQL server answers."""
    reason = postgres_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
    pytest.skip(reason)


@pytest.fixture
def new_postgres_url() -> Iterator[URL]:
    """A new, empty PostgreSQL database for this test, dropped afterwards."""
    require_postgres()
    url = create_postgres_database()
    try:
        yield url
    finally:
        aiida_sqla_plugin.dispose_engines()
        drop_postgres_database(url)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster (password auth, small ``max_connections``) shared by the session's tests."""
    with private_cluster() as cluster:
        yield cluster


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    """The dialect of this run of the test: ``sqlite`` or ``postgresql``."""
    if request.param == "postgresql":
        require_postgres()
    return request.param


@pytest.fixture
def database_url(dialect: str, request: pytest.FixtureRequest, tmp_path) -> URL:
    """URL of a new, empty database of the test's dialect."""
    if dialect == "sqlite":
        return make_url(f"sqlite:///{tmp_path / 'storage.sqlite'}")
    return request.getfixturevalue("new_postgres_url")


@pytest.fixture
def profile(database_url: URL, dialect: str, tmp_path) -> aiida_sqla_plugin.Profile:
    """A profile of the ``sqlalchemy`` backend pointing at the test's empty database.

    On PostgreSQL its object store is in the test's own folder: the default (named after the profile, under the
    data directory) would be shared by every test, and ``maintain(full=True)`` empties a store of unreferenced
    objects. On SQLite the default, beside the database file, is the test's own already.
    """
    storage_config = {"url": database_url.render_as_string(hide_password=False)}
    if dialect == "postgresql":
        storage_config["repository"] = str(tmp_path / "objects")
    return aiida_sqla_plugin.Profile(name=f"test-{dialect}", storage_backend="sqlalchemy", storage_config=storage_config)


@pytest.fixture(autouse=True)
def _no_engines_left() -> Iterator[None]:
    yield
    aiida_sqla_plugin.dispose_engines()


@pytest.fixture
def empty_backend(profile: aiida_sqla_plugin.Profile) -> SqlaBackend:
    """A backend on an empty (never migrated) database, made the current profile."""
    aiida_sqla_plugin.reset_session(profile)
    return SqlaBackend(profile)


@pytest.fixture
def backend(empty_backend: SqlaBackend) -> SqlaBackend:
    """A backend on a migrated database, made the current profile."""
    SqlaBackendManager(empty_backend.profile).migrate()
    return empty_backend


@pytest.fixture
def user(backend: SqlaBackend) -> DbUser:
    """A stored user."""
    with backend.transaction() as session:
        stored = DbUser(email="tester@example.org", first_name="Ada")
        session.add(stored)
    return stored
