"""bulk_insert: defaults, validation, foreign keys, atomicity and round trips, on SQLite and PostgreSQL."""
from __future__ import annotations

import datetime
import math
import uuid

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from aiida_sqla_plugin import bulk
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.bulk import bulk_insert
from aiida_sqla_plugin.exceptions import ValidationError
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
from helpers import count_rows, node_rows

UTC = datetime.timezone.utc
#: Text that needs escaping in COPY's text format, and a literal that looks like its NULL marker.
AWKWARD = 'tab\there, new\nline, cr\r, back\\slash, \\N, quote " and \' , unicode é ✓ 𝄞'


def reader(backend: SqlaBackend) -> Session:
    """A new session: the scoped one may still hold a read snapshot (SQLite) from before the bulk insert."""
    return Session(backend.engine)


def test_nodes_get_defaults_and_ids_in_input_order(backend, user):
    ids = bulk_insert(backend, DbNode, node_rows(user.id, 5))
    assert len(ids) == 5 and len(set(ids)) == 5
    session = reader(backend)
    stored = {node.id: node for node in session.scalars(select(DbNode))}
    assert [stored[pk].attributes for pk in ids] == [{"value": i} for i in range(5)]
    node = stored[ids[0]]
    assert isinstance(node.uuid, uuid.UUID)
    assert node.ctime.tzinfo is not None and node.mtime.tzinfo is not None
    assert abs(node.ctime - datetime.datetime.now(UTC)) < datetime.timedelta(minutes=5)
    assert node.extras == {} and node.repository_metadata == {} and node.label == "" and node.process_type is None
    assert len({n.uuid for n in stored.values()}) == 5


def test_round_trip_of_awkward_text_json_and_times(backend, user):
    tz = datetime.timezone(datetime.timedelta(hours=-7, minutes=-30))
    ctime = datetime.datetime(2024, 3, 1, 23, 59, 59, 123456, tzinfo=tz)
    given_uuid = uuid.uuid4()
    attributes = {
        "text": AWKWARD,
        "nested": {"list": [1, 2.5, None, True, AWKWARD], "empty": {}},
        "unicode_key_é": "\\u0000 is just text here",
    }
    (pk,) = bulk_insert(
        backend,
        "db_dbnode",
        [
            {
                "node_type": "data.core.dict.Dict.",
                "user_id": user.id,
                "label": AWKWARD[:255],
                "description": AWKWARD * 3,
                "attributes": attributes,
                "extras": {"_aiida_hash": "x\ty"},
                "ctime": ctime,
                "mtime": ctime,
                "uuid": str(given_uuid),
            }
        ],
    )
    node = reader(backend).get(DbNode, pk)
    assert node.label == AWKWARD and node.description == AWKWARD * 3
    assert node.attributes == attributes and node.extras == {"_aiida_hash": "x\ty"}
    assert node.ctime == ctime and node.ctime.utcoffset() == datetime.timedelta(0)
    assert node.uuid == given_uuid


def test_every_entity_by_class_or_table_name_with_column_name_aliases(backend, user):
    (computer,) = bulk_insert(
        backend, "db_dbcomputer", [{"label": "localhost", "hostname": "localhost", "metadata": {"shebang": "#!/bin/bash"}}]
    )
    (authinfo,) = bulk_insert(backend, DbAuthInfo, [{"aiidauser_id": user.id, "dbcomputer_id": computer}])
    (other_user,) = bulk_insert(backend, DbUser, [{"email": "second@example.org"}])
    nodes = bulk_insert(backend, DbNode, node_rows(user.id, 2, dbcomputer_id=computer) + node_rows(other_user, 1))
    links = bulk_insert(backend, "db_dblink", [{"input_id": nodes[0], "output_id": nodes[1], "label": "x", "type": "input_calc"}])
    (group,) = bulk_insert(backend, DbGroup, [{"label": "g", "user_id": user.id}])
    members = bulk_insert(backend, DbGroupNode, [{"dbgroup_id": group, "dbnode_id": pk} for pk in nodes])
    (comment,) = bulk_insert(backend, DbComment, [{"dbnode_id": nodes[0], "user_id": user.id, "content": AWKWARD}])
    (log,) = bulk_insert(
        backend,
        "db_dblog",
        [{"dbnode_id": nodes[1], "loggername": "aiida", "levelname": "WARNING", "message": "m", "metadata_": {"k": 1}}],
    )
    session = reader(backend)
    assert session.get(DbComputer, computer).metadata_ == {"shebang": "#!/bin/bash"}
    assert session.get(DbAuthInfo, authinfo).enabled is True
    assert session.get(DbUser, other_user).first_name == ""
    assert session.get(DbLink, links[0]).type == "input_calc"
    assert session.get(DbGroup, group).type_string == "core"
    assert len(members) == 3 and count_rows(backend, DbGroupNode) == 3
    assert session.get(DbComment, comment).content == AWKWARD
    assert session.get(DbLog, log).metadata_ == {"k": 1}


