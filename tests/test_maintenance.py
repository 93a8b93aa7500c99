"""Backup/restore, integrity checks and maintenance, on both dialects."""
from __future__ import annotations

import json
import os
import sqlite3
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import BackupError
from aiida_sqla_plugin.maintenance import (
    LAST_BACKUP_LINK,
    MANIFEST_NAME,
    backup,
    check_integrity,
    list_backups,
    maintain,
    restore,
    verify_backup,
)
from aiida_sqla_plugin.models import CREATION_DAY_DDL
from aiida_sqla_plugin.reports import count_entities
from aiida_sqla_plugin.synthetic import build_graph
from aiida_sqla_plugin.utils import install_tc

from helpers import closure, closure_layout, insert_ladder_from_its_end, insert_nodes, new_profile, node_rows, user_pk


def _content(engine) -> list[tuple[str, str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT uuid, node_type, label FROM db_dbnode ORDER BY id")).all()
    return [(str(row[0]).replace("-", ""), row[1], row[2]) for row in rows]


def test_backup_restore_round_trip(backend: SqlaBackend, dialect: str, tmp_path: Path, request: pytest.FixtureRequest):
    build_graph(backend, 300, seed=2)
    first = backup(backend.profile, tmp_path / "backups")
    second = backup(backend.profile, tmp_path / "backups", keep=1)
    assert list_backups(tmp_path / "backups") == [second]
    assert not first.exists()
    assert (tmp_path / "backups" / LAST_BACKUP_LINK).resolve() == second.resolve()
    manifest = json.loads((second / MANIFEST_NAME).read_text())
    assert manifest["dialect"] == dialect and manifest["counts"]["nodes"] == 300
    verify_backup(second)
    target = new_profile(dialect, tmp_path, request)
    restore(second, target)
    restored = aiida_sqla_plugin.session.get_engine(target)
    assert count_entities(restored) == count_entities(backend.engine)
    assert _content(restored) == _content(backend.engine)
    with pytest.raises(BackupError, match="not empty|exists"):
        restore(second, target)


def test_tampered_and_incomplete_backups_are_refused(backend: SqlaBackend, dialect: str, tmp_path: Path, request: pytest.FixtureRequest):
    build_graph(backend, 50, seed=1)
    folder = backup(backend.profile, tmp_path / "backups")
    data = next(path for path in folder.iterdir() if path.name != MANIFEST_NAME)
    with data.open("r+b") as handle:
        handle.seek(data.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BackupError, match="sha256"):
        verify_backup(folder)
    target = new_profile(dialect, tmp_path, request)
    with pytest.raises(BackupError, match="sha256"):
        restore(folder, target)
    # what an interrupted backup leaves (a temporary folder without manifest) is neither listed nor accepted
    partial = tmp_path / "backups" / ".tmp-20260101T000000000000Z-1"
    partial.mkdir()
    assert list_backups(tmp_path / "backups") == [folder]
    with pytest.raises(BackupError, match="not a finished backup"):
        verify_backup(partial)


def test_clean_graph_has_no_findings(backend: SqlaBackend):
    build_graph(backend, 400, seed=5)
    install_tc(backend.get_session())
    assert check_integrity(backend) == []


def _raw(backend: SqlaBackend, statements: list[str]) -> None:
    """Run statements with foreign keys / triggers off, as a damaged or foreign-written database would have it."""
    backend.close()  # end the session's read transaction, so that later checks see the seeded rows
    backend.engine.dispose()
    if backend.engine.dialect.name == "sqlite":
        raw = sqlite3.connect(backend.engine.url.database, isolation_level=None)
        try:
            raw.execute("PRAGMA foreign_keys=OFF")
            for statement in statements:
                raw.execute(statement)
        finally:
            raw.close()
        return
    with backend.engine.connect() as connection:
        connection.exec_driver_sql("SET session_replication_role = replica")
        for statement in statements:
            connection.exec_driver_sql(statement)
        connection.commit()
    backend.engine.dispose()


def test_every_seeded_violation_is_found_exactly(backend: SqlaBackend, user):
    calc, work, data, other = "process.calculation.calcjob.CalcJobNode.", "process.workflow.workchain.WorkChainNode.", "data.core.int.Int.", "weird.Node."
    node_types = {1: calc, 2: work, 3: data, 4: data, 5: calc, 6: other, 7: calc, 8: work, 9: data, 10: data}
    same = uuid.uuid4()
    rows = []
    for pk, node_type in node_types.items():
        sqlite = backend.engine.dialect.name == "sqlite"
        value = same if pk in (9, 10) and sqlite else uuid.uuid4()
        text_uuid = (value.hex.upper() if pk == 10 else value.hex) if sqlite else str(value)
        rows.append(
            f"INSERT INTO db_dbnode (id, uuid, node_type, label, description, ctime, mtime, attributes, extras, repository_metadata, user_id) "
            f"VALUES ({pk}, '{text_uuid}', '{node_type}', '', '', '2024-01-01 00:00:00+00:00', '2024-01-01 00:00:00+00:00', '{{}}', '{{}}', '{{}}', {user.id})"
        )
    links = [
        (1, 2, "call_work"),  # calculation with outgoing CALL (also an invalid link type)
        (2, 3, "create"),  # workflow with outgoing CREATE (invalid too)
        (1, 4, "create"), (5, 4, "create"),  # data 4 with two creators (valid links)
        (8, 7, "call_calc"), (2, 7, "call_calc"),  # process 7 with two callers (valid links)
        (3, 999, "input_calc"),  # dangling
    ]
    rows += [
        f"INSERT INTO db_dblink (id, input_id, output_id, label, type) VALUES ({100 + index}, {source}, {target}, 'x', '{kind}')"
        for index, (source, target, kind) in enumerate(links)
    ]
    rows += [
        "INSERT INTO db_dbgroup (id, uuid, label, type_string, time, description, extras, user_id) "
        f"VALUES (1, '{uuid.uuid4().hex}', 'g', 'core', '2024-01-01 00:00:00+00:00', '', '{{}}', {user.id})",
        "INSERT INTO db_dbgroup_dbnodes (id, dbnode_id, dbgroup_id) VALUES (1, 3, 1), (2, 998, 1), (3, 3, 77)",
        f"INSERT INTO db_dbcomment (id, uuid, dbnode_id, ctime, mtime, user_id, content) VALUES (1, '{uuid.uuid4().hex}', 997, "
        f"'2024-01-01 00:00:00+00:00', '2024-01-01 00:00:00+00:00', {user.id}, 'c')",
        f"INSERT INTO db_dblog (id, uuid, time, loggername, levelname, dbnode_id, message, metadata) VALUES (1, '{uuid.uuid4().hex}', "
        "'2024-01-01 00:00:00+00:00', 'l', 'INFO', 996, 'm', '{}')",
    ]
    _raw(backend, rows)
    found = {finding.kind: (finding.count, finding.examples) for finding in check_integrity(backend)}
    if backend.engine.dialect.name == "postgresql":  # a native uuid column with its unique constraint: no duplicates
        found["duplicate_uuid"] = (2, [9, 10])
    assert found == {
        "calculation_with_outgoing_call_or_return": (1, [1]),
        "workflow_with_outgoing_create": (1, [2]),
        "data_with_multiple_creators": (1, [4]),
        "process_with_multiple_callers": (1, [7]),
        "invalid_link_type": (2, [100, 101]),
        "unknown_node_type": (1, [6]),
        "duplicate_uuid": (2, [9, 10]),
        "dangling_link": (1, [106]),
        "dangling_group_member": (2, [2, 3]),
        "dangling_comment": (1, [1]),
        "dangling_log": (1, [1]),
    }


def test_closure_audit_catches_a_changed_path_count_and_fix_rebuilds(backend: SqlaBackend):
    build_graph(backend, 200, seed=4)
    install_tc(backend.get_session())
    _raw(backend, ["UPDATE db_dbpath SET path_count = path_count + 1 WHERE parent_id = (SELECT min(parent_id) FROM db_dbpath)"])
    findings = check_integrity(backend)
    assert [finding.kind for finding in findings] == ["closure_mismatch"]
    assert findings[0].count >= 2  # the wrong row, and the right one missing
    assert check_integrity(backend, fix=True)
    assert check_integrity(backend) == []


def test_schema_difference_is_found(backend: SqlaBackend):
    _raw(backend, ["CREATE TABLE stray (id integer PRIMARY KEY)"])
    assert [finding.kind for finding in check_integrity(backend)] == ["schema_differs"]


def test_layout_differences_alembic_does_not_see_are_found(backend: SqlaBackend, dialect: str):
    """A missing creation-day index or statistics, a closure key in the wrong order, a SQLite closure with rowids."""
    create, drop = CREATION_DAY_DDL[dialect]
    _raw(backend, [drop])
    (finding,) = check_integrity(backend)
    assert finding.kind == "schema_differs" and f"creation-day {'index' if dialect == 'sqlite' else 'statistics'}" in finding.description
    _raw(backend, [create])
    assert check_integrity(backend) == []
    columns = "parent_id INTEGER NOT NULL, child_id INTEGER NOT NULL, path_count BIGINT NOT NULL"
    if dialect == "sqlite":
        _raw(backend, ["DROP TABLE db_dbpath", f"CREATE TABLE db_dbpath ({columns}, PRIMARY KEY (child_id, parent_id))",
                       "CREATE INDEX ix_db_dbpath_parent_id_child_id ON db_dbpath (parent_id, child_id)"])
        expected = "db_dbpath is not a WITHOUT ROWID table"
    else:
        _raw(backend, ["ALTER TABLE db_dbpath DROP CONSTRAINT db_dbpath_pkey",
                       "ALTER TABLE db_dbpath ADD CONSTRAINT db_dbpath_pkey PRIMARY KEY (parent_id, child_id)"])
        expected = "primary key of db_dbpath is ['parent_id', 'child_id'], not ['child_id', 'parent_id']"
    (finding,) = check_integrity(backend)
    assert finding.kind == "schema_differs" and finding.count == 1 and expected in finding.description


def test_maintain_full_reclaims_space_after_deleting_half(backend: SqlaBackend):
    graph = build_graph(backend, 4000, seed=6)
    with backend.engine.begin() as connection:
        half = graph.node_ids[: len(graph.node_ids) // 2]
        connection.exec_driver_sql(f"DELETE FROM db_dblink WHERE input_id <= {half[-1]} OR output_id <= {half[-1]}")
        connection.exec_driver_sql(f"DELETE FROM db_dbnode WHERE id <= {half[-1]}")
    if backend.engine.dialect.name == "postgresql":
        import time

        time.sleep(1.5)  # the cumulative statistics (dead tuples) are flushed about once a second
    estimate = maintain(backend, full=True, dry_run=True)
    assert estimate.dry_run and estimate.bytes_reclaimed > 0 and estimate.size_after == estimate.size_before
    done = maintain(backend, full=True)
    assert done.bytes_reclaimed > 0 and done.size_after < done.size_before
    assert maintain(backend).bytes_reclaimed >= 0
    assert count_entities(backend.engine)["nodes"] == 2000


def test_maintain_full_rewrites_the_closure_in_its_key_order(backend: SqlaBackend, user: object):
    install_tc(backend.get_session())
    backend.close()
    with backend.engine.begin() as connection:
        ids = insert_nodes(connection, node_rows(user_pk(backend), 60))
        insert_ladder_from_its_end(connection, ids)
        before = closure(connection)
    with backend.engine.connect() as connection:
        assert closure_layout(connection)["clustered"] == (backend.engine.dialect.name == "sqlite")
    report = maintain(backend, full=True)
    assert any(action.startswith("CLUSTER db_dbpath") for action in report.actions) == (backend.engine.dialect.name == "postgresql")
    with backend.engine.connect() as connection:
        assert closure(connection) == before and closure_layout(connection)["clustered"]


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_backup_verify_restore_integrity_maintain(backend: SqlaBackend, dialect: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    from click.testing import CliRunner

    from aiida_sqla_plugin.cli import cli
    from aiida_sqla_plugin.config import CONFIG_DIR_ENV, ConfigFile

    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    build_graph(backend, 100, seed=3)
    config = ConfigFile()
    config.add_profile(aiida_sqla_plugin.Profile("work", "sqlalchemy", dict(backend.profile.storage_config)), make_default=True)
    config.add_profile(new_profile(dialect, tmp_path, request))

    def invoke(*args: str, code: int = 0):
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    invoke("storage", "backup", str(tmp_path / "b"), "--keep", "2")
    last = tmp_path / "b" / LAST_BACKUP_LINK
    assert "matches its manifest" in invoke("storage", "backup", "--verify", str(last)).output
    invoke("storage", "backup", code=2)
    invoke("storage", "restore", str(last), "--to", "restored")
    invoke("storage", "restore", str(last), "--to", "restored", code=1)
    assert json.loads(invoke("storage", "integrity", "--json").output) == {"clean": True, "findings": []}
    assert json.loads(invoke("-p", "restored", "storage", "integrity", "--json").output)["clean"]
    _raw(backend, ["UPDATE db_dbnode SET node_type = 'weird.' WHERE id = (SELECT min(id) FROM db_dbnode)"])
    assert "unknown_node_type: 1" in invoke("storage", "integrity", code=1).output
    report = json.loads(invoke("storage", "maintain", "--dry-run", "--json").output)
    assert report["dry_run"] is True
    assert "reclaimed" in invoke("storage", "maintain", "--full").output


# ---------------------------------------------------------------------------------------------------- writers

_WRITER = """
import sys, time
import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.models import DbLink, DbNode
profile = aiida_sqla_plugin.Profile("w", "sqlalchemy", {"url": sys.argv[1]})
aiida_sqla_plugin.reset_session(profile)
backend = SqlaBackend(profile)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    # one transaction: a calculation, its input and its output with both links, never half of it
    try:
        data, calc, out = backend.bulk_insert(DbNode, [
            {"node_type": "data.core.int.Int.", "user_id": 1},
            {"node_type": "process.calculation.calcjob.CalcJobNode.", "user_id": 1},
            {"node_type": "data.core.int.Int.", "user_id": 1},
        ])
    except Exception as error:
        print("writer:", error, file=sys.stderr)
        time.sleep(0.05)
        continue
    try:
        backend.bulk_insert(DbLink, [{"input_id": data, "output_id": calc, "label": "x", "type": "input_calc"},
                                     {"input_id": calc, "output_id": out, "label": "y", "type": "create"}])
    except Exception:
        time.sleep(0.05)
"""


@pytest.mark.slow
def test_backup_while_four_writers_run(backend: SqlaBackend, user, dialect: str, tmp_path: Path, request: pytest.FixtureRequest):
    import subprocess
    import sys
    import time

    url = backend.profile.storage_config["url"]
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, url, "10"]) for _ in range(4)]
    try:
        deadline = time.monotonic() + 60
        while count_entities(backend.engine)["nodes"] < 30 and time.monotonic() < deadline:
            time.sleep(0.2)  # the writers have started
        before = count_entities(backend.engine)["nodes"]
        folder = backup(backend.profile, tmp_path / "b")
    finally:
        for writer in writers:
            writer.wait(timeout=120)
    after = count_entities(backend.engine)["nodes"]
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert before <= manifest["counts"]["nodes"] <= after
    assert before > 0 and after > manifest["counts"]["nodes"]  # the writers went on during and after the backup
    target = new_profile(dialect, tmp_path, request)
    restore(folder, target)
    restored = SqlaBackend(target)
    assert count_entities(restored.engine) == manifest["counts"]
    assert check_integrity(restored) == []
    # consistent: node triples were committed whole (each bulk_insert is one transaction)
    assert manifest["counts"]["nodes"] % 3 == 0


def test_killed_backup_leaves_nothing_that_looks_complete(backend: SqlaBackend, tmp_path: Path):
    import signal
    import socket
    import subprocess
    import sys
    import time

    build_graph(backend, 3000, seed=1)
    script = (
        "import sys, aiida_sqla_plugin\n"
        "from aiida_sqla_plugin.maintenance import backup\n"
        "backup(aiida_sqla_plugin.Profile('k', 'sqlalchemy', {'url': sys.argv[1]}), sys.argv[2])\n"
    )
    dest = tmp_path / "b"
    process = subprocess.Popen([sys.executable, "-c", script, backend.profile.storage_config["url"], str(dest)])
    deadline = time.monotonic() + 60
    while not (dest.is_dir() and any(path.name.startswith(".tmp-") for path in dest.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, "the backup did not start (or finished at once)"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list_backups(dest) == []
    assert not (dest / LAST_BACKUP_LINK).exists()
    (abandoned,) = [path for path in dest.iterdir() if path.name.startswith(".tmp-")]
    elsewhere = dest / f".tmp-20260101T000000Z@not-{socket.gethostname()}@{process.pid}"
    running = dest / f".tmp-20260101T000000Z@{socket.gethostname()}@{os.getpid()}"
    elsewhere.mkdir()
    running.mkdir()
    finished = backup(backend.profile, dest)  # the next backup clears what the killed one left
    assert list_backups(dest) == [finished]
    assert not abandoned.exists()
    assert elsewhere.is_dir() and running.is_dir()  # another host's, or a live process's: maybe still in progress


def test_an_older_pg_dump_is_refused_naming_the_package(backend: SqlaBackend, dialect: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    if dialect != "postgresql":
        pytest.skip("pg_dump is used for PostgreSQL only")
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(BackupError, match=r"postgresql-client-\d+"):
        backup(backend.profile, tmp_path / "b")
    assert list_backups(tmp_path / "b") == [] and not any((tmp_path / "b").iterdir())
