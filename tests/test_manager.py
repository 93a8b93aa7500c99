"""The backend manager's AiiDA 1.x contract and the backend object's transactions."""
from __future__ import annotations

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

import aiida_sqla_plugin
from aiida_sqla_plugin import Profile, get_current_profile, get_engine
from aiida_sqla_plugin.backend import SqlaBackend, get_backend
from aiida_sqla_plugin.exceptions import IncompatibleDatabaseSchema, UnreachableStorage, ValidationError
from aiida_sqla_plugin.manager import SCHEMA_GENERATION_KEY, SqlaBackendManager, new_alembic_config
from aiida_sqla_plugin.settings import SqlaSettingsManager
from aiida_sqla_plugin.models import DbUser
from aiida_sqla_plugin.queries import SqlaQueryManager


def users() -> set[str]:
    with get_engine().connect() as connection:
        return set(connection.scalars(select(DbUser.email)))


def test_alembic_config_yields_a_live_connection(backend: SqlaBackend) -> None:
    manager = backend.backend_manager
    with manager.alembic_config() as config:
        assert isinstance(config, Config)
        connection = config.attributes["connection"]
        assert connection.in_transaction()
        assert connection.scalar(text("SELECT 1")) == 1
        connection.execute(DbUser.__table__.insert().values(email="kept@x", first_name="", last_name="", institution=""))
    assert users() == {"kept@x"}  # committed at the end of the block

    with pytest.raises(RuntimeError), manager.alembic_config() as config:
        config.attributes["connection"].execute(
            DbUser.__table__.insert().values(email="lost@x", first_name="", last_name="", institution="")
        )
        raise RuntimeError("abort")
    assert users() == {"kept@x"}  # rolled back

    with get_engine().connect() as own, manager.alembic_config(own) as config:
        assert config.attributes["connection"] is own


def test_schema_versions(backend: SqlaBackend) -> None:
    manager = backend.backend_manager
    head = ScriptDirectory.from_config(new_alembic_config()).get_current_head()
    assert manager.get_schema_version_code() == head == "main_0004"
    assert manager.get_schema_version_database() == head
    assert manager.get_schema_version_reset("1") == "main_0002"
    with pytest.raises(ValidationError, match="unknown schema generation '7'"):
        manager.get_schema_version_reset("7")


def test_schema_generation(backend: SqlaBackend) -> None:
    manager = backend.backend_manager
    assert manager.get_schema_generation_database() == "1"
    manager.get_settings_manager().delete(SCHEMA_GENERATION_KEY)
    assert manager.get_schema_generation_database() == "1"  # the default when the setting is absent
    manager.set_schema_generation_database("2")
    assert manager.get_schema_generation_database() == "2"
    with pytest.raises(IncompatibleDatabaseSchema, match="generation 2 does not match"):
        manager.validate_schema(backend.profile)


def test_schema_generation_of_an_empty_database(empty_backend: SqlaBackend) -> None:
    assert empty_backend.backend_manager.get_schema_generation_database() == "1"


def test_get_settings_manager(backend: SqlaBackend) -> None:
    settings = backend.backend_manager.get_settings_manager()
    assert isinstance(settings, SqlaSettingsManager)
    assert settings.get(SCHEMA_GENERATION_KEY).value == "1"


def test_load_backend_environment(backend: SqlaBackend) -> None:
    aiida_sqla_plugin.dispose_engines()
    manager = SqlaBackendManager()
    manager.load_backend_environment(backend.profile)
    assert get_current_profile() is backend.profile
    assert manager.profile is backend.profile
    assert aiida_sqla_plugin.get_scoped_session().scalar(select(func.count()).select_from(DbUser)) == 0


def test_load_backend_environment_validates(empty_backend: SqlaBackend) -> None:
    manager = SqlaBackendManager()
    with pytest.raises(IncompatibleDatabaseSchema, match="not initialised"):
        manager.load_backend_environment(empty_backend.profile)
    manager.load_backend_environment(empty_backend.profile, validate_schema=False)
    assert get_current_profile() is empty_backend.profile