def test_ids_interleave_with_orm_inserts(backend, user):
    user_id = user.id
    first = bulk_insert(backend, DbNode, node_rows(user_id, 3))
    # Loading user.id began a read transaction in the scoped session; on SQLite its snapshot predates the bulk
    # insert and could not be upgraded to a write, so end it first (see the bulk module's docstring).
    backend.get_session().rollback()
    with backend.transaction() as session:
        orm_node = DbNode(node_type="data.core.int.Int.", user_id=user_id)
        session.add(orm_node)
    second = bulk_insert(backend, DbNode, node_rows(user_id, 3))
    assert len({*first, orm_node.id, *second}) == 7
    assert min(second) > orm_node.id > max(first)


def test_empty_rows_and_generators(backend, user):
    assert bulk_insert(backend, DbNode, []) == []
    ids = bulk_insert(backend, DbNode, (row for row in node_rows(user.id, 4)))
    assert len(ids) == 4 and count_rows(backend, DbNode) == 4


def test_chunks_and_progress(backend, user, monkeypatch):
    monkeypatch.setattr(bulk, "CHUNK_SIZE", 3)
    calls: list[tuple[str, int, int | None]] = []
    ids = bulk_insert(backend, DbNode, node_rows(user.id, 8), progress=lambda *args: calls.append(args))
    assert ids == sorted(ids) and count_rows(backend, DbNode) == 8
    assert calls == [("store db_dbnode", done, 8) for done in (0, 3, 6, 8)]


def test_rows_with_different_keys_in_one_chunk(backend, user, monkeypatch):
    monkeypatch.setattr(bulk, "CHUNK_SIZE", 4)
    time = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    rows = [
        {"user_id": user.id, "node_type": "a", "label": "reordered"},
        {"node_type": "b", "user_id": user.id, "ctime": time},
        {"node_type": "c", "user_id": user.id, "process_type": None, "extras": {"k": [1]}},
        *node_rows(user.id, 3),
    ]
    ids = bulk_insert(backend, DbNode, rows)
    nodes = [reader(backend).get(DbNode, pk) for pk in ids]
    assert [node.node_type for node in nodes[:3]] == ["a", "b", "c"] and nodes[0].label == "reordered"
    assert nodes[1].ctime == time and nodes[2].extras == {"k": [1]} and nodes[0].extras == {}
    assert len({node.uuid for node in nodes}) == 6 and [node.attributes for node in nodes[3:]] == [{"value": i} for i in range(3)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # a bad value before a bad set of keys, in one chunk, and the other way round
        ({5: {"label": 7}, 6: {"colour": "red"}}, r"row 5: field 'label' must be a string"),
        ({5: {"colour": "red"}, 6: {"label": 7}}, r"row 5: unknown field 'colour'"),
        # within one row, the first bad field in field order; across chunks, the first chunk with a bad row
        ({4: {"user_id": "1", "node_type": None}}, r"row 4: field 'node_type' may not be None"),
        ({2: {"label": "x" * 300}, 6: {"node_type": 1}}, r"row 2: field 'label' is longer than 255"),
        ({7: {"label": "\ud800"}}, r"row 7: field 'label' contains '\\ud800', a lone surrogate"),
    ],
)
def test_the_first_bad_row_is_named(backend, user, monkeypatch, changes, message):
    monkeypatch.setattr(bulk, "CHUNK_SIZE", 4)
    rows = node_rows(user.id, 8)
    for index, change in changes.items():
        rows[index].update(change)
    with pytest.raises(ValidationError, match=message):
        bulk_insert(backend, DbNode, rows)
    assert count_rows(backend, DbNode) == 0


