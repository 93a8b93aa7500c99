"""copy_storage: a profile's storage copied into another profile, across and within dialects."""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text, update

import aiida_sqla_plugin
from aiida_sqla_plugin.archive import StorageNotEmpty, copy_storage
from aiida_sqla_plugin.archive._export import repository_keys
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.cli import cli
from aiida_sqla_plugin.config import CONFIG_DIR_ENV, ConfigFile
from aiida_sqla_plugin.exceptions import ValidationError
from aiida_sqla_plugin.graph import get_ancestors, get_descendants
from aiida_sqla_plugin.maintenance import check_integrity
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.objectstore import object_store_for
from aiida_sqla_plugin.models import (
    Base,
    DbAuthInfo,
    DbComment,
    DbComputer,
    DbGroup,
    DbGroupNode,
    DbLink,
    DbLog,
    DbNode,
    DbPath,
    DbSetting,
    DbUser,
)
from aiida_sqla_plugin.synthetic import build_graph
from aiida_sqla_plugin.utils import closure_status, install_tc

from conftest import DIALECTS, require_postgres
from helpers import new_profile

TABLES: tuple[type[Base], ...] = (
    DbUser, DbComputer, DbAuthInfo, DbNode, DbLink, DbGroup, DbGroupNode, DbComment, DbLog, DbPath, DbSetting,
)
WHEN = datetime.datetime(2025, 5, 4, 3, 2, 1, 123456, tzinfo=datetime.timezone.utc)


