"""SQLite on a disk that fills up during ``bulk_insert``: :class:`StorageFull`, and the database as before the call.

The test mounts a 2 MiB tmpfs (we run as root on CI and the dev machine); where mounting is not allowed it skips.
PostgreSQL's disk cannot be filled from a test without owning the server; its full-disk errors roll back the same way.
"""
from __future__ import annotations

import gc
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import aiida_sqla_plugin
from aiida_sqla_plugin import Profile
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.cli._root import EXIT_STORAGE_FULL, exit_code_for
from aiida_sqla_plugin.exceptions import StorageFull
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.models import DbNode, DbUser
from helpers import count_rows, database_fingerprint, node_rows, user_pk

#: Rows per ``bulk_insert`` call: about 150 kB, so a 2 MiB disk fills after a few calls.
ROWS_PER_CALL = 500


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); needs root and CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        aiida_sqla_plugin.dispose_engines()
        gc.collect()  # connections referenced by the caught error's traceback
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_bulk_insert_until_the_disk_is_full(small_disk: Path) -> None:
    path = small_disk / "db.sqlite"
    profile = Profile("small", "sqlalchemy", {"url": f"sqlite:///{path}"})
    aiida_sqla_plugin.reset_session(profile)
    SqlaBackendManager(profile).migrate()
    backend = SqlaBackend(profile)
    with backend.transaction() as session:
        session.add(DbUser(email="full@example.org"))
    owner = user_pk(backend)
    rows = node_rows(owner, ROWS_PER_CALL, label="x" * 250)
    stored = 0
    for _ in range(100):
        before = database_fingerprint(f"sqlite:///{path}")
        try:
            backend.bulk_insert(DbNode, rows)
        except StorageFull as error:
            assert "is full" in str(error) and "free space" in str(error)
            assert exit_code_for(error) == EXIT_STORAGE_FULL
            break
        stored += ROWS_PER_CALL
    else:
        pytest.fail("the 2 MiB disk never filled up")
    assert stored > 0, "the disk was full before the first call: the test shows nothing"
    assert database_fingerprint(f"sqlite:///{path}") == before  # nothing of the failed call stays
    assert count_rows(backend, DbNode) == stored
    assert backend.engine.pool.checkedout() == 0  # type: ignore[attr-defined]  # the failed call gave its connection back
    aiida_sqla_plugin.dispose_engines()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # still usable: a small write fits once the failed call's space is given back
    assert backend.settings.get("schema_generation").value == "1"
