"""Alembic migrations: same schema as ``create_all``, up and down, version checks, locks and failures."""
from __future__ import annotations

import ast
import datetime
import inspect as pyinspect
import multiprocessing
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import delete, inspect, text
from sqlalchemy.engine import Connection

import aiida_sqla_plugin
from aiida_sqla_plugin import get_engine
from aiida_sqla_plugin import manager as manager_module
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.bulk import bulk_insert
from aiida_sqla_plugin.exceptions import DatabaseMigrationError, IncompatibleDatabaseSchema, SchemaAhead, ValidationError
from aiida_sqla_plugin.manage import alembic_command_names, execute_alembic_command
from aiida_sqla_plugin.manager import SqlaBackendManager, new_alembic_config
from aiida_sqla_plugin.closure import install_tc, rebuild_tc
from aiida_sqla_plugin.models import CREATION_DAY_NAME, Base, DbLink, DbNode, DbUser
from aiida_sqla_plugin.queries import SqlaQueryManager
from aiida_sqla_plugin.session import sqlite_write_options
from helpers import closure, closure_layout, insert_ladder_from_its_end, insert_links, insert_nodes, node_rows

FIRST, CLOSURE, DAY, HEAD = "main_0001", "main_0002", "main_0003", "main_0004"


def snapshot(connection: Connection) -> dict[str, dict[str, Any]]:
    """Tables with their columns (type, nullability), primary key, indexes, unique constraints and foreign keys."""
    inspector = inspect(connection)
    tables: dict[str, dict[str, Any]] = {}
    for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        tables[table] = {
            "columns": [
                (column["name"], str(column["type"].compile(connection.dialect)), column["nullable"])
                for column in inspector.get_columns(table)
            ],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (index["name"], tuple(index["column_names"]), bool(index["unique"])) for index in inspector.get_indexes(table)
            ),
            "unique": sorted((unique["name"], tuple(unique["column_names"])) for unique in inspector.get_unique_constraints(table)),
            "foreign_keys": sorted(
                (
                    key["name"],
                    tuple(key["constrained_columns"]),
                    key["referred_table"],
                    tuple(key["referred_columns"]),
                    (key["options"].get("ondelete") or "").upper(),
                    bool(key["options"].get("deferrable")),
                    key["options"].get("initially"),
                )
                for key in inspector.get_foreign_keys(table)
            ),
        }
    return tables


def current_snapshot() -> dict[str, dict[str, Any]]:
    with get_engine().connect() as connection:
        return snapshot(connection)


def metadata_diffs() -> list[Any]:
    with get_engine().connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def has_creation_day_schema() -> bool:
    """Whether the database holds the creation-day index (SQLite) or statistics (PostgreSQL) of main_0003."""
    with get_engine().connect() as connection:
        if connection.dialect.name == "sqlite":
            query = "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?"
        else:
            query = "SELECT count(*) FROM pg_statistic_ext WHERE stxname = %s"
        return connection.exec_driver_sql(query, (CREATION_DAY_NAME[connection.dialect.name],)).scalar_one() == 1


def revision(backend: SqlaBackend) -> str | None:
    return backend.backend_manager.get_schema_version_database()


def test_upgrade_from_empty_equals_create_all(empty_backend: SqlaBackend) -> None:
    execute_alembic_command("upgrade", revision="head")
    assert revision(empty_backend) == HEAD
    upgraded = current_snapshot()
    assert metadata_diffs() == [] and has_creation_day_schema()

    execute_alembic_command("downgrade", revision="base")
    assert revision(empty_backend) is None
    assert current_snapshot() == {}

    applied = empty_backend.backend_manager.migrate()  # a new database: create_all + stamp
    assert applied == [HEAD]
    created = current_snapshot()
    assert created == upgraded
    assert metadata_diffs() == [] and has_creation_day_schema()

    execute_alembic_command("downgrade", revision="base")  # a create_all schema downgrades too
    assert current_snapshot() == {}
    execute_alembic_command("upgrade", revision="head")
    assert current_snapshot() == upgraded


def test_schema_has_the_aiida_rules(backend: SqlaBackend) -> None:
    tables = current_snapshot()
    assert set(tables) == set(Base.metadata.tables)
    rules = {(table, key[1], key[4]) for table, entry in tables.items() for key in entry["foreign_keys"]}
    assert ("db_dbnode", ("user_id",), "RESTRICT") in rules
    assert ("db_dbnode", ("dbcomputer_id",), "RESTRICT") in rules
    assert ("db_dblink", ("output_id",), "CASCADE") in rules
    assert ("db_dblog", ("dbnode_id",), "CASCADE") in rules
    assert ("db_dbcomment", ("dbnode_id",), "CASCADE") in rules
    indexed = {(table, index[1]) for table, entry in tables.items() for index in entry["indexes"]}
    for table, entry in tables.items():
        for key in entry["foreign_keys"]:
            assert (table, key[1]) in indexed, f"{table}.{key[1]} has no index"
    for column in ("ctime", "node_type", "process_type"):
        assert ("db_dbnode", (column,)) in indexed


