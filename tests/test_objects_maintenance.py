"""The object store in backups, restores, backup verification and maintenance, on both dialects."""
from __future__ import annotations

import errno
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, update

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import BackupError
from aiida_sqla_plugin.maintenance import MANIFEST_NAME, backup, list_backups, maintain, restore, verify_backup
from aiida_sqla_plugin.models import DbNode
from aiida_sqla_plugin import session as session_module
from aiida_sqla_plugin.objectstore import ObjectStore, object_store_for
from aiida_sqla_plugin.profile import sqlite_file
from aiida_sqla_plugin.reports import count_entities
from aiida_sqla_plugin.synthetic import build_graph

from helpers import new_profile


def _with_objects(backend: SqlaBackend) -> tuple[set[str], str]:
    """A small graph whose nodes reference three objects (one in a folder); one more object nobody references."""
    build_graph(backend, 30, seed=1)
    store = object_store_for(backend)
    keys = [store.put(io.BytesIO(f"file {i}\n".encode() * (i + 1))) for i in range(3)]
    with backend.transaction(write=True) as session:
        first, second = session.execute(select(DbNode.id).order_by(DbNode.id).limit(2)).scalars()
        session.execute(update(DbNode).where(DbNode.id == first).values(
            repository_metadata={"o": {"a": {"k": keys[0]}, "dir": {"o": {"b": {"k": keys[1]}}}}}))
        session.execute(update(DbNode).where(DbNode.id == second).values(repository_metadata={"o": {"c": {"k": keys[2]}, "a": {"k": keys[0]}}}))
    orphan = store.put(io.BytesIO(b"nobody references me"))
    return set(keys), orphan


def _hashes(store: ObjectStore) -> dict[str, str]:
    result = {}
    for key in store.keys():
        with store.open(key) as handle:
            result[key] = hashlib.sha256(handle.read()).hexdigest()
    return result


def test_backup_holds_the_referenced_objects_and_restore_puts_them_back(backend: SqlaBackend, dialect: str, tmp_path: Path,
                                                                         request: pytest.FixtureRequest):
    referenced, orphan = _with_objects(backend)
    folder = backup(backend.profile, tmp_path / "backups")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["objects"]["count"] == 3
    assert manifest["objects"]["keys_sha256"] == hashlib.sha256("".join(f"{k}\n" for k in sorted(referenced)).encode()).hexdigest()
    backed_up = ObjectStore(folder / "objects")
    assert set(backed_up.keys()) == referenced  # not the orphan
    verify_backup(folder)
    target = new_profile(dialect, tmp_path, request)
    restore(folder, target)
    restored = _hashes(object_store_for(target))
    assert restored == {key: key for key in referenced}
    assert orphan not in restored


def test_a_changed_or_missing_object_fails_verification(backend: SqlaBackend, dialect: str, tmp_path: Path,
                                                        request: pytest.FixtureRequest):
    referenced, _ = _with_objects(backend)
    folder = backup(backend.profile, tmp_path / "backups")
    backed_up = ObjectStore(folder / "objects")
    key = sorted(referenced)[0]
    path = backed_up.path(key)
    original = path.read_bytes()
    path.write_bytes(original + b"x")
    with pytest.raises(BackupError, match=f"object {key} does not match its sha256"):
        verify_backup(folder)
    target = new_profile(dialect, tmp_path, request)
    with pytest.raises(BackupError, match="sha256"):
        restore(folder, target)
    assert list(object_store_for(target).keys()) == []
    path.unlink()
    with pytest.raises(BackupError, match="holds 2 objects, its manifest lists 3"):
        verify_backup(folder)
    path.write_bytes(original)
    verify_backup(folder)


def test_a_referenced_object_missing_from_the_store_fails_the_backup(backend: SqlaBackend, tmp_path: Path):
    referenced, _ = _with_objects(backend)
    object_store_for(backend).remove(sorted(referenced)[1])
    with pytest.raises(BackupError, match=f"object {sorted(referenced)[1]}, referenced by a node .* is missing"):
        backup(backend.profile, tmp_path / "backups")
    assert list_backups(tmp_path / "backups") == []
    assert list((tmp_path / "backups").iterdir()) == []  # no temporary folder left either


def test_maintain_lists_unreferenced_objects_and_full_removes_them(backend: SqlaBackend):
    referenced, orphan = _with_objects(backend)
    store = object_store_for(backend)
    size = store.path(orphan).stat().st_size
    for kwargs in ({}, {"dry_run": True}, {"full": True, "dry_run": True}):
        result = maintain(backend, **kwargs)
        assert (result.unreferenced_objects, result.unreferenced_bytes, result.objects_removed) == (1, size, 0), kwargs
        assert set(store.keys()) == referenced | {orphan}
    result = maintain(backend, full=True)
    assert (result.unreferenced_objects, result.unreferenced_bytes, result.objects_removed) == (1, size, 1)
    assert set(store.keys()) == referenced
    again = maintain(backend, full=True)
    assert (again.unreferenced_objects, again.objects_removed) == (0, 0) and set(store.keys()) == referenced


def test_cli_maintain_reports_unreferenced_objects(backend: SqlaBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from click.testing import CliRunner

    from aiida_sqla_plugin.cli import cli
    from aiida_sqla_plugin.config import CONFIG_DIR_ENV, ConfigFile

    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    referenced, orphan = _with_objects(backend)
    ConfigFile().add_profile(aiida_sqla_plugin.Profile("work", "sqlalchemy", dict(backend.profile.storage_config)), make_default=True)
    size = object_store_for(backend).path(orphan).stat().st_size

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert f"1 unreferenced objects ({size} bytes) in the object store, 0 removed; --full removes them" in invoke("storage", "maintain")
    assert json.loads(invoke("storage", "maintain", "--full", "--dry-run", "--json"))["objects_removed"] == 0
    assert ", 1 removed" in invoke("storage", "maintain", "--full")
    assert set(object_store_for(backend).keys()) == referenced


def test_restore_whose_objects_fail_leaves_the_database_empty_and_runs_again(
    backend: SqlaBackend, dialect: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    referenced, _ = _with_objects(backend)
    folder = backup(backend.profile, tmp_path / "backups")
    target = new_profile(dialect, tmp_path, request)
    put = ObjectStore.put
    calls = []

    def put_until_full(self: ObjectStore, stream: Any, expected_key: str | None = None) -> str:
        calls.append(expected_key)
        if len(calls) == 2:  # the disk fills up on the second object
            raise OSError(errno.ENOSPC, "No space left on device")
        return put(self, stream, expected_key)

    monkeypatch.setattr(ObjectStore, "put", put_until_full)
    with pytest.raises(OSError, match="No space left"):
        restore(folder, target)
    monkeypatch.setattr(ObjectStore, "put", put)
    # the database was not restored half-way
    if dialect == "sqlite":
        assert not Path(str(sqlite_file(target))).exists()
    else:
        with session_module.get_engine(target).connect() as connection:
            assert inspect(connection).get_table_names() == []
    restore(folder, target)  # the same call again, once there is room
    assert count_entities(session_module.get_engine(target)) == count_entities(backend.engine)
    assert _hashes(object_store_for(target)) == {key: key for key in referenced}