@pytest.mark.parametrize("offset", [0, 3], ids=["all UTC", "mixed offsets"])
def test_times_and_uuids_are_stored_as_the_orm_stores_them(backend, user, offset):
    zone = datetime.timezone(datetime.timedelta(hours=offset))
    times = [
        datetime.datetime(2024, 1, 1, tzinfo=UTC),
        datetime.datetime(5, 1, 2, 3, 4, 5, tzinfo=zone),
        datetime.datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.timezone(datetime.timedelta(hours=-offset))),
    ]
    uuids = [uuid.uuid4() for _ in times]
    given = [str(uuids[0]).upper(), str(uuids[1]), uuids[2] if offset else str(uuids[2])]
    pks = bulk_insert(backend, DbNode, [{**row, "uuid": u, "ctime": t} for row, u, t in zip(node_rows(user.id, 3), given, times)])
    user_id = user.id
    with backend.transaction() as session:
        session.add_all(DbNode(node_type="orm", user_id=user_id, ctime=t, uuid=uuid.uuid4()) for t in times)
    with backend.engine.connect() as connection:  # the stored values themselves: text on SQLite, timestamptz on PostgreSQL
        stored = connection.exec_driver_sql("SELECT ctime, uuid FROM db_dbnode ORDER BY id").all()
    assert [row[0] for row in stored[:3]] == [row[0] for row in stored[3:]]
    assert [str(row[1]).replace("-", "") for row in stored[:3]] == [u.hex for u in uuids]  # lower case, as the ORM writes
    assert [node.ctime for node in reader(backend).scalars(select(DbNode).order_by(DbNode.id))] == times * 2
    assert [reader(backend).get(DbNode, pk).uuid for pk in pks] == uuids


def test_unknown_link_type_is_refused_by_bulk_insert_and_the_orm(backend, user):
    user_id = user.id
    nodes = bulk_insert(backend, DbNode, node_rows(user_id, 2))
    links = [
        {"input_id": nodes[0], "output_id": nodes[1], "label": "x", "type": "create"},
        {"input_id": nodes[0], "output_id": nodes[1], "label": "y", "type": "input"},
    ]
    with pytest.raises(ValidationError, match=r"db_dblink row 1: field 'type' is 'input', not one of: create, return, "):
        bulk_insert(backend, DbLink, links)
    with pytest.raises(ValidationError, match=r"DbLink.type is 'input', not one of: create, return, "):
        with backend.transaction() as session:
            session.add(DbLink(input_id=nodes[0], output_id=nodes[1], label="y", type="input"))
    assert count_rows(backend, DbLink) == 0
    assert len(bulk_insert(backend, DbLink, links[:1])) == 1


def test_unknown_entity_lists_the_accepted_ones(backend):
    with pytest.raises(ValidationError, match="DbNode.*db_dbnode.*DbLink") as info:
        bulk_insert(backend, "db_dbsetting", [{"key": "x"}])
    assert "DbAuthInfo" in str(info.value)
    with pytest.raises(ValidationError, match="accepted entities"):
        bulk_insert(backend, dict, [{}])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, r"row 2: unknown field 'colour'"),
        ({"id": 5}, r"row 2: unknown field 'id' \('id' is assigned by the database\)"),
        ({"node_type": None}, r"row 2: field 'node_type' may not be None"),
        ({"node_type": 7}, r"row 2: field 'node_type' must be a string"),
        ({"label": "x" * 256}, r"row 2: field 'label' is longer than 255"),
        ({"label": "a\x00b"}, r"row 2: field 'label' contains a NUL"),
        ({"user_id": "1"}, r"row 2: field 'user_id' must be an integer"),
        ({"user_id": True}, r"row 2: field 'user_id' must be an integer"),
        ({"attributes": {"x": math.nan}}, r"row 2: field 'attributes' is not valid JSON"),
        ({"attributes": {"x": {1, 2}}}, r"row 2: field 'attributes' is not valid JSON"),
        ({"attributes": [1, 2]}, r"row 2: field 'attributes' must be a dict"),
        ({"extras": {"k": "a\x00b"}}, r"row 2: field 'extras' contains a NUL"),
        ({"repository_metadata": None}, r"row 2: field 'repository_metadata' may not be None"),
        ({"ctime": datetime.datetime(2024, 1, 1)}, r"row 2: field 'ctime' is a naive datetime"),
        ({"ctime": "2024-01-01"}, r"row 2: field 'ctime' must be a timezone-aware datetime"),
        ({"uuid": "not-a-uuid"}, r"row 2: field 'uuid' is not a UUID"),
        ({"user_id": 10**6}, r"row 2: field 'user_id' = 1000000 does not exist in db_dbuser"),
        ({"dbcomputer_id": 77}, r"row 2: field 'dbcomputer_id' = 77 does not exist in db_dbcomputer"),
    ],
)
def test_invalid_row_stores_nothing(backend, user, change, message):
    rows = node_rows(user.id, 4)
    rows[2].update(change)
    with pytest.raises(ValidationError, match=message):
        bulk_insert(backend, DbNode, rows)
    assert count_rows(backend, DbNode) == 0


