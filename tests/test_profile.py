"""Profiles: building the database URL and the errors for bad or unreachable storage."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

import aiida_sqla_plugin
from aiida_sqla_plugin import Profile
from aiida_sqla_plugin.exceptions import AiidaSqlaError, ConfigurationError, UnreachableStorage
from aiida_sqla_plugin.profile import database_url, describe_url, engine_kwargs
from aiida_sqla_plugin.session import check_connection, get_engine


def aiida_keys(**overrides: object) -> dict[str, object]:
    """AiiDA-style storage configuration for a PostgreSQL database."""
    config: dict[str, object] = {
        "database_engine": "postgresql_psycopg2",
        "database_hostname": "db.example.org",
        "database_port": 5433,
        "database_username": "aiida",
        "database_password": "secret",
        "database_name": "aiida_db",
    }
    config.update(overrides)
    return config


def test_url_from_url_key_is_kept() -> None:
    url = database_url(Profile("p", "sqlalchemy", {"url": "sqlite:////tmp/some/file.sqlite"}))
    assert url.get_backend_name() == "sqlite"
    assert url.database == "/tmp/some/file.sqlite"


def test_url_postgresql_gets_the_psycopg2_driver() -> None:
    url = database_url(Profile("p", "sqlalchemy", {"url": "postgresql://u@h:5432/d"}))
    assert url.drivername == "postgresql+psycopg2"
    assert (url.username, url.host, url.port, url.database) == ("u", "h", 5432, "d")


def test_url_from_aiida_keys() -> None:
    url = database_url(Profile("p", "sqlalchemy", aiida_keys()))
    assert url.drivername == "postgresql+psycopg2"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "aiida",
        "secret",
        "db.example.org",
        5433,
        "aiida_db",
    )


@pytest.mark.parametrize("password", ["p@ss:word", "a/b@c:d%e", "with space#?&="])
def test_password_is_quoted(password: str) -> None:
    url = database_url(Profile("p", "sqlalchemy", aiida_keys(database_password=password)))
    rendered = url.render_as_string(hide_password=False)
    assert password not in rendered  # quoted in the string form
    reparsed = make_url(rendered)
    assert reparsed.password == password
    assert (reparsed.host, reparsed.port, reparsed.database) == ("db.example.org", 5433, "aiida_db")


def test_port_given_as_string_and_missing() -> None:
    assert database_url(Profile("p", "sqlalchemy", aiida_keys(database_port="6543"))).port == 6543
    assert database_url(Profile("p", "sqlalchemy", aiida_keys(database_port=None))).port is None


def test_none_hostname_means_the_local_socket() -> None:
    url = database_url(Profile("p", "sqlalchemy", aiida_keys(database_hostname=None, database_port=None)))
    assert url.host is None
    assert "local socket" in describe_url(url)


def test_sqlite_from_aiida_keys(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    url = database_url(Profile("p", "sqlalchemy", {"database_engine": "sqlite", "database_name": str(path)}))
    assert url.drivername == "sqlite"
    assert url.database == str(path)


def test_engine_kwargs() -> None:
    assert engine_kwargs(Profile("p", "sqlalchemy", {"url": "sqlite://", "engine_kwargs": {"echo": True}})) == {"echo": True}
    assert engine_kwargs(Profile("p", "sqlalchemy", {"url": "sqlite://"})) == {}
    with pytest.raises(ConfigurationError, match="'p'.*engine_kwargs must be a mapping"):
        engine_kwargs(Profile("p", "sqlalchemy", {"url": "sqlite://", "engine_kwargs": [1]}))


def test_invalid_engine_kwargs_is_a_configuration_error(tmp_path: Path) -> None:
    profile = Profile("kw", "sqlalchemy", {"url": f"sqlite:///{tmp_path / 'x.sqlite'}", "engine_kwargs": {"bogus": 1}})
    with pytest.raises(ConfigurationError, match="'kw'.*engine_kwargs"):
        get_engine(profile)


@pytest.mark.parametrize(
    ("config", "pattern"),
    [
        ({}, r"'broken'.*needs either 'url' or 'database_engine'"),
        ({"database_engine": "mysql", "database_name": "x"}, r"'broken'.*unknown database_engine 'mysql'.*postgresql_psycopg2"),
        (aiida_keys(database_name=None), r"'broken'.*missing 'database_name'"),
        (aiida_keys(database_port="five"), r"'broken'.*database_port must be an integer"),
        ({"url": "not a url"}, r"'broken'.*cannot parse the storage URL.*postgresql\+psycopg2://"),
        ({"url": "mysql://u@h/d"}, r"'broken'.*'mysql' is not supported.*sqlite, postgresql"),
    ],
)
def test_bad_configuration_names_profile_and_fix(config: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigurationError, match=pattern) as info:
        database_url(Profile("broken", "sqlalchemy", config))
    assert isinstance(info.value, AiidaSqlaError)


def test_storage_config_must_be_a_mapping() -> None:
    with pytest.raises(ConfigurationError, match="'broken'.*mapping"):
        database_url(Profile("broken", "sqlalchemy", ["url"]))  # type: ignore[arg-type]


def test_no_current_profile_is_a_configuration_error() -> None:
    aiida_sqla_plugin.dispose_engines()
    with pytest.raises(ConfigurationError, match="No profile is loaded"):
        aiida_sqla_plugin.get_scoped_session()


def test_unreachable_postgresql_names_host_and_port() -> None:
    profile = Profile("far", "sqlalchemy", aiida_keys(database_hostname="127.0.0.1", database_port=1))
    with pytest.raises(UnreachableStorage) as info:
        check_connection(profile)
    message = str(info.value)
    assert "'far'" in message and "127.0.0.1:1" in message and "aiida_db" in message
    assert "check that the server is running" in message
    assert "secret" not in message


def test_missing_sqlite_directory_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "db.sqlite"
    profile = Profile("nodir", "sqlalchemy", {"url": f"sqlite:///{path}"})
    with pytest.raises(UnreachableStorage) as info:
        check_connection(profile)
    message = str(info.value)
    assert "'nodir'" in message and str(path) in message and "directory exists" in message
    assert not path.parent.exists()


def test_connect_through_the_local_socket(new_postgres_url: URL) -> None:
    """``database_hostname: None`` really connects through the server's Unix socket."""
    profile = Profile(
        "socket",
        "sqlalchemy",
        aiida_keys(
            database_hostname=None,
            database_port=new_postgres_url.port,
            database_username=new_postgres_url.username,
            database_password=None,
            database_name=new_postgres_url.database,
        ),
    )
    check_connection(profile)
    with get_engine(profile).connect() as connection:
        assert connection.scalar(text("SELECT current_database()")) == new_postgres_url.database
        assert connection.scalar(text("SELECT inet_client_addr()")) is None  # no TCP peer: a Unix socket


def test_profile_dataclass(profile: Profile, dialect: str) -> None:
    assert aiida_sqla_plugin.Profile is Profile
    assert profile.storage_backend == "sqlalchemy"
    check_connection(profile)
    assert get_engine(profile).dialect.name == dialect