def test_each_revision_goes_up_and_down(empty_backend: SqlaBackend) -> None:
    script = ScriptDirectory.from_config(new_alembic_config())
    revisions = [script.revision for script in reversed(list(script.walk_revisions()))]
    assert revisions == [FIRST, CLOSURE, DAY, HEAD]
    seen = [current_snapshot()]
    for step in revisions:
        execute_alembic_command("upgrade", revision=step)
        assert revision(empty_backend) == step
        seen.append(current_snapshot())
        execute_alembic_command("downgrade", revision="-1")
        assert current_snapshot() == seen[-2]
        execute_alembic_command("upgrade", revision=step)
        assert current_snapshot() == seen[-1]


def test_creation_day_revision_up_and_down_keeps_the_statistics(empty_backend: SqlaBackend) -> None:
    execute_alembic_command("upgrade", revision=CLOSURE)
    assert not has_creation_day_schema()
    users = bulk_insert(empty_backend, DbUser, [{"email": "a@example.org"}, {"email": "b@example.org"}])
    start = datetime.datetime(2024, 5, 1, 22, tzinfo=datetime.timezone.utc)
    bulk_insert(empty_backend, DbNode, [
        {"node_type": f"data.core.t{number % 3}.", "user_id": users[number % 2], "ctime": start + datetime.timedelta(hours=number)}
        for number in range(200)
    ])
    manager = SqlaQueryManager(empty_backend)
    before = [manager.get_creation_statistics(user) for user in (None, *users)]
    assert before[0]["total"] == 200 and len(before[0]["ctime_by_day"]) == 10
    execute_alembic_command("upgrade", revision=HEAD)
    assert has_creation_day_schema()
    assert [manager.get_creation_statistics(user) for user in (None, *users)] == before
    execute_alembic_command("downgrade", revision=CLOSURE)
    assert not has_creation_day_schema() and revision(empty_backend) == CLOSURE
    assert [manager.get_creation_statistics(user) for user in (None, *users)] == before


def test_closure_revision_reorders_the_pairs_and_keeps_them_and_the_triggers(empty_backend: SqlaBackend) -> None:
    execute_alembic_command("upgrade", revision=DAY)
    install_tc(empty_backend.get_session(), backfill=False)  # the triggers, on an empty closure
    empty_backend.close()
    (user,) = bulk_insert(empty_backend, DbUser, [{"email": "a@example.org"}])
    with get_engine().begin() as connection:
        ids = insert_nodes(connection, node_rows(user, 60))
        insert_ladder_from_its_end(connection, ids)
    with get_engine().connect() as connection:
        before = closure(connection)
        assert closure_layout(connection) == {"key": ["parent_id", "child_id"], "indexes": [["child_id", "parent_id"]], "clustered": False}
    assert len(before) == 59 * 60 // 2 and before[(ids[0], ids[59])] == 1548008755920  # paths from the first to the last: Fibonacci(60)

    execute_alembic_command("upgrade", revision=HEAD)
    with get_engine().connect() as connection:
        assert closure(connection) == before
        assert closure_layout(connection) == {"key": ["child_id", "parent_id"], "indexes": [["parent_id", "child_id"]], "clustered": True}
    assert metadata_diffs() == []
    with get_engine().begin() as connection:  # the triggers survived the table swap: a new link updates the closure
        (last,) = insert_nodes(connection, node_rows(user, 1))
        insert_links(connection, [(ids[59], last, "create")])
        assert closure(connection)[(ids[0], last)] == 1548008755920

    execute_alembic_command("downgrade", revision=DAY)
    with get_engine().begin() as connection:
        assert closure_layout(connection)["key"] == ["parent_id", "child_id"]
        insert_links(connection, [(ids[58], last, "input_calc")])  # and the triggers survived the way back
        assert closure(connection)[(ids[0], last)] == 1548008755920 + 956722026041
        connection.execute(delete(DbLink).where(DbLink.output_id == last))
        assert closure(connection) == before


