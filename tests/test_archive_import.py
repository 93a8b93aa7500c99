"""Importing AiiDA archives (zip layout main_0000/main_0001) on both dialects, against what the archives hold."""
from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile
import uuid as uuid_module
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

import aiida_sqla_plugin
from aiida_sqla_plugin.archive import (
    InvalidArchiveEntry,
    UnsupportedArchive,
    export_archive,
    import_archive,
)
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.models import (
    DbAuthInfo,
    DbComment,
    DbComputer,
    DbGroup,
    DbGroupNode,
    DbLink,
    DbLog,
    DbNode,
    DbUser,
)
from aiida_sqla_plugin.objectstore import object_store_for
from aiida_sqla_plugin.synthetic import build_graph
from helpers import SHARED_ARCHIVES, create_postgres_database, drop_postgres_database

ARCHIVES = SHARED_ARCHIVES
ZIP_ARCHIVES = ("export_main_0000_simple.aiida", "export_main_0001_simple.aiida", "arithmetic.add.aiida")
MODELS = (DbUser, DbComputer, DbAuthInfo, DbNode, DbLink, DbGroup, DbGroupNode, DbComment, DbLog)

pytestmark = pytest.mark.skipif(not ARCHIVES.is_dir(), reason=f"the shared sample archives are not at {ARCHIVES}")


def _with_store(backend: SqlaBackend, folder: Path) -> SqlaBackend:
    """The same database with its object store in ``folder`` (tests never share the default user data folder)."""
    profile = aiida_sqla_plugin.Profile(
        name=backend.profile.name, storage_config={**backend.profile.storage_config, "repository": str(folder)}
    )
    return SqlaBackend(profile)


@pytest.fixture
def target(backend: SqlaBackend, tmp_path: Path) -> SqlaBackend:
    """A migrated, empty profile whose object store is in the test's folder."""
    return _with_store(backend, tmp_path / "objects")


def _counts(backend: SqlaBackend) -> dict[str, int]:
    with backend.transaction() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model)) for model in MODELS}


def _state(backend: SqlaBackend) -> tuple[dict[str, int], list[str]]:
    return _counts(backend), sorted(object_store_for(backend).keys())