@pytest.fixture
def backend(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> SqlaBackend:
    """The source: a migrated profile of the test's dialect."""
    profile = new_profile(dialect, tmp_path, request, "copy-source")
    SqlaBackendManager(profile).migrate()
    return SqlaBackend(profile)


@pytest.fixture(params=DIALECTS)
def target_dialect(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def target(target_dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> aiida_sqla_plugin.Profile:
    if target_dialect == "postgresql":
        require_postgres()
    return new_profile(target_dialect, tmp_path, request, "copy-target")


def _populate(backend: SqlaBackend, nodes: int = 300) -> None:
    """A synthetic graph with the closure installed, plus every other entity, files and a setting of its own."""
    build_graph(backend, nodes // 2, seed=3)
    with backend.transaction(write=True) as session:  # three nodes that leave a gap in the ids
        user_id = session.execute(select(DbUser.id)).scalar_one()
        gap = [DbNode(node_type="data.core.int.Int.", user_id=user_id) for _ in range(3)]
        session.add_all(gap)
    with backend.transaction(write=True) as session:
        session.execute(DbNode.__table__.delete().where(DbNode.id.in_([node.id for node in gap])))
    build_graph(backend, nodes - nodes // 2, seed=4)
    with backend.transaction(write=True) as session:
        user = session.execute(select(DbUser)).scalars().first()
        computer = session.execute(select(DbComputer)).scalars().first()
        assert user is not None and computer is not None
        node_ids = list(session.execute(select(DbNode.id).order_by(DbNode.id)).scalars())
        session.add(DbAuthInfo(aiidauser_id=user.id, dbcomputer_id=computer.id, auth_params={"key": "v"}))
        group = DbGroup(label="g1", user_id=user.id, extras={"x": [1, 2.5, "é"]}, time=WHEN)
        session.add_all([group, DbGroup(label="empty", user_id=user.id)])
        session.flush()
        session.add_all(DbGroupNode(dbgroup_id=group.id, dbnode_id=pk) for pk in node_ids[::7])
        session.add(DbComment(dbnode_id=node_ids[5], user_id=user.id, content="a\ttab\nnewline \\ backslash", ctime=WHEN))
        session.add(DbLog(dbnode_id=node_ids[9], loggername="aiida.x", levelname="REPORT", message="m", metadata_={"n": None}))
        session.add(DbSetting(key="custom", val={"nested": [1, None, True]}, description="d", time=WHEN))
        store = object_store_for(backend)
        keys = [store.put(io.BytesIO(f"content {i}".encode())) for i in range(3)]
        session.execute(update(DbNode).where(DbNode.id == node_ids[1]).values(
            repository_metadata={"o": {"a.txt": {"k": keys[0]}, "sub": {"o": {"b.txt": {"k": keys[1]}}}}}))
        session.execute(update(DbNode).where(DbNode.id == node_ids[2]).values(repository_metadata={"o": {"c.txt": {"k": keys[2]}}}))
        store.put(io.BytesIO(b"referenced by no node"))
    with backend.transaction(write=True) as session:
        install_tc(session)


def _counts(backend: SqlaBackend) -> dict[str, int]:
    with backend.engine.connect() as connection:
        return {model.__tablename__: int(connection.execute(select(func.count()).select_from(model)).scalar_one()) for model in TABLES}


def _rows(backend: SqlaBackend, model: type[Base], exclude: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    table = model.__table__
    columns = [column for column in table.columns if column.name not in exclude]
    with backend.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(*columns).order_by(*columns[:2]))]


def _referenced(backend: SqlaBackend) -> set[str]:
    with backend.engine.connect() as connection:
        return {key for (metadata,) in connection.execute(select(DbNode.repository_metadata)) for key in repository_keys(metadata)}


def _objects(backend: SqlaBackend) -> dict[str, str]:
    """Every stored object: key -> sha256 of its bytes."""
    store = object_store_for(backend)
    result = {}
    for key in store.keys():
        with store.open(key) as handle:
            result[key] = hashlib.sha256(handle.read()).hexdigest()
    return result


def _settings(backend: SqlaBackend) -> dict[str, tuple[Any, str, datetime.datetime]]:
    with backend.engine.connect() as connection:
        return {row.key: (row.val, row.description, row.time) for row in connection.execute(select(DbSetting))}


def test_copy_keeps_every_row_and_answer(backend: SqlaBackend, target: aiida_sqla_plugin.Profile):
    _populate(backend)
    progress: list[tuple[str, int, int | None]] = []
    result = copy_storage(backend.profile, target, progress=lambda *args: progress.append(args))
    copied = SqlaBackend(target)
    source_counts = _counts(backend)
    assert source_counts["db_dbnode"] == 300 and source_counts["db_dbpath"] > source_counts["db_dblink"] > 0
    assert _counts(copied) == source_counts
    assert result.rows["db_dbnode"] == 300 and result.rows["db_dbpath"] == source_counts["db_dbpath"]
    assert result.rows["db_dbsetting"] == 2  # custom and closure_link_types; schema_generation is the target's own
    assert ("copy db_dbnode", 300, 300) in progress
    for model in TABLES[:-1]:
        assert _rows(copied, model) == _rows(backend, model), model.__tablename__
    # settings: equal values, descriptions and times, but for the time the target's own migration wrote
    assert _settings(copied).keys() == _settings(backend).keys() == {"schema_generation", "custom", "closure_link_types"}
    assert _settings(copied)["custom"] == _settings(backend)["custom"] == ({"nested": [1, None, True]}, "d", WHEN)
    assert _settings(copied)["closure_link_types"] == _settings(backend)["closure_link_types"]
    assert _settings(copied)["schema_generation"][:2] == _settings(backend)["schema_generation"][:2]
    source_objects = _objects(backend)
    assert len(source_objects) == 4 and all(key == digest for key, digest in source_objects.items())
    # the referenced objects, with their bytes, and not the one no node references
    assert _objects(copied) == {key: digest for key, digest in source_objects.items() if key in _referenced(backend)}
    assert result.objects == 3
    assert copied.query_manager.get_creation_statistics() == backend.query_manager.get_creation_statistics()
    sample = random.Random(1).sample(_rows(backend, DbNode), 20)
    for row in sample:
        pk = row[0]
        assert get_ancestors([pk], backend=copied) == get_ancestors([pk], backend=backend)
        assert get_descendants([pk], backend=copied) == get_descendants([pk], backend=backend)
    assert check_integrity(copied) == []
    with copied.transaction() as session:
        status = closure_status(session)
    assert status.installed and status.rows == source_counts["db_dbpath"]
    # the copy keeps working: new ids follow the copied ones, and the closure triggers follow new links
    with copied.transaction(write=True) as session:
        user_id = session.execute(select(DbUser.id)).scalars().first()
        last = session.execute(select(func.max(DbNode.id))).scalar_one()
        new = DbNode(node_type="data.core.int.Int.", user_id=user_id)
        session.add(new)
        session.flush()
        assert new.id > last
        calculation = session.execute(select(DbNode.id).where(DbNode.node_type.like("process.calculation.%"))).scalars().first()
        session.add(DbLink(input_id=calculation, output_id=new.id, label="x", type="create"))
    assert get_ancestors([new.id], backend=copied) == get_ancestors([calculation], backend=copied) | {calculation}
    assert check_integrity(copied) == []


def test_non_empty_target_is_refused_and_unchanged(backend: SqlaBackend, target: aiida_sqla_plugin.Profile):
    build_graph(backend, 50, seed=1)
    occupied = SqlaBackend(target)
    copy_storage(backend.profile, target)  # migrates, then copies
    before = _counts(occupied)
    with pytest.raises(StorageNotEmpty, match="not empty .*nodes.*--merge"):
        copy_storage(backend.profile, target)
    assert _counts(occupied) == before


def test_a_setting_makes_a_target_non_empty(backend: SqlaBackend, target: aiida_sqla_plugin.Profile):
    build_graph(backend, 10, seed=1)
    copied = SqlaBackend(target)
    SqlaBackendManager(target).migrate()
    copied.settings.set("only-a-setting", 1)
    with pytest.raises(StorageNotEmpty, match="settings"):
        copy_storage(backend.profile, target)
    assert _counts(copied)["db_dbnode"] == 0


def _fail_after_links(description: str, done: int, total: int | None) -> None:
    if description == "copy db_dbgroup":
        raise RuntimeError("stopped half-way")


def _fail_after_objects(description: str, done: int, total: int | None) -> None:
    if description == "copy objects" and done == 2:
        raise RuntimeError("stopped while copying objects")


def test_failure_while_copying_objects_removes_them(backend: SqlaBackend, target: aiida_sqla_plugin.Profile):
    _populate(backend, 60)
    with pytest.raises(RuntimeError, match="objects"):
        copy_storage(backend.profile, target, progress=_fail_after_objects)
    assert _objects(SqlaBackend(target)) == {}
    assert _counts(SqlaBackend(target))["db_dbnode"] == 0


def test_failure_half_way_leaves_target_unchanged(backend: SqlaBackend, target: aiida_sqla_plugin.Profile):
    _populate(backend, 100)
    with pytest.raises(RuntimeError, match="half-way"):
        copy_storage(backend.profile, target, progress=_fail_after_links)
    copied = SqlaBackend(target)
    assert all(count == 0 for key, count in _counts(copied).items() if key != "db_dbsetting")
    assert set(_settings(copied)) == {"schema_generation"}
    assert _objects(copied) == {}
    copy_storage(backend.profile, target)  # the target is still empty: a second try works
    assert _counts(copied) == _counts(backend)


def test_a_value_the_target_refuses_leaves_it_unchanged(tmp_path: Path, request: pytest.FixtureRequest, target: aiida_sqla_plugin.Profile):
    source = new_profile("sqlite", tmp_path, request, "loose-source")
    aiida_sqla_plugin.reset_session(source)
    source_backend = SqlaBackend(source)
    SqlaBackendManager(source).migrate()
    build_graph(source_backend, 40, seed=2)
    with source_backend.engine.begin() as connection:  # SQLite does not enforce VARCHAR lengths
        connection.execute(text("UPDATE db_dbnode SET label = :label WHERE id = (SELECT max(id) FROM db_dbnode)"), {"label": "x" * 300})
    with pytest.raises(ValidationError, match="db_dbnode row .*label.* longer than 255"):
        copy_storage(source, target, batch_size=16)
    assert all(count == 0 for key, count in _counts(SqlaBackend(target)).items() if key != "db_dbsetting")


def test_same_database_is_refused(backend: SqlaBackend):
    with pytest.raises(ValidationError, match="same database"):
        copy_storage(backend.profile, backend.profile)


def test_small_batches_copy_everything(backend: SqlaBackend, tmp_path: Path, request: pytest.FixtureRequest):
    _populate(backend, 120)
    target = new_profile("sqlite", tmp_path, request, "small-batches")
    copy_storage(backend.profile, target, batch_size=7)
    assert _counts(SqlaBackend(target)) == _counts(backend)


def test_merge_adds_only_what_is_new_and_twice_is_a_no_op(backend: SqlaBackend, target: aiida_sqla_plugin.Profile):
    _populate(backend, 80)
    copied = SqlaBackend(target)
    SqlaBackendManager(target).migrate()
    with copied.transaction(write=True) as session:  # the target has a graph of its own, and the source's user
        session.add(DbUser(email="synthetic@example.org", first_name="already here"))
    build_graph(copied, 30, seed=9)
    with copied.transaction(write=True) as session:
        install_tc(session)  # the target's triggers keep its closure exact through the merge
    before = _counts(copied)
    source = _counts(backend)
    first = copy_storage(backend.profile, target, merge=True)
    assert first.merged and first.merge_report is not None
    assert first.rows["db_dbnode"] == source["db_dbnode"] and first.rows["db_dbuser"] == 0
    assert first.merge_report.counts["users"]["present"] == 1
    after = _counts(copied)
    assert after["db_dbpath"] > before["db_dbpath"]
    for table in ("db_dbnode", "db_dblink", "db_dbgroup", "db_dbgroup_dbnodes", "db_dbcomment", "db_dblog", "db_dbauthinfo"):
        assert after[table] == before[table] + source[table], table
    assert after["db_dbuser"] == before["db_dbuser"]
    assert _settings(copied)["custom"] == _settings(backend)["custom"]
    assert _objects(copied) == {key: key for key in _referenced(backend)}
    with copied.engine.connect() as connection:  # the source's nodes keep their uuids and content
        uuids = set(connection.execute(select(DbNode.uuid)).scalars())
    with backend.engine.connect() as connection:
        assert set(connection.execute(select(DbNode.uuid)).scalars()) <= uuids
    second = copy_storage(backend.profile, target, merge=True)
    assert _counts(copied) == after
    assert second.merge_report is not None and not second.merge_report.changed and second.objects == 0
    assert check_integrity(copied) == []


def test_merge_into_an_empty_target_is_a_plain_copy(backend: SqlaBackend, target: aiida_sqla_plugin.Profile):
    _populate(backend, 40)
    result = copy_storage(backend.profile, target, merge=True)
    assert not result.merged and _counts(SqlaBackend(target)) == _counts(backend)


def test_cli_copy_then_refusal_then_merge(backend: SqlaBackend, target: aiida_sqla_plugin.Profile, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    _populate(backend, 40)
    config = ConfigFile()
    config.add_profile(aiida_sqla_plugin.Profile("laptop", "sqlalchemy", dict(backend.profile.storage_config)), make_default=True)
    config.add_profile(aiida_sqla_plugin.Profile("server", "sqlalchemy", dict(target.storage_config)))

    def invoke(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    assert "copied to 'server': 1 db_dbuser" in invoke("storage", "copy", "--to", "server")
    assert _counts(SqlaBackend(target)) == _counts(backend)
    with pytest.raises(StorageNotEmpty):  # the library takes profile names from the config file too
        copy_storage("laptop", "server")
    assert "is not empty" in invoke("storage", "copy", "--to", "server", code=1)
    merged = json.loads(invoke("-p", "laptop", "storage", "copy", "--to", "server", "--merge", "--json"))
    assert merged["merged"] is True and merged["merge"]["changed"] is False and merged["rows"]["db_dbnode"] == 0
    invoke("storage", "copy", code=2)  # --to is required


_KILLED_COPY = """
import json, os, signal, sys
import aiida_sqla_plugin
from aiida_sqla_plugin.archive import copy_storage
source, target = (aiida_sqla_plugin.Profile(name, "sqlalchemy", config) for name, config in json.loads(sys.argv[1]))

def progress(description, done, total):
    if description == "copy db_dbpath":
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies half-way, its transaction open

copy_storage(source, target, progress=progress)
"""


def test_a_killed_copy_leaves_the_target_unchanged(backend: SqlaBackend, target: aiida_sqla_plugin.Profile):
    _populate(backend, 60)
    SqlaBackendManager(target).migrate()
    profiles = [[profile.name, dict(profile.storage_config)] for profile in (backend.profile, target)]
    aiida_sqla_plugin.dispose_engines()
    completed = subprocess.run([sys.executable, "-c", _KILLED_COPY, json.dumps(profiles)], capture_output=True, text=True,
                               timeout=300, cwd=Path(__file__).parent)
    assert completed.returncode == -signal.SIGKILL, completed.stderr[-2000:]
    copied = SqlaBackend(target)
    assert all(count == 0 for key, count in _counts(copied).items() if key != "db_dbsetting"), _counts(copied)
    assert set(_settings(copied)) == {"schema_generation"}
    copy_storage(backend.profile, target)  # and a new copy goes through
    assert _counts(copied) == _counts(backend)
