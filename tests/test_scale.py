"""Scale-out (#13): remote profiles, pool budget, application names, ``storage connections``, read-only profiles
and migrations through PgBouncer (transaction pooling), on the private cluster of ``pg_cluster.py``."""
from __future__ import annotations

import json
import multiprocessing
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL

import aiida_sqla_plugin
from aiida_sqla_plugin import get_engine
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.cli import cli
from aiida_sqla_plugin.cli._root import EXIT_ERROR, EXIT_POOL_EXHAUSTED, exit_code_for
from aiida_sqla_plugin.config import ConfigFile, build_profile
from aiida_sqla_plugin.exceptions import DatabaseMigrationError, PoolExhausted, ReadOnlyStorage, ValidationError
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.migration import pending_revisions
from aiida_sqla_plugin.models import DbLink, DbNode, DbSetting, DbUser
from aiida_sqla_plugin.profile import Profile, database_url, masked_storage_config
from aiida_sqla_plugin.reports import connections, count_entities, storage_info
from aiida_sqla_plugin.session import application_name
from aiida_sqla_plugin.settings import SqlaSettingsManager
from helpers import insert_links, insert_nodes, node_rows, user_pk
from pg_cluster import PASSWORD, ROLE, PgCluster

HEAD = pending_revisions(None)[0]


def url_profile(name: str, url: URL, **extra: object) -> Profile:
    return Profile(name, storage_config={"url": url.render_as_string(hide_password=False), **extra})


def parts_profile(cluster: PgCluster, database: str, **config: object) -> Profile:
    return Profile("remote", storage_config={
        "database_engine": "postgresql_psycopg2", "database_hostname": cluster.hosts[0], "database_port": cluster.port,
        "database_username": ROLE, "database_name": database, **config,
    })


def current_user(profile: Profile) -> str:
    aiida_sqla_plugin.reset_session(profile)
    aiida_sqla_plugin.session.check_connection(profile)
    with get_engine().connect() as connection:
        return str(connection.scalar(text("SELECT current_user")))


# -- remote profiles ------------------------------------------------------------------------------------------


def test_remote_profile_with_password_file_and_libpq_options(pg_cluster: PgCluster, tmp_path: Path) -> None:
    database = pg_cluster.new_database().database
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    profile = parts_profile(
        pg_cluster, database, database_password_file=str(secret),
        database_options={"sslmode": "disable", "target_session_attrs": "read-write"},
    )
    url = database_url(profile)
    assert url.query == {"sslmode": "disable", "target_session_attrs": "read-write"}
    assert current_user(profile) == ROLE
    for shown in (repr(profile.storage_config.get("database_password")), repr(url), str(url), repr(get_engine()),
                  json.dumps(masked_storage_config(profile))):
        assert PASSWORD not in shown
    wrong = parts_profile(pg_cluster, database, database_password="wrong", database_options={"sslmode": "require"})
    with pytest.raises(aiida_sqla_plugin.exceptions.UnreachableStorage) as caught:  # the server has no SSL
        aiida_sqla_plugin.reset_session(wrong)
        aiida_sqla_plugin.session.check_connection(wrong)
    assert "wrong" not in str(caught.value)
    missing = parts_profile(pg_cluster, database, database_password_file=str(tmp_path / "nope"))
    with pytest.raises(aiida_sqla_plugin.exceptions.ConfigurationError, match="database_password_file"):
        database_url(missing)


def test_remote_profile_without_password_reads_pgpassfile(
    pg_cluster: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = pg_cluster.new_database().database
    passfile = tmp_path / "pgpass"
    escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    passfile.write_text(f"{pg_cluster.hosts[0]}:{pg_cluster.port}:{database}:{ROLE}:{escaped}\n")
    passfile.chmod(0o600)
    profile = parts_profile(pg_cluster, database)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "empty"))
    with pytest.raises(aiida_sqla_plugin.exceptions.UnreachableStorage):  # the control: no password, no login
        current_user(profile)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    assert current_user(profile) == ROLE