def test_install_writes_the_closure_in_its_key_order(backend: SqlaBackend) -> None:
    """Linked from the end, a ladder's pairs arrive by ancestor; a reinstall stores them by descendant again."""
    install_tc(backend.get_session())
    backend.close()
    (user,) = bulk_insert(backend, DbUser, [{"email": "a@example.org"}])
    with get_engine().begin() as connection:
        ids = insert_nodes(connection, node_rows(user, 60))
        insert_ladder_from_its_end(connection, ids)
        before = closure(connection)
    if backend.engine.dialect.name == "postgresql":
        with get_engine().connect() as connection:
            assert not closure_layout(connection)["clustered"]
    rebuild_tc(backend.get_session())
    backend.close()
    with get_engine().connect() as connection:
        assert closure(connection) == before
        assert closure_layout(connection) == {"key": ["child_id", "parent_id"], "indexes": [["parent_id", "child_id"]], "clustered": True}


def test_every_revision_has_a_downgrade() -> None:
    script = ScriptDirectory.from_config(new_alembic_config())
    assert len(script.get_heads()) == 1 and len(script.get_bases()) == 1
    for entry in script.walk_revisions():
        (function,) = ast.parse(textwrap.dedent(pyinspect.getsource(entry.module.downgrade))).body
        assert isinstance(function, ast.FunctionDef)
        work = [s for s in function.body if not isinstance(s, ast.Pass) and not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        assert work, f"revision {entry.revision} has no real downgrade"


def test_uninitialised_database(empty_backend: SqlaBackend) -> None:
    manager = empty_backend.backend_manager
    assert manager.get_schema_version_database() is None
    assert manager.is_database_schema_ahead() is False
    with pytest.raises(IncompatibleDatabaseSchema, match="not initialised.*migrate"):
        manager.validate_schema(empty_backend.profile)


def test_database_ahead_of_the_code(backend: SqlaBackend) -> None:
    with get_engine().begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'main_9999'"))
    before = current_snapshot()
    manager = backend.backend_manager
    assert manager.is_database_schema_ahead() is True
    with pytest.raises(IncompatibleDatabaseSchema, match="main_9999 is ahead.*upgrade aiida-sqla-plugin"):
        manager.validate_schema(backend.profile)
    with pytest.raises(IncompatibleDatabaseSchema, match="ahead"):
        SqlaBackendManager().load_backend_environment(backend.profile)
    with pytest.raises(SchemaAhead, match="refusing to migrate"):  # the type says it, not only the message
        manager.migrate()
    assert manager.get_schema_version_database() == "main_9999"
    assert current_snapshot() == before


def test_database_behind_the_code(empty_backend: SqlaBackend) -> None:
    execute_alembic_command("upgrade", revision=FIRST)
    manager = empty_backend.backend_manager
    assert manager.is_database_schema_ahead() is False
    with pytest.raises(IncompatibleDatabaseSchema, match=f"{FIRST} is behind.*storage migrate"):
        manager.validate_schema(empty_backend.profile)
    steps: list[tuple[str | None, str]] = []
    assert manager.migrate(on_revision=lambda old, new: steps.append((old, new))) == [CLOSURE, DAY, HEAD]
    assert steps == [(FIRST, CLOSURE), (CLOSURE, DAY), (DAY, HEAD)]
    manager.validate_schema(empty_backend.profile)
    assert manager.migrate() == []  # nothing left to do
    assert metadata_diffs() == []


def test_set_schema_version_database(backend: SqlaBackend) -> None:
    manager = backend.backend_manager
    before = current_snapshot()
    with pytest.raises(DatabaseMigrationError, match="'main_9999'.*known revisions: main_0004, main_0003, main_0002, main_0001"):
        manager.set_schema_version_database("main_9999")
    assert manager.get_schema_version_database() == HEAD
    manager.set_schema_version_database(FIRST)  # stamps only
    assert manager.get_schema_version_database() == FIRST
    assert current_snapshot() == before


def test_migrate_refuses_a_foreign_database(empty_backend: SqlaBackend) -> None:
    with get_engine().begin() as connection:
        connection.execute(text("CREATE TABLE db_dbnode (id INTEGER PRIMARY KEY)"))
    with pytest.raises(DatabaseMigrationError, match="db_dbnode.*not created by aiida-sqla-plugin"):
        empty_backend.backend_manager.migrate()
    assert revision(empty_backend) is None


def _migrate_in_child(profile: aiida_sqla_plugin.Profile, start: Any, results: Any) -> None:
    start.wait(30)
    results.put(SqlaBackendManager(profile).migrate())


@pytest.mark.parametrize("start_revision", [None, FIRST])
def test_concurrent_migrations_run_each_revision_once(empty_backend: SqlaBackend, start_revision: str | None) -> None:
    if start_revision:
        execute_alembic_command("upgrade", revision=start_revision)
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=_migrate_in_child, args=(empty_backend.profile, start, results)) for _ in range(2)]
    for process in processes:
        process.start()
    start.set()
    applied = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0]
    expected = [HEAD] if start_revision is None else [CLOSURE, DAY, HEAD]
    assert sorted(applied, key=len) == [[], expected]  # one process migrated, the other found nothing to do
    assert revision(empty_backend) == HEAD
    assert metadata_diffs() == []
    empty_backend.backend_manager.validate_schema()