class ArchiveDb:
    """An archive's ``db.sqlite3`` read directly with sqlite3, independently of the importer."""

    def __init__(self, archive: Path, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extract("db.sqlite3", folder)
            self.objects = {name[5:]: zipped.read(name) for name in zipped.namelist() if name.startswith("repo/") and len(name) > 5}
        self.db = sqlite3.connect(folder / "db.sqlite3")

    def count(self, table: str) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def links(self) -> Counter[str]:
        return Counter(dict(self.db.execute("SELECT type, count(*) FROM db_dblink GROUP BY type").fetchall()))

    def nodes(self) -> dict[str, tuple[Any, Any]]:
        rows = self.db.execute("SELECT uuid, attributes, extras FROM db_dbnode").fetchall()
        return {uuid: (json.loads(a) if a else a, json.loads(e) if e else e) for uuid, a, e in rows}


def _rezip(source: Path, destination: Path, change: Callable[[sqlite3.Connection], None], metadata: dict[str, Any] | None = None,
           corrupt: str | None = None) -> Path:
    """A copy of the archive ``source`` whose database ``change`` modified (and object ``corrupt`` altered)."""
    work = destination.parent / (destination.name + ".work")
    work.mkdir()
    with zipfile.ZipFile(source) as zipped:
        zipped.extract("db.sqlite3", work)
        entries = [(info, zipped.read(info)) for info in zipped.infolist() if info.filename not in ("db.sqlite3", "metadata.json")]
        meta = metadata if metadata is not None else json.loads(zipped.read("metadata.json"))
    db = sqlite3.connect(work / "db.sqlite3")
    change(db)
    db.commit()
    db.close()
    with zipfile.ZipFile(destination, "w") as out:
        out.writestr("metadata.json", json.dumps(meta))
        out.write(work / "db.sqlite3", "db.sqlite3")
        for info, data in entries:
            out.writestr(info, data + b"!" if info.filename == f"repo/{corrupt}" else data)
    return destination


@pytest.mark.parametrize("name", ZIP_ARCHIVES)
def test_import_holds_what_the_archive_holds(target: SqlaBackend, tmp_path: Path, name: str) -> None:
    archive = ARCHIVES / name
    expected = ArchiveDb(archive, tmp_path / "expected")
    result = import_archive(archive, target)
    assert result.version == json.loads(zipfile.ZipFile(archive).read("metadata.json"))["export_version"]
    counts = _counts(target)
    for table in ("db_dbuser", "db_dbcomputer", "db_dbauthinfo", "db_dbnode", "db_dblink", "db_dbgroup",
                  "db_dbgroup_dbnodes", "db_dbcomment", "db_dblog"):
        assert counts[table] == expected.count(table), table
    assert result.counts["nodes"] == {"new": expected.count("db_dbnode"), "present": 0, "skipped": 0}
    assert counts["db_dbnode"] == (7 if name.startswith("arithmetic") else 10)  # what aiida-core 2.9.4 imports
    with target.transaction() as session:
        links = Counter(dict(session.execute(select(DbLink.type, func.count()).group_by(DbLink.type)).all()))
        assert links == expected.links()
        stored = {str(node.uuid): (node.attributes, node.extras) for node in session.scalars(select(DbNode))}
    assert stored == expected.nodes()  # attributes and extras of every node
    store = object_store_for(target)
    assert sorted(store.keys()) == sorted(expected.objects)
    for key, data in expected.objects.items():
        with store.open(key) as handle:
            content = handle.read()
        assert content == data and hashlib.sha256(content).hexdigest() == key

    again = import_archive(archive, target)
    assert not again.changed
    assert again.counts["nodes"] == {"new": 0, "present": counts["db_dbnode"], "skipped": 0}
    assert _counts(target) == counts


def test_group_label_collects_the_imported_nodes(target: SqlaBackend) -> None:
    import_archive(ARCHIVES / "arithmetic.add.aiida", target)
    assert _counts(target)["db_dbgroup"] == 0  # no group unless asked
    result = import_archive(ARCHIVES / "arithmetic.add.aiida", target, group_label="from archive")
    assert result.counts["groups"]["new"] == 1 and result.counts["group_nodes"]["new"] == 7
    with target.transaction() as session:
        group = session.scalars(select(DbGroup)).one()
        assert (group.label, group.type_string) == ("from archive", "core.import")
        assert session.scalar(select(func.count()).select_from(DbGroupNode).where(DbGroupNode.dbgroup_id == group.id)) == 7
    assert not import_archive(ARCHIVES / "arithmetic.add.aiida", target, group_label="from archive").changed


def _refused_files(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    yield ARCHIVES / "empty.aiida", "not a zip"
    tarred = tmp_path / "old.tar.gz"
    with tarfile.open(tarred, "w:gz") as tar:
        data = json.dumps({"export_version": "0.4"}).encode()
        info = tarfile.TarInfo("metadata.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    yield tarred, "not a zip"
    no_metadata = tmp_path / "no-metadata.aiida"
    with zipfile.ZipFile(no_metadata, "w") as out:
        out.writestr("data.json", "{}")
    yield no_metadata, "no metadata.json"
    for version in ("0.2", "0.3", "main_0099"):
        unknown = tmp_path / f"v{version}.aiida"
        with zipfile.ZipFile(unknown, "w") as out:
            out.writestr("metadata.json", json.dumps({"export_version": version}))
        yield unknown, repr(version)


def test_refused_files_change_nothing(target: SqlaBackend, tmp_path: Path) -> None:
    import_archive(ARCHIVES / "arithmetic.add.aiida", target)
    before = _state(target)
    for path, found in _refused_files(tmp_path):
        with pytest.raises(UnsupportedArchive, match="supported archive versions are 0.4 to 0.13, main_0000, main_0001") as error:
            import_archive(path, target)
        assert found in str(error.value)
        assert _state(target) == before


def _hostile_value(db: sqlite3.Connection) -> None:
    db.execute("""UPDATE db_dbnode SET attributes = '{"bad": "nul\\u0000here"}' WHERE id = (SELECT max(id) FROM db_dbnode)""")


def _dangling_link(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO db_dblink (id, input_id, output_id, label, type) SELECT 9999, 123456789, max(id), 'x', 'input_calc' FROM db_dbnode")


def test_corrupt_entry_fails_atomically_naming_it(target: SqlaBackend, tmp_path: Path) -> None:
    source = ARCHIVES / "export_main_0001_simple.aiida"
    hostile = _rezip(source, tmp_path / "hostile.aiida", _hostile_value)
    bad_uuid = ArchiveDb(hostile, tmp_path / "h").db.execute("SELECT uuid FROM db_dbnode ORDER BY id DESC LIMIT 1").fetchone()[0]
    before = _state(target)
    with pytest.raises(InvalidArchiveEntry, match=f"node {bad_uuid}.*NUL"):
        import_archive(hostile, target)
    assert _state(target) == before
    dangling = _rezip(source, tmp_path / "dangling.aiida", _dangling_link)
    with pytest.raises(InvalidArchiveEntry, match="link with unknown input node"):
        import_archive(dangling, target)
    assert _state(target) == before == ({model.__tablename__: 0 for model in MODELS}, [])


def test_skip_invalid_imports_the_rest(target: SqlaBackend, tmp_path: Path) -> None:
    source = ARCHIVES / "export_main_0001_simple.aiida"

    def both(db: sqlite3.Connection) -> None:
        _hostile_value(db)
        _dangling_link(db)

    broken = _rezip(source, tmp_path / "broken.aiida", both)
    result = import_archive(broken, target, skip_invalid=True)
    assert [(s.entity, s.problem.split(" (")[0]) for s in result.skipped][-1] == ("link", "link with unknown input node")
    assert result.counts["nodes"] == {"new": 9, "present": 0, "skipped": 1}
    assert result.counts["links"]["skipped"] >= 1
    counts = _counts(target)
    assert counts["db_dbnode"] == 9
    # Links to the skipped node are skipped too; the others are stored.
    assert counts["db_dblink"] == result.counts["links"]["new"] and 0 < counts["db_dblink"] < 8


def test_dry_run_reports_and_changes_nothing(target: SqlaBackend) -> None:
    archive = ARCHIVES / "export_main_0001_simple.aiida"
    before = _state(target)
    result = import_archive(archive, target, dry_run=True, group_label="g")
    assert result.dry_run and result.counts["nodes"]["new"] == 10 and result.counts["objects"]["new"] == 16
    assert _state(target) == before
    import_archive(archive, target)
    again = import_archive(archive, target, dry_run=True)
    assert again.counts["nodes"] == {"new": 0, "present": 10, "skipped": 0} and not again.changed


def test_null_fields_are_repaired_and_reported(target: SqlaBackend, tmp_path: Path) -> None:
    def nulls(db: sqlite3.Connection) -> None:
        db.execute("UPDATE db_dbnode SET label = NULL, description = NULL, mtime = NULL WHERE id = (SELECT min(id) FROM db_dbnode)")
        db.execute("UPDATE db_dbuser SET first_name = NULL, institution = NULL")
        db.execute("UPDATE db_dbgroup SET type_string = NULL, time = NULL WHERE label = 'testing1'")

    archive = _rezip(ARCHIVES / "export_main_0000_simple.aiida", tmp_path / "nulls.aiida", nulls)
    result = import_archive(archive, target)
    details = {(r.entity, r.detail.split(" was null")[0]) for r in result.repairs}
    assert {("node", "label"), ("node", "description"), ("node", "mtime"), ("user", "first_name"),
            ("user", "institution"), ("group", "type_string"), ("group", "time")} <= details
    with target.transaction() as session:
        user = session.scalars(select(DbUser)).one()
        assert (user.first_name, user.institution) == ("", "")
        group = session.scalars(select(DbGroup).where(DbGroup.label == "testing1")).one()
        assert group.type_string == "core" and group.time is not None
        assert session.scalar(select(func.count()).select_from(DbNode).where(DbNode.label == "", DbNode.description == "")) >= 1


def test_members_not_in_the_archive_are_dropped_with_a_repair(target: SqlaBackend, tmp_path: Path) -> None:
    def members(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO db_dbgroup_dbnodes (id, dbnode_id, dbgroup_id) SELECT 1, min(id), 50 FROM db_dbnode")
        db.execute("INSERT INTO db_dbnode (id, uuid, node_type, label, description, ctime, mtime, repository_metadata, user_id) "
                   f"VALUES (99999, '{uuid_module.uuid4()}', 'data.core.int.Int.', '', '', '2020-01-01 00:00:00', '2020-01-01 00:00:00', '{{}}', 1)")
        db.execute("INSERT INTO db_dbgroup_dbnodes (id, dbnode_id, dbgroup_id) VALUES (2, 99999, 50)")
        db.execute("DELETE FROM db_dbnode WHERE id = 99999")

    archive = _rezip(ARCHIVES / "export_main_0001_simple.aiida", tmp_path / "members.aiida", members)
    result = import_archive(archive, target)
    assert result.counts["group_nodes"]["new"] == 1
    dropped = [r for r in result.repairs if r.entity == "group_node"]
    assert len(dropped) == 1 and "not in the archive" in dropped[0].detail
    assert _counts(target)["db_dbgroup_dbnodes"] == 1


def _second_backend(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> SqlaBackend:
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'second.sqlite'}"
    else:
        created = create_postgres_database()
        request.addfinalizer(lambda: drop_postgres_database(created))
        url = created.render_as_string(hide_password=False)
    profile = aiida_sqla_plugin.Profile(name=f"second-{dialect}", storage_config={"url": url, "repository": str(tmp_path / "second-objects")})
    SqlaBackendManager(profile).migrate()
    return SqlaBackend(profile)


def _graph(backend: SqlaBackend) -> tuple[set[Any], set[Any]]:
    with backend.transaction() as session:
        nodes = {(str(n.uuid), n.node_type, n.label, n.ctime, n.attributes == n.attributes) for n in session.scalars(select(DbNode))}
        uuid_of = dict(session.execute(select(DbNode.id, DbNode.uuid)).all())
        links = {(str(uuid_of[l.input_id]), str(uuid_of[l.output_id]), l.type, l.label) for l in session.scalars(select(DbLink))}
    return nodes, links


def test_export_then_import_gives_the_same_graph(target: SqlaBackend, dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    build_graph(target, 300, seed=3)
    exported = export_archive(tmp_path / "all.aiida", all=True, backend=target)
    second = _second_backend(dialect, tmp_path, request)
    result = import_archive(exported.path, second, batch_size=64)  # several batches per entity
    assert result.counts["nodes"]["new"] == 300
    assert _graph(second) == _graph(target)
    assert _counts(second) == _counts(target)
    assert not import_archive(exported.path, second, batch_size=64).changed


def test_cli_import_and_export(database_url: Any, dialect: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from aiida_sqla_plugin.cli import cli
    from aiida_sqla_plugin.config import CONFIG_DIR_ENV, DATA_DIR_ENV

    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))

    def invoke(*args: str, code: int = 0) -> Any:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.stdout + result.stderr
        return result

    invoke("profile", "create", "p", "--url", database_url.render_as_string(hide_password=False))
    invoke("storage", "migrate", "--force")
    archive = str(ARCHIVES / "export_main_0001_simple.aiida")
    dry = json.loads(invoke("archive", "import", archive, "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["counts"]["nodes"]["new"] == 10
    text = invoke("archive", "import", archive, "--group", "imported").stdout
    assert "nodes        10 new, 0 already present" in text
    assert "Nothing new" in invoke("archive", "import", archive).stdout
    backend = SqlaBackend(aiida_sqla_plugin.Profile(name="p", storage_config={"url": database_url.render_as_string(hide_password=False)}))
    assert _counts(backend)["db_dbnode"] == 10
    assert len(list(object_store_for(backend).keys())) == 16
    refused = invoke("archive", "import", str(ARCHIVES / "empty.aiida"), code=15)
    assert "supported archive versions" in refused.stderr and "Traceback" not in refused.stderr
    exported = json.loads(invoke("archive", "export", str(tmp_path / "out.aiida"), "--groups", "imported", "--json").stdout)
    assert exported["counts"]["db_dbnode"] == 10 and exported["objects"] == 16


def test_corrupt_object_fails_atomically(target: SqlaBackend, tmp_path: Path) -> None:
    source = ARCHIVES / "export_main_0001_simple.aiida"
    keys = sorted(ArchiveDb(source, tmp_path / "x").objects)
    archive = _rezip(source, tmp_path / "corrupt.aiida", lambda db: None, corrupt=keys[-1])
    before = _state(target)
    with pytest.raises(InvalidArchiveEntry, match=f"object {keys[-1]}.*corrupt"):
        import_archive(archive, target)
    assert _state(target) == before  # the objects written before the bad one are removed again
    result = import_archive(archive, target, skip_invalid=True)
    assert result.counts["objects"] == {"new": len(keys) - 1, "present": 0, "skipped": 1}
    assert sorted(object_store_for(target).keys()) == keys[:-1]


def test_no_objects(target: SqlaBackend) -> None:
    result = import_archive(ARCHIVES / "export_main_0001_simple.aiida", target, objects=False)
    assert result.counts["nodes"]["new"] == 10 and result.counts["objects"]["new"] == 0
    assert list(object_store_for(target).keys()) == []
