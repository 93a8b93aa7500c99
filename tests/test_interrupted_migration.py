"""Migrations killed half-way and migrations racing each other, in real processes (``migration_child.py``).

The test-only revisions in ``slow_migrations/`` follow the shipped head: ``test_0003`` (quick) then ``test_0004``,
which waits inside its transaction until the test lets it go, so kills and races happen at a known point.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

import aiida_sqla_plugin
from aiida_sqla_plugin import session as session_module
from aiida_sqla_plugin.manager import SqlaBackendManager

TESTS = Path(__file__).resolve().parent
#: Seconds a child may take to reach the slow revision or to finish once released.
CHILD_DEADLINE_S = 60


class Migrator:
    """One ``migration_child.py`` process migrating the profile's database."""

    def __init__(self, profile: aiida_sqla_plugin.Profile, folder: Path, name: str, lock_timeout: float | None = None):
        self.result = folder / f"{name}.result"
        url = profile.storage_config["url"]
        env = {**os.environ, "AIIDA_SQLA_SLOW_MIGRATION_DIR": str(folder)}
        timeout = "none" if lock_timeout is None else str(lock_timeout)
        self.process = subprocess.Popen([sys.executable, str(TESTS / "migration_child.py"), url, timeout, str(self.result)], env=env)

    def wait(self) -> str:
        """Wait for the child's end; its result line."""
        try:
            assert self.process.wait(timeout=CHILD_DEADLINE_S) == 0
        finally:
            self.kill()
        return self.result.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def wait_for_file(path: Path, migrator: Migrator) -> None:
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while not path.exists():
        assert migrator.process.poll() is None, f"the migrator ended before {path.name}: {migrator.result.read_text()}"
        assert time.monotonic() < deadline, f"the migrator did not reach {path.name}"
        time.sleep(0.05)


def wait_for_advisory_lock_waiter(profile: aiida_sqla_plugin.Profile, migrator: Migrator) -> None:
    """PostgreSQL: wait until a session waits for the migration lock (pg_locks), i.e. ``migrator`` got there."""
    deadline = time.monotonic() + CHILD_DEADLINE_S
    query = text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    engine = create_engine(profile.storage_config["url"])
    try:
        while True:
            with engine.connect() as connection:
                if connection.execute(query).scalar_one():
                    return
            assert migrator.process.poll() is None, "the second migrator ended instead of waiting"
            assert time.monotonic() < deadline, "the second migrator never waited for the lock"
            time.sleep(0.05)
    finally:
        engine.dispose()


def schema(profile: aiida_sqla_plugin.Profile) -> tuple[str | None, set[str]]:
    """The database's revision and the test-only tables present."""
    try:
        revision = SqlaBackendManager(profile).get_schema_version_database()
        with session_module.get_engine(profile).connect() as connection:
            tables = set(inspect(connection).get_table_names()) & {"test_quick", "test_slow"}
    finally:
        aiida_sqla_plugin.dispose_engines()
    return revision, tables


def sqlite_integrity(profile: aiida_sqla_plugin.Profile) -> str:
    path = profile.storage_config["url"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.fixture
def shipped_head(profile: aiida_sqla_plugin.Profile) -> aiida_sqla_plugin.Profile:
    """The profile's database migrated to the shipped head (``main_0004``), no engine left open."""
    SqlaBackendManager(profile).migrate()
    aiida_sqla_plugin.dispose_engines()
    return profile


@pytest.mark.slow
def test_killed_migration_keeps_completed_revisions_and_a_second_run_finishes(shipped_head, dialect, tmp_path):
    profile = shipped_head
    first = Migrator(profile, tmp_path, "first")
    try:
        wait_for_file(tmp_path / "started", first)  # test_0004 created its table and waits, uncommitted
    finally:
        first.kill()
    # PostgreSQL commits each revision on its own: test_0003 stays; SQLite runs the migration in one transaction.
    expected = ("test_0003", {"test_quick"}) if dialect == "postgresql" else ("main_0004", set())
    assert schema(profile) == expected
    if dialect == "sqlite":
        assert sqlite_integrity(profile) == "ok"

    (tmp_path / "release").touch()
    result = Migrator(profile, tmp_path, "second").wait()
    assert result == ("ok test_0004" if dialect == "postgresql" else "ok test_0003 test_0004")
    assert schema(profile) == ("test_0004", {"test_quick", "test_slow"})
    if dialect == "sqlite":
        assert sqlite_integrity(profile) == "ok"


@pytest.mark.slow
def test_two_migrators_one_gives_up_clearly_one_waits_and_the_schema_ends_at_head(shipped_head, dialect, tmp_path):
    profile = shipped_head
    first = Migrator(profile, tmp_path, "first")
    try:
        wait_for_file(tmp_path / "started", first)
        impatient = Migrator(profile, tmp_path, "impatient", lock_timeout=1).wait()
        assert impatient.startswith("error DatabaseMigrationError ")
        assert "another process" in impatient and "run the migration again" in impatient
        patient = Migrator(profile, tmp_path, "patient")
        if dialect == "postgresql":
            wait_for_advisory_lock_waiter(profile, patient)
        else:
            time.sleep(1)  # SQLite shows no lock waiters: it must at least not have finished meanwhile
        assert patient.process.poll() is None and not patient.result.exists()
        (tmp_path / "release").touch()
        assert first.wait().startswith("ok ")
        assert patient.wait() == "ok "  # it waited, then found the database at head
    finally:
        first.kill()
    assert schema(profile) == ("test_0004", {"test_quick", "test_slow"})