def test_migration_lock_timeout(empty_backend: SqlaBackend, dialect: str) -> None:
    """With a lock timeout, a migration gives up clearly while another process holds the lock (the PostgreSQL
    advisory lock; on SQLite the write lock of an immediate transaction), and changes nothing."""
    holder = empty_backend.engine.connect()
    if dialect == "postgresql":
        holder.exec_driver_sql(f"SELECT pg_advisory_lock({manager_module.MIGRATION_LOCK_KEY})")
        message = "another process is migrating"
    else:
        holder = holder.execution_options(**sqlite_write_options(dialect))
        holder.begin()
        message = "another process kept the database locked for longer than 0.3 s"
    try:
        with pytest.raises(DatabaseMigrationError, match=message):
            empty_backend.backend_manager.migrate(lock_timeout=0.3)
        assert revision(empty_backend) is None
    finally:
        if dialect == "postgresql":
            holder.exec_driver_sql(f"SELECT pg_advisory_unlock({manager_module.MIGRATION_LOCK_KEY})")
        else:
            holder.rollback()
        holder.close()
    assert empty_backend.backend_manager.migrate(lock_timeout=5) == [HEAD]
    assert revision(empty_backend) == HEAD


FAILING_REVISION = '''
"""A revision that fails half-way.

Revision ID: test_failing
Revises: main_0004
"""
import sqlalchemy as sa
from alembic import op

revision = "test_failing"
down_revision = "main_0004"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("doomed", sa.Column("id", sa.Integer(), primary_key=True))
    raise RuntimeError("disk on fire")


def downgrade():
    op.drop_table("doomed")
'''


def test_failed_revision_leaves_the_last_good_one(
    empty_backend: SqlaBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dialect: str
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(manager_module.migrations_directory(), migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "test_failing.py").write_text(textwrap.dedent(FAILING_REVISION))
    monkeypatch.setattr(manager_module, "migrations_directory", lambda: str(migrations))
    execute_alembic_command("upgrade", revision=FIRST)
    manager = empty_backend.backend_manager
    assert manager.get_schema_version_code() == "test_failing"

    with pytest.raises(DatabaseMigrationError, match=f"migration from {FIRST} failed.*disk on fire"):
        manager.migrate()
    tables = set(current_snapshot())
    assert "doomed" not in tables
    if dialect == "postgresql":  # each revision commits on its own
        assert revision(empty_backend) == HEAD and "db_dbpath" in tables
    else:  # SQLite migrates in one transaction
        assert revision(empty_backend) == FIRST and "db_dbpath" not in tables

    (migrations / "versions" / "test_failing.py").unlink()  # the fix
    manager.migrate()
    assert revision(empty_backend) == HEAD
    manager.validate_schema()


def test_execute_alembic_command(empty_backend: SqlaBackend, capsys: pytest.CaptureFixture[str]) -> None:
    assert {"current", "history", "heads", "stamp", "upgrade", "downgrade"} <= set(alembic_command_names())
    execute_alembic_command("upgrade", revision=FIRST)
    execute_alembic_command("current")
    assert FIRST in capsys.readouterr().out
    execute_alembic_command("heads")
    assert f"{HEAD} (head)" in capsys.readouterr().out
    execute_alembic_command("history")
    assert f"{DAY} -> {HEAD}" in capsys.readouterr().out
    execute_alembic_command("stamp", revision=HEAD)
    assert revision(empty_backend) == HEAD
    assert "db_dbpath" not in current_snapshot()  # stamped, not migrated
    execute_alembic_command("stamp", revision=FIRST)
    execute_alembic_command("upgrade", revision="head")
    assert "db_dbpath" in current_snapshot()
    execute_alembic_command("downgrade", revision=FIRST)
    assert revision(empty_backend) == FIRST
    with pytest.raises(ValidationError, match="unknown alembic command 'explode'.*upgrade"):
        execute_alembic_command("explode")
