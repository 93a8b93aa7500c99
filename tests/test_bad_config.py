"""Bad configurations: each gives its own library exception and CLI exit code, and none changes the database.

Every case checks three things: the exception the library raises (``validate_schema`` and ``migrate``), the exit
code of ``storage version`` (the report) and ``storage migrate --force`` (the exception), and that the database is
as before (SQLite: the file's bytes; PostgreSQL: every table and its row count).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

import aiida_sqla_plugin
from aiida_sqla_plugin.cli import EXIT_CODES
from aiida_sqla_plugin.cli._root import (
    EXIT_AHEAD,
    EXIT_AUTHENTICATION,
    EXIT_CONFIGURATION,
    EXIT_CORRUPT,
    EXIT_FOREIGN,
    EXIT_NO_DATABASE,
    EXIT_READ_ONLY,
    EXIT_UNREACHABLE,
)
from aiida_sqla_plugin.config import CONFIG_DIR_ENV, DATA_DIR_ENV, ConfigFile
from aiida_sqla_plugin.exceptions import (
    AiidaSqlaError,
    AuthenticationFailed,
    CorruptStorage,
    DatabaseNotFound,
    ForeignDatabase,
    ReadOnlyStorage,
    SchemaAhead,
    UnreachableStorage,
    UnsupportedEngine,
)
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.profile import Profile
from conftest import require_postgres
from helpers import PG_ADMIN_URL, admin_execute, database_fingerprint, truncated_sqlite_database
from test_cli import invoke, one_error_line

Snapshot = Callable[[], object]


@pytest.fixture(autouse=True)
def cli_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))


def sqlite_bytes(path: Path) -> Snapshot:
    return lambda: hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def pg_tables(url: URL) -> Snapshot:
    return lambda: database_fingerprint(url)


def check_refused(
    url: str, error_type: type[AiidaSqlaError], exit_code: int, snapshot: Snapshot, name: str = "bad"
) -> None:
    """Library and CLI both refuse the profile with ``error_type`` / ``exit_code``; the snapshot never changes."""
    profile = Profile(name, "sqlalchemy", {"url": url})
    before = snapshot()
    messages = []
    for call in (SqlaBackendManager(profile).validate_schema, SqlaBackendManager(profile).migrate):
        with pytest.raises(error_type) as raised:
            call()
        assert type(raised.value) is error_type, raised.value
        messages.append(" ".join(str(raised.value).split()))
        aiida_sqla_plugin.dispose_engines()
    ConfigFile().update(lambda config: config.profiles.__setitem__(name, profile))
    invoke("-p", name, "storage", "version", code=exit_code)
    assert one_error_line(invoke("-p", name, "storage", "migrate", "--force", code=exit_code).stderr) == f"Error: {messages[0]}"
    assert snapshot() == before


def test_exit_codes_are_distinct() -> None:
    codes = [EXIT_AHEAD, EXIT_AUTHENTICATION, EXIT_CONFIGURATION, EXIT_CORRUPT, EXIT_FOREIGN, EXIT_NO_DATABASE,
             EXIT_READ_ONLY, EXIT_UNREACHABLE]
    assert len(set(codes)) == len(codes) and set(codes) <= set(EXIT_CODES)


def test_unsupported_engine(tmp_path: Path) -> None:
    profile = Profile("mysql", "sqlalchemy", {"url": "mysql://user:pw@127.0.0.1/db"})
    with pytest.raises(UnsupportedEngine, match="'mysql' is not supported; use one of sqlite, postgresql"):
        SqlaBackendManager(profile).validate_schema()
    message = one_error_line(invoke("profile", "create", "m", "--url", "mysql://h/db", code=EXIT_CONFIGURATION).stderr)
    assert "not supported" in message
    assert not ConfigFile().path.exists() or "m" not in ConfigFile().read().profiles


def test_closed_port_is_unreachable() -> None:
    require_postgres()
    url = PG_ADMIN_URL.set(port=1, database="nothing").render_as_string(hide_password=False)
    check_refused(url, UnreachableStorage, EXIT_UNREACHABLE, lambda: None)


def test_missing_database_is_not_created() -> None:
    require_postgres()
    name = f"aiida_sqla_missing_{uuid.uuid4().hex[:8]}"

    def exists() -> bool:
        engine = create_engine(PG_ADMIN_URL)
        try:
            with engine.connect() as connection:
                return bool(connection.execute(text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}).scalar())
        finally:
            engine.dispose()

    check_refused(PG_ADMIN_URL.set(database=name).render_as_string(hide_password=False), DatabaseNotFound, EXIT_NO_DATABASE, exists)
    assert not exists()


@pytest.fixture
def private_password_server() -> Iterator[URL]:
    """A PostgreSQL cluster of this test's own that checks passwords (scram), run as user postgres; removed after."""
    folder = Path(tempfile.mkdtemp(prefix="aiida-sqla-pg-"))  # not under pytest's tmp_path: user postgres cannot enter it
    data = folder / "data"
    run = ["runuser", "-u", "postgres", "--"]
    try:
        (folder / "pwfile").write_text("right-secret\n")
        for path in (folder, folder / "pwfile"):
            shutil.chown(path, "postgres")
        subprocess.run([*run, "initdb", "-D", str(data), "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={folder / 'pwfile'}"],
                       check=True, capture_output=True, timeout=120)
    except (OSError, LookupError, subprocess.SubprocessError) as error:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"cannot make a private PostgreSQL cluster here ({error}); the shared server trusts every password")
    port = 20000 + uuid.uuid4().int % 20000
    options = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder}"
    try:
        subprocess.run([*run, "pg_ctl", "-D", str(data), "-o", options, "-w", "-l", str(folder / "log"), "start"],
                       check=True, capture_output=True, timeout=120)
        yield URL.create("postgresql+psycopg2", "postgres", "right-secret", "127.0.0.1", port, "postgres")
    finally:
        aiida_sqla_plugin.dispose_engines()
        subprocess.run([*run, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_wrong_password(private_password_server: URL) -> None:
    right = private_password_server
    before = pg_tables(right)
    check_refused(right.set(password="wrong-secret").render_as_string(hide_password=False), AuthenticationFailed,
                  EXIT_AUTHENTICATION, before)


def test_database_of_another_application(dialect: str, database_url: URL) -> None:
    url = database_url.render_as_string(hide_password=False)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount INTEGER)"))
        connection.execute(text("INSERT INTO invoices VALUES (1, 100)"))
    engine.dispose()
    snapshot = sqlite_bytes(Path(database_url.database or "")) if dialect == "sqlite" else pg_tables(database_url)
    check_refused(url, ForeignDatabase, EXIT_FOREIGN, snapshot)
    assert database_fingerprint(url) == {"invoices": 1}


def test_database_ahead_of_the_code(dialect: str, profile: Profile, database_url: URL) -> None:
    SqlaBackendManager(profile).migrate()
    aiida_sqla_plugin.dispose_engines()
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'main_9999'"))
    engine.dispose()
    url = database_url.render_as_string(hide_password=False)
    snapshot = sqlite_bytes(Path(database_url.database or "")) if dialect == "sqlite" else pg_tables(database_url)
    check_refused(url, SchemaAhead, EXIT_AHEAD, snapshot)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_sqlite_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"not a database\n" * 500 if kind == "garbage" else truncated_sqlite_database(tmp_path))
    check_refused(f"sqlite:///{path}", CorruptStorage, EXIT_CORRUPT, sqlite_bytes(path))


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A folder with a migrated SQLite database, and a read-only bind mount of it (root ignores permissions)."""
    source, view = tmp_path / "source", tmp_path / "view"
    source.mkdir()
    view.mkdir()
    profile = Profile("writer", "sqlalchemy", {"url": f"sqlite:///{source / 'db.sqlite'}"})
    SqlaBackendManager(profile).migrate()
    aiida_sqla_plugin.dispose_engines()
    mounted = subprocess.run(f"mount --bind {source} {view} && mount -o remount,ro,bind {view}", shell=True,
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        subprocess.run(["umount", str(view)], capture_output=True)
        pytest.skip(f"cannot make a read-only bind mount here ({mounted.stderr.strip()})")
    try:
        yield source, view
    finally:
        aiida_sqla_plugin.dispose_engines()
        subprocess.run(["umount", str(view)], check=True)


def test_read_only_sqlite_file(read_only_folder: tuple[Path, Path]) -> None:
    source, view = read_only_folder
    check_refused(f"sqlite:///{view / 'db.sqlite'}", ReadOnlyStorage, EXIT_READ_ONLY, sqlite_bytes(source / "db.sqlite"))
    assert sorted(path.name for path in source.iterdir()) == ["db.sqlite"]  # no -wal/-shm left either