def test_build_profile_stores_options_password_file_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIIDA_SQLA_CONFIG_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pw").write_text("secret\n")
    profile = build_profile(
        "hpc", engine="postgresql", host="db.example.org", user="aiida", password_file="pw", database="aiida",
        options={"sslmode": "verify-full"}, read_only=True,
    )
    assert profile.storage_config["database_options"] == {"sslmode": "verify-full"}
    assert profile.storage_config["database_password_file"] == str(Path("pw").absolute())
    assert profile.storage_config["read_only"] is True
    with pytest.raises(aiida_sqla_plugin.exceptions.OptionConflict):
        build_profile("x", engine="postgresql", database="a", password="p", password_file="pw")
    result = CliRunner().invoke(cli, ["profile", "create", "hpc", "--engine", "postgresql", "--database", "aiida",
                                      "--option", "sslmode"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


# -- pool budget -----------------------------------------------------------------------------------------------


def test_pool_exhaustion_names_the_limit_and_the_settings(dialect: str, database_url: URL) -> None:
    profile = url_profile(f"tiny-{dialect}", database_url, engine_kwargs={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2})
    aiida_sqla_plugin.reset_session(profile)
    engine = get_engine()
    with engine.connect() as held:
        held.execute(text("SELECT 1"))
        with pytest.raises(PoolExhausted) as caught, engine.connect():
            pass
    message = str(caught.value)
    assert "1 + 0 connections" in message and "pool_timeout=0.2 s" in message
    assert "pool_size" in message and "max_overflow" in message and "engine_kwargs" in message
    assert exit_code_for(caught.value) == EXIT_POOL_EXHAUSTED
    with engine.connect() as again:  # the pool works again once a connection is back
        assert again.scalar(text("SELECT 1")) == 1


def test_postgresql_pool_defaults_and_overrides(new_postgres_url: URL) -> None:
    aiida_sqla_plugin.reset_session(url_profile("defaults", new_postgres_url))
    pool = get_engine().pool
    assert (pool.size(), pool._max_overflow, pool._timeout, pool._recycle) == (4, 4, 30, 1800)  # type: ignore[attr-defined]
    aiida_sqla_plugin.reset_session(url_profile("custom", new_postgres_url, engine_kwargs={"pool_size": 2, "max_overflow": 0}))
    pool = get_engine().pool
    assert (pool.size(), pool._max_overflow) == (2, 0)  # type: ignore[attr-defined]


# -- application_name and storage connections ---------------------------------------------------------------


def _connect_and_report(profile: Profile, names: multiprocessing.Queue, release: multiprocessing.Event) -> None:
    with get_engine(profile).connect() as connection:
        names.put(connection.scalar(text("SELECT current_setting('application_name')")))
        release.wait(30)


def test_connections_show_the_application_name_of_every_process(backend: SqlaBackend, dialect: str) -> None:
    if dialect == "sqlite":
        with pytest.raises(ValidationError, match="applies to PostgreSQL"):
            connections(backend.engine)
        return
    context = multiprocessing.get_context("fork")
    names, release = context.Queue(), context.Event()
    with backend.engine.connect() as mine:
        mine.execute(text("SELECT 1"))
        child = context.Process(target=_connect_and_report, args=(backend.profile, names, release))
        child.start()
        try:
            child_name = names.get(timeout=30)
            rows = connections(backend.engine)
        finally:
            release.set()
            child.join(30)
    assert child.exitcode == 0
    host = socket.gethostname()
    assert child_name == f"aiida-sqla@{host}:{child.pid}"  # the child's pid, not the parent's
    listed = {row["application_name"] for row in rows}
    assert {application_name(), child_name} <= listed
    assert all(row["age_seconds"] >= 0 for row in rows)


def test_storage_connections_command(
    backend: SqlaBackend, dialect: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIIDA_SQLA_CONFIG_DIR", str(tmp_path))
    ConfigFile().add_profile(backend.profile)
    arguments = ["-p", backend.profile.name, "storage", "connections", "--json"]
    if dialect == "sqlite":
        result = CliRunner().invoke(cli, arguments)
        assert result.exit_code == EXIT_ERROR and "applies to PostgreSQL" in result.output
        return
    with backend.engine.connect() as held:
        held_pid = held.scalar(text("SELECT pg_backend_pid()"))
        result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    rows = {row["pid"]: row for row in json.loads(result.stdout)}
    assert rows[held_pid]["application_name"] == application_name()
    assert rows[held_pid]["state"].startswith("idle") and rows[held_pid]["age_seconds"] >= 0


# -- read-only profiles -----------------------------------------------------------------------------------------


@pytest.fixture
def read_only_backend(backend: SqlaBackend, user: DbUser) -> Iterator[SqlaBackend]:
    """The test's (migrated) database with two nodes, a link and a setting, reopened through a read_only profile."""
    with backend.engine.begin() as connection:
        first, second = insert_nodes(connection, node_rows(user_pk(backend), 2))
        insert_links(connection, [(first, second, "create")])
    SqlaSettingsManager(backend.profile).set("analysis_key", {"v": 1})
    aiida_sqla_plugin.dispose_engines()
    profile = Profile(f"{backend.profile.name}-ro", storage_config={**backend.profile.storage_config, "read_only": True})
    aiida_sqla_plugin.reset_session(profile)
    yield SqlaBackend(profile)


def test_read_only_profile_reads_everything(read_only_backend: SqlaBackend) -> None:
    counts = count_entities(read_only_backend.engine)
    assert (counts["nodes"], counts["links"]) == (2, 1)
    assert storage_info(read_only_backend)["schema_revision"] == HEAD
    assert SqlaSettingsManager(read_only_backend.profile).get("analysis_key").value == {"v": 1}
    with read_only_backend.transaction() as session:
        assert session.scalar(select(func.count()).select_from(DbLink)) == 1


def test_read_only_profile_cannot_write_or_migrate(read_only_backend: SqlaBackend) -> None:
    user = user_pk(read_only_backend)
    assert SqlaSettingsManager(read_only_backend.profile).get("analysis_key").value == {"v": 1}  # a pooled read first
    with pytest.raises(ReadOnlyStorage, match='"read_only": true'):
        with read_only_backend.transaction() as session:
            session.add(DbNode(node_type="data.core.int.Int.", user_id=user, attributes={}))
    with pytest.raises(ReadOnlyStorage, match="read_only"):
        SqlaSettingsManager(read_only_backend.profile).set("analysis_key", 2)
    with pytest.raises(ReadOnlyStorage, match="read_only"), read_only_backend.engine.begin() as connection:
        connection.execute(DbSetting.__table__.delete())
    with pytest.raises(ReadOnlyStorage, match="never migrated"):
        SqlaBackendManager(read_only_backend.profile).migrate()
    assert count_entities(read_only_backend.engine)["nodes"] == 2
    assert SqlaSettingsManager(read_only_backend.profile).get("analysis_key").value == {"v": 1}


# -- migrations through PgBouncer ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bouncer(pg_cluster: PgCluster) -> PgCluster:
    """The session's private cluster with PgBouncer (transaction pooling, 3 server connections) in front."""
    if pg_cluster.bouncer_port is None:
        pg_cluster.start_bouncer(pool_size=3)
    return pg_cluster


def _migrate_through(profile: Profile, results: multiprocessing.Queue) -> None:
    results.put(SqlaBackendManager(profile).migrate())


def advisory_locks(cluster: PgCluster) -> int:
    return int(cluster.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))


def test_two_migrations_through_pgbouncer_serialise(bouncer: PgCluster) -> None:
    direct = bouncer.new_database()
    profile = url_profile("pooled", direct.set(port=bouncer.bouncer_port))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_migrate_through, args=(profile, results)) for _ in range(2)]
    for process in processes:
        process.start()
    applied = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert sorted(applied, key=len) == [[], [HEAD]]
    assert advisory_locks(bouncer) == 0  # nothing left behind on a pooled server connection
    aiida_sqla_plugin.reset_session(profile)
    SqlaBackendManager(profile).validate_schema()


