"""The legacy JSON archive reader (0.4 to 0.13): every shared AiiDA archive read into today's records."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import tracemalloc
import uuid as uuid_module
import zipfile
from pathlib import Path
from typing import Any

import pytest

from sqlalchemy import func, select

from aiida_sqla_plugin.archive import import_archive
from aiida_sqla_plugin.archive._legacy import LEGACY_VERSIONS, open_legacy
from aiida_sqla_plugin.archive._source import ArchiveSource, InvalidArchiveEntry, UnsupportedArchive
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.links import LINK_TYPES
from aiida_sqla_plugin.models import DbGroup, DbGroupNode, DbLink, DbNode, DbUser
from aiida_sqla_plugin.objectstore import object_store_for
from helpers import SHARED_ARCHIVES
from test_archive_export import aiida_python  # noqa: F401 (the fixture)
from test_archive_import import _counts, target  # noqa: F401 (the fixture)

ARCHIVES = SHARED_ARCHIVES
needs_archives = pytest.mark.skipif(not ARCHIVES.is_dir(), reason=f"the shared AiiDA archives are not at {ARCHIVES}")
CHECK_SCRIPT = Path(__file__).with_name("aiida_legacy_check.py")
SIMPLE = [f"export_{version}_simple.aiida" for version in ("0.4", "0.9", "0.10", "0.11", "0.12", "0.13")]
LEGACY = [*SIMPLE, "0.10_dangling_link.aiida", "0.10_null_fields.aiida", "0.10_unknown_nodes_in_group.aiida"]

# What each archive holds (counted independently from data.json in ``test_counts_match_data_json``) and what
# aiida-core 2.9.4 imports from it (ARCHIVES/README.md): nodes, links, groups, members, users, computers.
EXPECTED = {
    **{name: (10, 8, 4, 0, 1, 1) for name in SIMPLE},
    "0.10_dangling_link.aiida": (1, 1, 0, 0, 1, 0),
    "0.10_null_fields.aiida": (1, 0, 1, 0, 1, 0),
    "0.10_unknown_nodes_in_group.aiida": (1, 0, 1, 3, 1, 0),
}
# aiida-core's node types of today (node_type strings after its 0.11 -> 0.12 migration).
TODAY_NODE_TYPES = {
    "data.core.array.ArrayData.", "data.core.array.kpoints.KpointsData.", "data.core.code.Code.",
    "data.core.dict.Dict.", "data.core.folder.FolderData.", "data.core.remote.RemoteData.",
    "data.core.structure.StructureData.", "process.calculation.calcjob.CalcJobNode.",
}


def open_archive(path: Path) -> ArchiveSource:
    archive = zipfile.ZipFile(path)
    return open_legacy(archive, json.loads(archive.read("metadata.json")))


def read_all(name: str) -> dict[str, list[Any]]:
    source = open_archive(ARCHIVES / name)
    try:
        return {
            entity: list(getattr(source, entity)())
            for entity in ("nodes", "links", "groups", "group_nodes", "users", "computers", "comments", "logs",
                           "authinfos")
        } | {"objects": [(key, opener().read()) for key, opener in source.objects()]}
    finally:
        source.close()


@pytest.fixture(scope="module")
def records() -> dict[str, dict[str, list[Any]]]:
    if not ARCHIVES.is_dir():
        pytest.skip(f"the shared AiiDA archives are not at {ARCHIVES}")
    return {name: read_all(name) for name in LEGACY}


@pytest.mark.parametrize("name", LEGACY)
def test_counts(records: dict[str, dict[str, list[Any]]], name: str) -> None:
    got = records[name]
    counts = tuple(len(got[entity]) for entity in ("nodes", "links", "groups", "group_nodes", "users", "computers"))
    assert counts == EXPECTED[name]
    assert got["comments"] == got["logs"] == got["authinfos"] == []


@needs_archives
@pytest.mark.parametrize("name", LEGACY)
def test_counts_match_data_json(name: str) -> None:
    """The expected counts are what data.json lists (read whole here: the samples are small)."""
    with zipfile.ZipFile(ARCHIVES / name) as archive:
        data = json.loads(archive.read("data.json"))
    entities = data["export_data"]
    counts = (
        len(entities.get("Node", {})), len(data["links_uuid"]), len(entities.get("Group", {})),
        sum(len(members) for members in data["groups_uuid"].values()), len(entities.get("User", {})),
        len(entities.get("Computer", {})),
    )
    assert counts == EXPECTED[name]


@pytest.mark.parametrize("name", LEGACY)
def test_types_and_times_are_todays(records: dict[str, dict[str, list[Any]]], name: str) -> None:
    got = records[name]
    assert {link["type"] for link in got["links"]} <= set(LINK_TYPES)
    assert {node["node_type"] for node in got["nodes"]} <= TODAY_NODE_TYPES
    times = [node[field] for node in got["nodes"] for field in ("ctime", "mtime")]
    times += [group["time"] for group in got["groups"]]
    for moment in times:
        assert moment is None or (isinstance(moment, datetime.datetime) and moment.utcoffset() is not None)
    for computer in got["computers"]:
        assert computer["scheduler_type"].startswith("core.") and computer["transport_type"].startswith("core.")


def test_simple_archives_give_the_same_graph(records: dict[str, dict[str, list[Any]]]) -> None:
    def graph(name: str) -> tuple[Any, ...]:
        got = records[name]
        nodes = {
            node["uuid"]: (node["node_type"], node["process_type"], node["repository_metadata"], node["attributes"],
                           node["ctime"], node["user_email"], node["computer_uuid"])
            for node in got["nodes"]
        }
        links = sorted((link["input_uuid"], link["output_uuid"], link["type"], link["label"]) for link in got["links"])
        groups = sorted((group["label"], group["type_string"]) for group in got["groups"])
        computers = [(c["uuid"], c["label"], c["scheduler_type"], c["transport_type"]) for c in got["computers"]]
        return nodes, links, groups, computers, sorted(key for key, _ in got["objects"])

    newest = graph("export_0.13_simple.aiida")
    for name in SIMPLE:
        assert graph(name) == newest, name
    nodes, links, groups, computers, keys = newest
    assert len(keys) == 16
    assert groups == [("testing1", "core"), ("testing2", "core.upf"), ("testing3", "core.import"),
                      ("testing4", "core.auto")]
    assert computers == [("4f33c6fd-b624-47df-9ffb-a58f05d323af", "bellatrix", "core.slurm", "core.ssh")]
    calcjob = nodes["3b429fd4-601c-4473-add5-7cbb76cf38cb"]
    assert calcjob[0] == "process.calculation.calcjob.CalcJobNode."
    assert calcjob[3]["sealed"] is True
    # raw_input/ and path/ are merged into one tree, folders nested.
    assert set(calcjob[2]["o"]) >= {".aiida", "aiida.in", "_aiidasubmit.sh", "out", "pseudo"}
    assert set(calcjob[2]["o"][".aiida"]["o"]) == {"calcinfo.json", "job_tmpl.json"}


def test_objects_are_hashed_and_referenced(records: dict[str, dict[str, list[Any]]]) -> None:
    got = records["export_0.9_simple.aiida"]
    objects = dict(got["objects"])
    assert len(objects) == len(got["objects"])
    for key, content in objects.items():
        assert hashlib.sha256(content).hexdigest() == key

    def keys(tree: dict[str, Any]) -> set[str]:
        return {child["k"] for child in tree.get("o", {}).values() if "k" in child} | {
            key for child in tree.get("o", {}).values() if "o" in child for key in keys(child)}

    assert set(objects) == {key for node in got["nodes"] for key in keys(node["repository_metadata"])}


def test_null_fields_stay_none(records: dict[str, dict[str, list[Any]]]) -> None:
    got = records["0.10_null_fields.aiida"]
    (node,) = got["nodes"]
    assert [node[field] for field in ("ctime", "mtime", "label", "description", "process_type", "computer_uuid")] \
        == [None] * 6
    assert node["repository_metadata"] == {}
    (user,) = got["users"]
    assert (user["first_name"], user["last_name"], user["institution"]) == (None, None, None)
    (group,) = got["groups"]
    assert (group["time"], group["type_string"], group["description"]) == (None, None, None)


def test_unknown_members_and_dangling_links_pass_through(records: dict[str, dict[str, list[Any]]]) -> None:
    members = [member["node_uuid"] for member in records["0.10_unknown_nodes_in_group.aiida"]["group_nodes"]]
    assert members == [None, "unknown", "a36001a4-fdad-4f0d-86c3-4373a5b88c6b"]
    (link,) = records["0.10_dangling_link.aiida"]["links"]
    assert link["input_uuid"] not in {node["uuid"] for node in records["0.10_dangling_link.aiida"]["nodes"]}


# ------------------------------------------------------------------------------------------ made-up archives


def write_archive(path: Path, version: str, data: str | dict[str, Any], files: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"export_version": version}))
        archive.writestr("data.json", data if isinstance(data, str) else json.dumps(data))
        for name, content in (files or {}).items():
            archive.writestr(name, content)
    return path


def legacy_data(node: dict[str, Any], attributes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    fields = {"uuid": "A36001A4-FDAD-4F0D-86C3-4373A5B88C6B", "node_type": "data.int.Int.", "process_type": None,
              "label": "x", "description": "", "ctime": "2020-01-02T03:04:05.000006", "mtime": None, "user": 1,
              "dbcomputer": None} | node
    return {
        "export_data": {"Node": {"7": fields}, "User": {"1": {"email": "a@b.c"}}},
        "node_attributes": {"7": attributes}, "node_extras": {"7": {}}, "links_uuid": [], "groups_uuid": {},
    } | extra


@pytest.mark.parametrize("version", ["0.3", "0.14", None, "main_0001"])
def test_unsupported_version_is_refused(tmp_path: Path, version: str | None) -> None:
    path = write_archive(tmp_path / "old.aiida", str(version), legacy_data({}, {}))
    with zipfile.ZipFile(path) as archive, pytest.raises(UnsupportedArchive, match="0.4, 0.5"):
        open_legacy(archive, {"export_version": version})
    assert LEGACY_VERSIONS[0] == "0.4" and LEGACY_VERSIONS[-1] == "0.13" and len(LEGACY_VERSIONS) == 10


def test_missing_data_json_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "no-data.aiida", "w") as archive:
        archive.writestr("metadata.json", json.dumps({"export_version": "0.10"}))
    with zipfile.ZipFile(tmp_path / "no-data.aiida") as archive, pytest.raises(UnsupportedArchive, match="data.json"):
        open_legacy(archive, {"export_version": "0.10"})


def test_corrupt_data_json_raises(tmp_path: Path) -> None:
    text = json.dumps(legacy_data({}, {}))
    source = open_archive(write_archive(tmp_path / "corrupt.aiida", "0.10", text[: len(text) // 2]))
    with pytest.raises(InvalidArchiveEntry, match="data.json"):
        list(source.nodes())


def test_unreadable_entries_raise(tmp_path: Path) -> None:
    cases = {
        "bad uuid": legacy_data({"uuid": "not-a-uuid"}, {}),
        "bad time": legacy_data({"ctime": "yesterday"}, {}),
        "no attributes": legacy_data({}, {}, node_attributes={}),
        "old link type": legacy_data({}, {}, links_uuid=[
            {"input": "a36001a4-fdad-4f0d-86c3-4373a5b88c6b", "output": "a36001a4-fdad-4f0d-86c3-4373a5b88c6b",
             "type": "inputlink", "label": "x"}]),
    }
    for case, data in cases.items():
        source = open_archive(write_archive(tmp_path / f"{case}.aiida", "0.10", data))
        with pytest.raises(InvalidArchiveEntry):
            list(source.nodes())
            list(source.links())
        source.close()


def test_comments_logs_and_unresolved_references(tmp_path: Path) -> None:
    """Comments and logs refer to their node by pk; a pk the archive lacks becomes None for the importer to judge."""
    data = legacy_data({"user": 99, "dbcomputer": 5}, {})
    data["export_data"] |= {
        "Comment": {"1": {"uuid": "bde385c0-c1d5-4c6e-95db-b1b26026c7fc", "dbnode": 7, "user": 1, "content": "hi",
                          "ctime": "2021-05-06T07:08:09.100000", "mtime": None},
                    "2": {"uuid": "bde385c0-c1d5-4c6e-95db-b1b26026c7fd", "dbnode": 8, "user": 2, "content": None,
                          "ctime": None, "mtime": None}},
        "Log": {"3": {"uuid": "4f33c6fd-b624-47df-9ffb-a58f05d323af", "dbnode": 7, "time": "2021-05-06T07:08:09",
                      "loggername": "aiida", "levelname": "REPORT", "message": "m", "metadata": {"a": 1}}},
    }
    source = open_archive(write_archive(tmp_path / "refs.aiida", "0.13", data))
    (node,) = source.nodes()
    assert (node["user_email"], node["computer_uuid"]) == (None, None)
    node_uuid = "a36001a4-fdad-4f0d-86c3-4373a5b88c6b"
    assert [(c["node_uuid"], c["user_email"], c["content"], c["ctime"]) for c in source.comments()] == [
        (node_uuid, "a@b.c", "hi", datetime.datetime(2021, 5, 6, 7, 8, 9, 100000, tzinfo=datetime.timezone.utc)),
        (None, None, None, None),
    ]
    assert list(source.logs()) == [{
        "uuid": "4f33c6fd-b624-47df-9ffb-a58f05d323af", "node_uuid": node_uuid,
        "time": datetime.datetime(2021, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc), "loggername": "aiida",
        "levelname": "REPORT", "message": "m", "metadata": {"a": 1},
    }]
    source.close()


def test_each_version_step_applies_before_its_version(tmp_path: Path) -> None:
    """A 0.4 archive gets every migration step; the same data as 0.13 gets none."""
    node = {"node_type": "process.calculation.calcjob.CalcJobNode.", "process_type": "aiida.calculations:arithmetic.add"}
    attributes = {"state": "FINISHED", "_sealed": True, "_finished": True, "when": "2020-01-01T00:00:00.000000",
                  "parser_name": "arithmetic.add"}
    computer = {"uuid": "4f33c6fd-b624-47df-9ffb-a58f05d323af", "name": "old", "label": "new",
                "scheduler_type": "slurm", "transport_type": "local", "transport_params": {}}
    group = {"uuid": "bde385c0-c1d5-4c6e-95db-b1b26026c7fc", "label": "g", "type_string": "auto.run", "user": 1}
    link = {"input": "a36001a4-fdad-4f0d-86c3-4373a5b88c6b", "output": "a36001a4-fdad-4f0d-86c3-4373a5b88c6b",
            "type": "return", "label": "_return"}
    data = legacy_data(node, attributes, links_uuid=[link], node_attributes_conversion={"7": {"when": "date"}},
                       node_extras_conversion={"7": {}})
    data["export_data"] |= {"Computer": {"1": computer}, "Group": {"1": group}}
    old, new = (open_archive(write_archive(tmp_path / f"{v}.aiida", v, data)) for v in ("0.4", "0.13"))

    (node_old,), (node_new,) = list(old.nodes()), list(new.nodes())
    assert node_old["uuid"] == "a36001a4-fdad-4f0d-86c3-4373a5b88c6b"
    assert node_old["ctime"] == datetime.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)
    assert node_old["attributes"] == {"when": "2020-01-01T00:00:00.000000+00:00", "process_state": "finished",
                                      "exit_status": 0, "process_label": "Legacy JobCalculation", "sealed": True,
                                      "parser_name": "arithmetic.add"}
    assert node_new["attributes"] == attributes
    assert node_old["process_type"] == "aiida.calculations:core.arithmetic.add"
    assert node_new["process_type"] == "aiida.calculations:arithmetic.add"
    assert [(c["label"], c["scheduler_type"], c["transport_type"]) for c in old.computers()] == \
        [("old", "core.slurm", "core.local")]
    assert [(c["label"], c["scheduler_type"], c["transport_type"]) for c in new.computers()] == \
        [("new", "slurm", "local")]
    assert [g["type_string"] for g in old.groups()] == ["core.auto"]
    assert [g["type_string"] for g in new.groups()] == ["auto.run"]
    assert [link["label"] for link in old.links()] == ["result"]
    assert [link["label"] for link in new.links()] == ["_return"]
    old.close(), new.close()


def test_active_process_of_an_old_archive_is_refused(tmp_path: Path) -> None:
    data = legacy_data({"node_type": "process.workflow.workchain.WorkChainNode."}, {"process_state": "running"})
    source = open_archive(write_archive(tmp_path / "active.aiida", "0.6", data))
    with pytest.raises(InvalidArchiveEntry, match="active"):
        list(source.nodes())


def test_repository_folders(tmp_path: Path) -> None:
    folder = "nodes/a3/60/01a4-fdad-4f0d-86c3-4373a5b88c6b"
    files = {f"{folder}/path/a.txt": b"a", f"{folder}/raw_input/sub/b.txt": b"b", f"{folder}/path/empty/": b"",
             f"{folder}/path/copy.txt": b"a", "nodes/ff/ff/ffff-ffff-ffff-ffff-ffffffffffff/path/other.txt": b"o"}
    source = open_archive(write_archive(tmp_path / "repo.aiida", "0.10", legacy_data({}, {}), files))
    key_a, key_b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    (node,) = source.nodes()
    assert node["repository_metadata"] == {"o": {
        "a.txt": {"k": key_a}, "copy.txt": {"k": key_a}, "empty": {}, "sub": {"o": {"b.txt": {"k": key_b}}}}}
    # Each key once; the folder of a node that is not in the archive is not referenced.
    assert sorted(key for key, _ in source.objects()) == sorted([key_a, key_b])
    source.close()
    fresh = open_archive(tmp_path / "repo.aiida")  # objects() before nodes() hashes the files itself
    assert {key: opener().read() for key, opener in fresh.objects()} == {key_a: b"a", key_b: b"b"}
    fresh.close()


def many_nodes(count: int, reverse_maps: bool = False) -> dict[str, Any]:
    """A data.json of ``count`` nodes with 4 kB of attributes each, the attribute maps optionally in reverse order."""
    pks = [str(pk) for pk in range(1, count + 1)]
    data = legacy_data({}, {})
    data["export_data"]["Node"] = {pk: data["export_data"]["Node"]["7"] | {"uuid": str(uuid_module.UUID(int=int(pk)))}
                                   for pk in pks}
    ordered = pks[::-1] if reverse_maps else pks
    data["node_attributes"] = {pk: {"pk": pk, "blob": "x" * 4096} for pk in ordered}
    data["node_extras"] = {pk: {"n": int(pk)} for pk in ordered}
    return data


def test_attribute_maps_in_another_order(tmp_path: Path) -> None:
    ordered, reverse = (open_archive(write_archive(tmp_path / f"{flag}.aiida", "0.13", many_nodes(50, flag)))
                        for flag in (False, True))
    expected = [(str(uuid_module.UUID(int=pk)), str(pk), pk) for pk in range(1, 51)]
    for source in (ordered, reverse):
        assert [(n["uuid"], n["attributes"]["pk"], n["extras"]["n"]) for n in source.nodes()] == expected  # type: ignore[index]
        source.close()


def peak_reading_nodes(path: Path, count: int) -> int:
    """The peak of memory allocated while reading every node of the archive at ``path``."""
    source = open_archive(path)
    tracemalloc.start()
    try:
        assert sum(1 for _ in source.nodes()) == count
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        source.close()


@pytest.mark.slow
def test_nodes_are_streamed(tmp_path: Path) -> None:
    """Memory grows with the nodes only by the pk -> uuid map (< 500 bytes a node), not with data.json (4.4 kB)."""
    small, big = (write_archive(tmp_path / f"{count}.aiida", "0.13", many_nodes(count)) for count in (500, 3000))
    size = zipfile.ZipFile(big).getinfo("data.json").file_size
    peak_small, peak_big = peak_reading_nodes(small, 500), peak_reading_nodes(big, 3000)
    assert size > 12_000_000 and peak_big < size / 5 and peak_big - peak_small < (3000 - 500) * 500


# ------------------------------------------------------------------------------------------------ aiida-core


@pytest.mark.slow
@pytest.mark.parametrize("name", SIMPLE + ["0.10_null_fields.aiida"])
def test_same_translation_as_aiida_core(
    records: dict[str, dict[str, list[Any]]], name: str, tmp_path: Path, aiida_python: str,  # noqa: F811
) -> None:
    """aiida-core's own migration to main_0001 gives the same node types, attributes, repository and links (and,
    where it repairs no null, the same group types and computers)."""
    env = {**os.environ, "AIIDA_PATH": str(tmp_path)}
    result = subprocess.run([aiida_python, str(CHECK_SCRIPT), str(ARCHIVES / name), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    got = records[name]
    ours = {node["uuid"]: {"node_type": node["node_type"], "process_type": node["process_type"],
                           "repository_metadata": node["repository_metadata"], "attributes": node["attributes"]}
            for node in got["nodes"]}
    assert ours == theirs["nodes"]
    assert sorted([link["input_uuid"], link["output_uuid"], link["type"], link["label"]] for link in got["links"]) \
        == theirs["links"]
    if name == "0.10_null_fields.aiida":  # aiida-core's null group type became "core": the importer's repair
        assert [group["type_string"] for group in got["groups"]] == [None] and theirs["groups"] == {"testing1": "core"}
        return
    assert {group["label"]: group["type_string"] for group in got["groups"]} == theirs["groups"]
    assert {c["uuid"]: [c["label"], c["scheduler_type"], c["transport_type"]] for c in got["computers"]} \
        == theirs["computers"]


# ------------------------------------------------------------------------------- imported into both dialects


@needs_archives
@pytest.mark.parametrize("name", SIMPLE)
def test_import_simple_archive(target: SqlaBackend, name: str) -> None:  # noqa: F811
    result = import_archive(ARCHIVES / name, target)
    assert result.version == name.split("_")[1]
    counts = _counts(target)
    assert (counts["db_dbnode"], counts["db_dblink"], counts["db_dbgroup"], counts["db_dbuser"],
            counts["db_dbcomputer"]) == (10, 8, 4, 1, 1)
    with target.transaction() as session:
        assert dict(session.execute(select(DbLink.type, func.count()).group_by(DbLink.type)).all()) == \
            {"create": 4, "input_calc": 4}
        assert sorted(session.scalars(select(DbGroup.type_string))) == ["core", "core.auto", "core.import", "core.upf"]
        code = session.scalars(select(DbNode).where(DbNode.uuid == uuid_module.UUID("c1879cbe-8f6f-4343-b3f7-df8ecbd4d403"))).one()
        assert code.node_type == "data.core.code.Code." and code.label == "pw.x"
        assert code.ctime.replace(tzinfo=None) == datetime.datetime(2014, 11, 3, 13, 43, 36)
    assert len(list(object_store_for(target).keys())) == 16
    again = import_archive(ARCHIVES / name, target)
    assert not again.changed and _counts(target) == counts


@needs_archives
def test_import_null_fields_repairs_them(target: SqlaBackend) -> None:  # noqa: F811
    result = import_archive(ARCHIVES / "0.10_null_fields.aiida", target)
    counts = _counts(target)
    assert (counts["db_dbnode"], counts["db_dblink"], counts["db_dbgroup"]) == (1, 0, 1)
    repaired = {(r.entity, r.detail.split(" was null")[0]) for r in result.repairs}
    assert {("node", "label"), ("node", "description"), ("node", "ctime"), ("node", "mtime"), ("user", "first_name"),
            ("user", "last_name"), ("group", "time"), ("group", "type_string")} <= repaired
    with target.transaction() as session:
        node = session.scalars(select(DbNode)).one()
        assert (node.label, node.description) == ("", "") and node.ctime is not None
        assert session.scalars(select(DbGroup.type_string)).one() == "core"
        user = session.scalars(select(DbUser).where(DbUser.email == "mail@sphuber.net")).one()
        assert (user.first_name, user.last_name) == ("", "")


@needs_archives
def test_import_drops_unknown_group_members(target: SqlaBackend) -> None:  # noqa: F811
    result = import_archive(ARCHIVES / "0.10_unknown_nodes_in_group.aiida", target)
    counts = _counts(target)
    assert (counts["db_dbnode"], counts["db_dblink"], counts["db_dbgroup"], counts["db_dbgroup_dbnodes"]) == (1, 0, 1, 1)
    assert len([r for r in result.repairs if r.entity == "group_node"]) == 2
    with target.transaction() as session:
        assert session.scalars(select(DbNode.uuid).join(DbGroupNode, DbGroupNode.dbnode_id == DbNode.id)).one() \
            == uuid_module.UUID("a36001a4-fdad-4f0d-86c3-4373a5b88c6b")


@needs_archives
def test_import_refuses_the_dangling_link(target: SqlaBackend, tmp_path: Path) -> None:  # noqa: F811
    before = _counts(target)
    with pytest.raises(InvalidArchiveEntry, match="26522c2f-13e0-4b80-af13-cbc8c09df211"):
        import_archive(ARCHIVES / "0.10_dangling_link.aiida", target)
    # A link end that is not even a uuid is refused the same way.
    data = legacy_data({}, {}, links_uuid=[{"input": None, "output": "a36001a4-fdad-4f0d-86c3-4373a5b88c6b",
                                            "type": "input_calc", "label": "x"}])
    with pytest.raises(InvalidArchiveEntry):
        import_archive(write_archive(tmp_path / "null-input.aiida", "0.10", data), target)
    assert _counts(target) == before
    assert list(object_store_for(target).keys()) == []
