"""Error paths: plugins that fail to load, a plugin bug reaching the CLI's unexpected-error branch (one line, or the
traceback with ``-v``/``--debug``), and ``drop_database`` failures. Fake backends are real distributions (a
``*.dist-info`` folder with ``entry_points.txt``) on ``sys.path`` / ``PYTHONPATH``, found as a host finds them.
"""
from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiida_sqla_plugin import Profile, hookspecs
from aiida_sqla_plugin.cli import cli
from aiida_sqla_plugin.cli._root import EXIT_CONFIGURATION, EXIT_ERROR, EXIT_UNREACHABLE
from aiida_sqla_plugin.config import CONFIG_DIR_ENV, DATA_DIR_ENV, ConfigFile
from aiida_sqla_plugin.exceptions import ConfigurationError, ReadOnlyStorage, UnreachableStorage
from aiida_sqla_plugin.maintenance import drop_database
from aiida_sqla_plugin.plugins import plugin_manager
from conftest import require_postgres
from helpers import PG_ADMIN_URL, admin_execute, create_postgres_database, database_fingerprint, drop_postgres_database
from test_bad_config import read_only_folder  # noqa: F401 - fixture
from test_cli import invoke, one_error_line, run_script

PLUGINS = {
    "fake_unimportable": 'raise ImportError("needs libfoo, which is not installed")\n',
    "fake_misfit": """
        import pluggy
        hookimpl = pluggy.HookimplMarker({project!r})

        @hookimpl
        def aiida_get_backend(profile, flavour):
            return None
    """,
    "fake_buggy": """
        import pluggy
        hookimpl = pluggy.HookimplMarker({project!r})

        @hookimpl
        def aiida_get_backend_manager(profile):
            return 1 / 0
    """,
}


@pytest.fixture
def fake_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three installed storage backends that fail: on import, against the hook specs, and inside a hook."""
    site = tmp_path / "site"
    info = site / "fake_backends-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-backends\nVersion: 0.1\n")
    lines = [f"[{hookspecs.ENTRY_POINT_GROUP}]"]
    for module, source in PLUGINS.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source.format(project=hookspecs.PROJECT_NAME)))
        lines.append(f"{module.removeprefix('fake_')} = {module}")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    for name in ("unimportable", "misfit", "buggy"):
        ConfigFile().add_profile(Profile(name, name, {"url": f"sqlite:///{tmp_path / name}.sqlite"}))
    return site


def test_plugins_that_fail_to_load(fake_backends: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot load the storage backend 'unimportable' .*needs libfoo"):
        plugin_manager("unimportable")
    with pytest.raises(ConfigurationError, match=r"'misfit' does not fit the hook specs"):
        plugin_manager("misfit")
    assert "needs libfoo" in one_error_line(invoke("-p", "unimportable", "storage", "version", code=EXIT_CONFIGURATION).stderr)
    assert "hook specs" in one_error_line(invoke("-p", "misfit", "storage", "version", code=EXIT_CONFIGURATION).stderr)


@pytest.mark.slow
def test_a_plugin_bug_reaches_the_unexpected_error_branch(fake_backends: Path) -> None:
    plain = one_error_line(run_script("-p", "buggy", "storage", "version", code=EXIT_ERROR).stderr)
    assert plain == (
        "Error: unexpected ZeroDivisionError: division by zero (run again with --debug for the traceback and report it)"
    )
    for flag in ("-v", "--debug"):
        stderr = run_script("-p", "buggy", flag, "storage", "version", code=EXIT_ERROR).stderr
        assert "Traceback (most recent call last)" in stderr and "fake_buggy.py" in stderr
        assert stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    result = CliRunner().invoke(cli, ["-p", "buggy", "storage", "version"])  # in-process: the same one line
    assert result.exit_code == EXIT_ERROR and "unexpected ZeroDivisionError" in result.stderr


def test_library_errors_print_a_traceback_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    invoke("profile", "create", "nodir", "--url", f"sqlite:///{tmp_path / 'gone' / 'x.sqlite'}")
    (tmp_path / "gone").rmdir()
    assert "does not exist" in one_error_line(run_script("-p", "nodir", "storage", "migrate", "--force", code=EXIT_UNREACHABLE).stderr)
    verbose = run_script("-p", "nodir", "-v", "storage", "migrate", "--force", code=EXIT_UNREACHABLE).stderr
    assert "Traceback (most recent call last)" in verbose and verbose.rstrip().splitlines()[-1].startswith("Error: ")


def test_drop_database_refuses_what_it_cannot_drop() -> None:
    with pytest.raises(ConfigurationError, match="in-memory database cannot be dropped"):
        drop_database(Profile("memory", "sqlalchemy", {"url": "sqlite://"}))
    with pytest.raises(ConfigurationError, match="names no database"):
        drop_database(Profile("nodb", "sqlalchemy", {"url": "postgresql+psycopg2://postgres@127.0.0.1:5432"}))


def test_drop_database_on_a_closed_port() -> None:
    require_postgres()
    url = PG_ADMIN_URL.set(port=1, database="nothing").render_as_string(hide_password=False)
    with pytest.raises(UnreachableStorage, match="cannot drop the PostgreSQL database 'nothing'.*dropdb"):
        drop_database(Profile("gone", "sqlalchemy", {"url": url}))


def test_drop_database_without_the_right_to_drop() -> None:
    require_postgres()
    role = f"aiida_sqla_nobody_{uuid.uuid4().hex[:8]}"
    url = create_postgres_database()
    admin_execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        profile = Profile("guest", "sqlalchemy", {"url": url.set(username=role).render_as_string(hide_password=False)})
        with pytest.raises(ConfigurationError, match=r"must be owner of database.*drop it by hand"):
            drop_database(profile)
        assert "db_dbnode" not in database_fingerprint(url)  # the database still answers: it was not dropped
    finally:
        drop_postgres_database(url)
        admin_execute(f'DROP ROLE IF EXISTS "{role}"')


def test_drop_database_on_a_read_only_folder(read_only_folder: tuple[Path, Path]) -> None:  # noqa: F811
    source, view = read_only_folder
    with pytest.raises(ReadOnlyStorage, match="cannot delete"):
        drop_database(Profile("ro", "sqlalchemy", {"url": f"sqlite:///{view / 'db.sqlite'}"}))
    assert (source / "db.sqlite").exists()