def test_migration_through_pgbouncer_waits_for_a_lock_held_elsewhere(bouncer: PgCluster) -> None:
    from aiida_sqla_plugin import manager as manager_module  # noqa: PLC0415

    direct = bouncer.new_database()
    profile = url_profile("pooled", direct.set(port=bouncer.bouncer_port))
    aiida_sqla_plugin.reset_session(profile)
    holder = get_engine().connect()
    holder.exec_driver_sql(f"SELECT pg_advisory_xact_lock({manager_module.MIGRATION_LOCK_KEY})")
    try:
        with pytest.raises(DatabaseMigrationError, match="another process is migrating"):
            SqlaBackendManager(profile).migrate(lock_timeout=0.3)
    finally:
        holder.rollback()
        holder.close()
    assert SqlaBackendManager(profile).migrate(lock_timeout=10) == [HEAD]
    assert advisory_locks(bouncer) == 0


def test_threads_share_pgbouncer_beyond_its_server_limit(bouncer: PgCluster) -> None:
    """8 threads with 8 client connections through a pooler holding 3 server connections all commit."""
    direct = bouncer.new_database()
    profile = url_profile("pooled", direct.set(port=bouncer.bouncer_port))
    SqlaBackendManager(profile).migrate()
    aiida_sqla_plugin.reset_session(profile)
    backend = SqlaBackend(profile)
    errors: list[BaseException] = []

    def store(index: int) -> None:
        try:
            for round_ in range(10):
                SqlaSettingsManager(backend.profile).set(f"t{index}_r{round_}", round_)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=store, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with get_engine().connect() as connection:
        assert connection.scalar(select(func.count()).select_from(DbSetting).where(DbSetting.key.like("t%_r%"))) == 80
    server = int(bouncer.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{direct.database}'"))
    assert server <= 3
