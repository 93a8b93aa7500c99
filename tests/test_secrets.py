"""The database password never shows: not in ``repr()`` of profiles and engines, error messages, tracebacks,
``profile show`` / ``storage info`` output or logs; the config file is readable by its owner only.

PostgreSQL (the shared server trusts every password, so a URL with one still connects).
"""
from __future__ import annotations

import logging
import stat
import traceback
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

import aiida_sqla_plugin
from aiida_sqla_plugin import Profile
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.config import CONFIG_DIR_ENV, DATA_DIR_ENV, ConfigFile
from aiida_sqla_plugin.exceptions import AiidaSqlaError, UnreachableStorage
from aiida_sqla_plugin.manager import SqlaBackendManager
from test_cli import invoke

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def cli_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))


@pytest.fixture
def secret_url(new_postgres_url: URL) -> str:
    return new_postgres_url.set(password=SECRET).render_as_string(hide_password=False)


@pytest.fixture
def closed_port_url(new_postgres_url: URL) -> str:
    return new_postgres_url.set(password=SECRET, port=1).render_as_string(hide_password=False)


def test_repr_of_profiles_and_engines(secret_url: str) -> None:
    url_profile = Profile("pw", "sqlalchemy", {"url": secret_url})
    keys_profile = Profile("keys", "sqlalchemy", {"database_engine": "postgresql_psycopg2", "database_name": "x",
                                                  "database_username": "u", "database_password": SECRET})
    SqlaBackendManager(url_profile).migrate()
    shown = [repr(url_profile), repr(keys_profile), str(url_profile), repr(aiida_sqla_plugin.get_engine(url_profile)),
             repr(SqlaBackend(url_profile)), repr(ConfigFile().read())]
    for text in shown:
        assert SECRET not in text, text
    assert "***" in shown[0] and "***" in shown[1]


def test_connection_errors_and_their_tracebacks(closed_port_url: str, caplog: pytest.LogCaptureFixture) -> None:
    profile = Profile("pw", "sqlalchemy", {"url": closed_port_url})
    caplog.set_level(logging.DEBUG)
    calls = (SqlaBackendManager(profile).validate_schema, SqlaBackendManager(profile).migrate,
             lambda: SqlaBackend(profile).settings.get("x"))
    for call in calls:
        with pytest.raises(AiidaSqlaError) as raised:
            call()
        assert isinstance(raised.value, UnreachableStorage)
        assert SECRET not in "".join(traceback.format_exception(raised.value))  # the whole chain, driver errors too
    assert SECRET not in SqlaBackendManager(profile).schema_report().message
    assert SECRET not in caplog.text


def test_cli_output_tracebacks_and_logs(secret_url: str, closed_port_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    invoke("profile", "create", "pw", "--url", secret_url)
    invoke("profile", "create", "gone", "--url", closed_port_url)
    config = ConfigFile().path
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert SECRET in config.read_text()  # stored (the host needs it), only shown nowhere
    outputs = [
        invoke("-p", "pw", "storage", "migrate", "--force"),
        invoke("profile", "show", "pw"),
        invoke("profile", "show", "pw", "--json"),
        invoke("profile", "list"),
        invoke("-p", "pw", "storage", "info"),
        invoke("-p", "pw", "storage", "info", "--json"),
        invoke("-p", "pw", "storage", "status"),
        invoke("-p", "pw", "storage", "version", "--json"),
        invoke("-p", "gone", "--debug", "storage", "info", code=3),
        invoke("-p", "gone", "-v", "storage", "migrate", "--force", code=3),
        invoke("-p", "gone", "storage", "status", code=3),
    ]
    assert "Traceback" in outputs[-3].stderr and "Traceback" in outputs[-2].stderr  # the traceback paths did run
    for result in outputs:
        assert SECRET not in result.stdout + result.stderr, result.stdout + result.stderr
    assert SECRET not in caplog.text
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