def test_load_backend_environment_unreachable() -> None:
    profile = Profile("gone", "sqlalchemy", {"url": "postgresql+psycopg2://nobody@127.0.0.1:1/none"})
    with pytest.raises(UnreachableStorage, match="'gone'.*127.0.0.1:1"):
        SqlaBackendManager().load_backend_environment(profile)


def test_reset_and_private_load_backend_environment(backend: SqlaBackend) -> None:
    manager = backend.backend_manager
    engine = get_engine()
    manager.reset_backend_environment()
    assert get_engine() is not engine
    engine = get_engine()
    manager._load_backend_environment()
    assert get_engine() is not engine
    assert get_current_profile() is backend.profile


def test_private_migrate_database_version(empty_backend: SqlaBackend) -> None:
    manager = empty_backend.backend_manager
    assert manager._migrate_database_version() == ["main_0004"]
    assert manager._migrate_database_version() == []
    assert "db_dbpath" in inspect(get_engine()).get_table_names()


def test_backend_object(backend: SqlaBackend) -> None:
    assert repr(backend) == f"<SqlaBackend profile={backend.profile.name!r}>"
    assert backend.engine is get_engine(backend.profile)
    session = backend.get_session()
    assert session is backend.session_factory() is aiida_sqla_plugin.get_scoped_session()
    assert isinstance(backend.backend_manager, SqlaBackendManager)
    assert isinstance(backend.settings, SqlaSettingsManager)
    assert isinstance(backend.query_manager, SqlaQueryManager)
    aiida_sqla_plugin.reset_session(backend.profile)
    assert backend.get_session() is not session  # follows reset_session
    backend.close()
    assert get_backend().profile is backend.profile
    assert get_backend(backend) is backend


def test_transaction_commits_and_rolls_back(backend: SqlaBackend) -> None:
    with backend.transaction() as session:
        session.add(DbUser(email="a@x"))
    assert users() == {"a@x"}
    with pytest.raises(ZeroDivisionError), backend.transaction() as session:
        session.add(DbUser(email="b@x"))
        session.flush()
        1 / 0  # noqa: B018
    assert users() == {"a@x"}
    assert not backend.get_session().in_transaction()


def test_nested_transactions_make_savepoints(backend: SqlaBackend) -> None:
    with backend.transaction() as outer:
        outer.add(DbUser(email="outer@x"))
        with backend.transaction() as inner:
            assert inner is outer
            assert outer.in_nested_transaction()
            inner.add(DbUser(email="inner@x"))
        with pytest.raises(ValueError), backend.transaction() as inner:
            inner.add(DbUser(email="failed@x"))
            inner.flush()
            raise ValueError("only the savepoint rolls back")
        assert not outer.in_nested_transaction()
        outer.add(DbUser(email="after@x"))
    assert users() == {"outer@x", "inner@x", "after@x"}


def test_transaction_error_in_the_outer_block_rolls_back_the_savepoints_too(backend: SqlaBackend) -> None:
    with pytest.raises(KeyError), backend.transaction():
        with backend.transaction() as inner:
            inner.add(DbUser(email="inner@x"))
        raise KeyError("outer fails")
    assert users() == set()


def test_transaction_commits_after_the_session_began_on_its_own(backend: SqlaBackend, user: DbUser) -> None:
    """Loading an object autobegins the session's transaction; the block must still commit, not just a savepoint."""
    assert user.email  # refreshes the expired object: the session is now in a transaction it began itself
    assert backend.get_session().in_transaction()
    with backend.transaction() as session:
        session.add(DbUser(email="after-autobegin@x"))
    assert not backend.get_session().in_transaction()
    assert users() == {"tester@example.org", "after-autobegin@x"}
    assert user.email  # autobegins again
    with pytest.raises(ValueError), backend.transaction() as session:
        session.add(DbUser(email="lost@x"))
        session.flush()
        raise ValueError("only the block's savepoint rolls back")
    assert "lost@x" not in users()