def test_missing_required_field_and_field_given_twice(backend, user):
    with pytest.raises(ValidationError, match=r"db_dbnode row 1: required field 'user_id' is missing"):
        bulk_insert(backend, DbNode, [{"node_type": "a", "user_id": user.id}, {"node_type": "a"}])
    (computer,) = bulk_insert(backend, DbComputer, [{"label": "c"}])
    with pytest.raises(ValidationError, match=r"row 0: field 'metadata_' is given twice"):
        bulk_insert(backend, DbComputer, [{"label": "d", "metadata": {}, "metadata_": {}}])
    with pytest.raises(ValidationError, match=r"row 0: expected a mapping"):
        bulk_insert(backend, DbComputer, [("label", "e")])  # type: ignore[list-item]
    assert count_rows(backend, DbNode) == 0 and count_rows(backend, DbComputer) == 1 and computer


def test_links_to_unknown_nodes_name_the_first_bad_row(backend, user):
    nodes = bulk_insert(backend, DbNode, node_rows(user.id, 3))
    missing = max(nodes) + 100
    links = [
        {"input_id": nodes[0], "output_id": nodes[1], "label": "x", "type": "input_calc"},
        {"input_id": nodes[1], "output_id": nodes[2], "label": "y", "type": "create"},
        {"input_id": nodes[0], "output_id": missing, "label": "z", "type": "input_calc"},
        {"input_id": missing + 1, "output_id": nodes[2], "label": "z", "type": "input_calc"},
    ]
    with pytest.raises(ValidationError, match=rf"db_dblink row 3: field 'input_id' = {missing + 1} does not exist"):
        bulk_insert(backend, DbLink, links)
    with pytest.raises(ValidationError, match=rf"db_dblink row 2: field 'output_id' = {missing} does not exist"):
        bulk_insert(backend, DbLink, links[:3])
    assert count_rows(backend, DbLink) == 0
    assert len(bulk_insert(backend, DbLink, links[:2])) == 2


def test_a_link_to_a_gap_among_existing_nodes_is_refused(backend, user):
    nodes = bulk_insert(backend, DbNode, node_rows(user.id, 5))
    backend.get_session().rollback()
    with backend.engine.begin() as connection:
        connection.execute(delete(DbNode).where(DbNode.id == nodes[2]))
    links = [{"input_id": nodes[i], "output_id": nodes[i + 1], "label": "x", "type": "create"} for i in range(4)]
    with pytest.raises(ValidationError, match=rf"db_dblink row 2: field 'input_id' = {nodes[2]} does not exist"):
        bulk_insert(backend, DbLink, links)
    assert count_rows(backend, DbLink) == 0
    assert len(bulk_insert(backend, DbLink, [links[0], links[3]])) == 2


def test_unique_violations_store_nothing(backend, user):
    (pk,) = bulk_insert(backend, DbNode, node_rows(user.id, 1))
    taken = reader(backend).get(DbNode, pk).uuid
    rows = node_rows(user.id, 3)
    rows[1]["uuid"] = taken
    with pytest.raises(ValidationError, match="db_dbnode: the database refused the rows"):
        bulk_insert(backend, DbNode, rows)
    with pytest.raises(ValidationError, match="db_dbuser: the database refused the rows"):
        bulk_insert(backend, DbUser, [{"email": "new@example.org"}, {"email": user.email}])
    assert count_rows(backend, DbNode) == 1 and count_rows(backend, DbUser) == 1


def test_backend_method_delegates(backend, user):
    ids = backend.bulk_insert("db_dbnode", node_rows(user.id, 2))
    assert len(ids) == 2 and count_rows(backend, DbNode) == 2


def test_large_loads_are_analysed_on_postgresql(backend, user, dialect):
    if dialect != "postgresql":
        pytest.skip("planner statistics are refreshed only on PostgreSQL")
    user_id = user.id
    bulk_insert(backend, DbNode, node_rows(user_id, bulk.ANALYZE_MIN_ROWS + 500))
    with backend.engine.connect() as connection:
        estimate = connection.exec_driver_sql("SELECT reltuples FROM pg_class WHERE relname = 'db_dbnode'").scalar_one()
    assert estimate == bulk.ANALYZE_MIN_ROWS + 500


def test_given_ids_are_kept_and_the_next_id_follows_them(backend: SqlaBackend, user):
    assert bulk_insert(backend, DbNode, node_rows(user.id, 3), ids=[10, 20, 30]) == [10, 20, 30]
    with backend.transaction() as session:
        new = DbNode(node_type="data.core.int.Int.", user_id=user.id)
        session.add(new)
        session.flush()
        assert new.id == 31
    with pytest.raises(ValidationError, match="refused the rows"):
        bulk_insert(backend, DbNode, node_rows(user.id, 2), ids=[40, 20])
    with pytest.raises(ValidationError, match="got 1 ids for 2 rows"):
        bulk_insert(backend, DbNode, node_rows(user.id, 2), ids=[50])
    assert count_rows(backend, DbNode) == 4
