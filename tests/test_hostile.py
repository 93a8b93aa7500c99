"""Hostile values through every way in: stored exactly, or ValidationError before anything is written.

The oracle (:func:`storable`) is written from the documented contract, not from the implementation, and
:func:`same` compares types as well as values, so that ``1.0`` read back as ``1`` or a tuple read back as a list
fails.
"""
from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import CorruptStorage, ValidationError
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.models import DbNode, DbSetting, DbUser
from aiida_sqla_plugin.settings import SqlaSettingsManager
from aiida_sqla_plugin.utils import flag_modified
from aiida_sqla_plugin.values import MAX_JSON_DEPTH
from helpers import truncated_sqlite_database

HYPOTHESIS = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
#: Any code point, lone surrogates and NUL included.
ANY_CHARACTER = st.characters(codec=None, categories=None)
HOSTILE_TEXT = st.text(ANY_CHARACTER, max_size=12) | st.sampled_from(
    ["\ud800", "a\x00b", "key.with.dots", "quo'te\"s", "'; DROP TABLE db_dbnode; --", "\udfff\ud800", ""]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | HOSTILE_TEXT
)
KEYS = HOSTILE_TEXT | st.integers(-3, 3) | st.booleans() | st.none()
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children)
    | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)


def storable(value: Any, depth: int = 0) -> bool:
    """The contract: JSON types only, string keys, finite floats, text without NUL or lone surrogates."""
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return depth < MAX_JSON_DEPTH and all(storable(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return depth < MAX_JSON_DEPTH and all(
            isinstance(key, str) and storable(key) and storable(item, depth + 1) for key, item in value.items()
        )
    return False


def same(left: Any, right: Any) -> bool:
    """Equal, with equal types all the way down."""
    if type(left) is not type(right):
        return False
    if isinstance(left, list):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[key], right[key]) for key in left)
    return bool(left == right)


def count(backend: SqlaBackend, model: type[DbNode] | type[DbSetting]) -> int:
    with backend.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(model)).scalar_one())


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# -- the two bugs found by hand -------------------------------------------------------------------------------


def test_lone_surrogate_setting_is_refused_before_writing(backend):
    before = count(backend, DbSetting)
    for key, value in (("ok_key", "\ud800"), ("ok_key", {"\udc00": 1}), ("bad\ud800key", 1)):
        with pytest.raises(ValidationError, match="surrogate"):
            backend.settings.set(key, value)
    with pytest.raises(ValidationError, match="surrogate"):
        backend.settings.set("ok_key", 1, description="\ud800")
    assert count(backend, DbSetting) == before


@pytest.mark.parametrize("field", ["label", "description", "attributes", "extras"])
def test_lone_surrogate_node_field_is_refused_before_writing(backend, user, field):
    value: Any = "x\ud800" if field in ("label", "description") else {"a": ["\ud800"]}
    with pytest.raises(ValidationError, match="surrogate"):
        with backend.transaction() as session:
            session.add(DbNode(node_type="data.", user_id=user.id))  # a valid node in the same flush
            session.add(DbNode(node_type="data.", user_id=user.id, **{field: value}))
    assert count(backend, DbNode) == 0


def test_changed_attribute_with_surrogate_is_refused(backend, user):
    with backend.transaction() as session:
        node = DbNode(node_type="data.", user_id=user.id, attributes={"a": 1})
        session.add(node)
    with pytest.raises(ValidationError, match="surrogate"):
        with backend.transaction() as session:
            node.attributes["a"] = "\ud800"
            flag_modified(node, "attributes")
    backend.get_session().expire_all()
    with backend.engine.connect() as connection:
        assert connection.execute(select(DbNode.attributes)).scalar_one() == {"a": 1}


@pytest.mark.parametrize("change", [{"label": "\ud800"}, {"attributes": {"x": "\udfff"}}, {"extras": {"\ud800": 0}}])
def test_lone_surrogate_in_bulk_insert_is_refused(backend, user, change):
    rows = [{"node_type": "data.", "user_id": user.id} for _ in range(3)]
    rows[1].update(change)
    with pytest.raises(ValidationError, match="row 1.*surrogate"):
        backend.bulk_insert(DbNode, rows)
    assert count(backend, DbNode) == 0


def _corrupt_profile(tmp_path: Path, content: bytes) -> tuple[aiida_sqla_plugin.Profile, Path]:
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(content)
    profile = aiida_sqla_plugin.Profile(
        name="corrupt", storage_backend="sqlalchemy", storage_config={"url": f"sqlite:///{path}"}
    )
    return profile, path


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_sqlite_file_raises_corrupt_storage_from_every_entry_point(tmp_path, kind):
    content = b"this is not a database\n" * 500 if kind == "garbage" else truncated_sqlite_database(tmp_path)
    profile, path = _corrupt_profile(tmp_path, content)
    manager = SqlaBackendManager()
    calls = [
        lambda: manager.load_backend_environment(profile),
        lambda: SqlaBackendManager(profile).validate_schema(),
        lambda: SqlaBackendManager(profile).migrate(),
        lambda: SqlaSettingsManager(profile).get("schema_generation"),
        lambda: SqlaSettingsManager(profile).set("key", 1),
        lambda: SqlaBackend(profile).bulk_insert(DbUser, [{"email": "a@b.c"}]),
        lambda: SqlaBackend(profile).get_session().execute(select(func.count()).select_from(DbNode)).scalar_one(),
    ]
    for call in calls:
        with pytest.raises(CorruptStorage, match="cannot be read|corrupt|no schema revision"):
            call()
    aiida_sqla_plugin.dispose_engines()
    assert path.read_bytes() == content
    report = SqlaBackendManager(profile).schema_report()
    assert report.state.value == "corrupt"


# -- hypothesis: every way in, both dialects ------------------------------------------------------------------


@HYPOTHESIS
@given(value=VALUES)
def test_setting_values_round_trip_or_are_refused(backend, value):
    key = f"k_{uuid.uuid4().hex}"
    before = count(backend, DbSetting)
    if storable(value):
        backend.settings.set(key, value)
        assert same(backend.settings.get(key).value, value)
    else:
        with pytest.raises(ValidationError):
            backend.settings.set(key, value)
        assert count(backend, DbSetting) == before


@HYPOTHESIS
@given(value=VALUES, label=HOSTILE_TEXT)
def test_node_fields_round_trip_or_are_refused(backend, user, value, label):
    before = count(backend, DbNode)
    document = {"v": value}
    fields = {"label": label, "attributes": document, "extras": {"e": [value]}}
    if storable(document) and storable(label):
        with backend.transaction() as session:
            node = DbNode(node_type="data.", user_id=user.id, **fields)
            session.add(node)
        pk = node.id
        with backend.engine.connect() as connection:
            row = connection.execute(select(DbNode.label, DbNode.attributes, DbNode.extras).where(DbNode.id == pk)).one()
        assert same(row.label, label) and same(row.attributes, document) and same(row.extras, {"e": [value]})
    else:
        with pytest.raises(ValidationError):
            with backend.transaction() as session:
                session.add(DbNode(node_type="data.", user_id=user.id, **fields))
        assert count(backend, DbNode) == before


@HYPOTHESIS
@given(value=VALUES, label=HOSTILE_TEXT)
def test_bulk_insert_round_trips_or_refuses(backend, user, value, label):
    before = count(backend, DbNode)
    rows = [
        {"node_type": "data.", "user_id": user.id},
        {"node_type": "data.", "user_id": user.id, "label": label, "attributes": {"v": value}},
    ]
    if storable({"v": value}) and storable(label):
        pks = backend.bulk_insert(DbNode, rows)
        with backend.engine.connect() as connection:
            row = connection.execute(select(DbNode.label, DbNode.attributes).where(DbNode.id == pks[1])).one()
        assert same(row.label, label) and same(row.attributes, {"v": value})
    else:
        with pytest.raises(ValidationError, match="row 1"):
            backend.bulk_insert(DbNode, rows)
        assert count(backend, DbNode) == before


# -- the edges, named -----------------------------------------------------------------------------------------


def test_nesting_limit_is_the_same_everywhere(backend, user):
    deepest, too_deep = nested(MAX_JSON_DEPTH), nested(MAX_JSON_DEPTH + 1)
    backend.settings.set("deep", deepest)
    assert same(backend.settings.get("deep").value, deepest)
    with pytest.raises(ValidationError, match="nested deeper"):
        backend.settings.set("too_deep", too_deep)
    inner = nested(MAX_JSON_DEPTH - 1)  # one level goes to the {"d": ...} around it
    [pk] = backend.bulk_insert(DbNode, [{"node_type": "data.", "user_id": user.id, "attributes": {"d": inner}}])
    with pytest.raises(ValidationError):
        backend.bulk_insert(DbNode, [{"node_type": "data.", "user_id": user.id, "attributes": {"d": too_deep}}])
    with pytest.raises(ValidationError, match="nested deeper"):
        with backend.transaction() as session:
            session.add(DbNode(node_type="data.", user_id=user.id, extras={"d": too_deep}))
    with backend.engine.connect() as connection:
        assert same(connection.execute(select(DbNode.attributes).where(DbNode.id == pk)).scalar_one(), {"d": inner})
    assert count(backend, DbNode) == 1
    with pytest.raises(ValidationError, match="nested deeper"):
        backend.settings.set("recursion", nested(5000))


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), {1: "int key"}, (1, 2), {"a": b"bytes"}, "a\x00b", {"\x00": 1}]
)
def test_named_hostile_values_are_refused_everywhere(backend, user, value):
    with pytest.raises(ValidationError):
        backend.settings.set("named", value)
    with pytest.raises(ValidationError):
        backend.bulk_insert(DbNode, [{"node_type": "data.", "user_id": user.id, "extras": {"v": value}}])
    with pytest.raises(ValidationError):
        with backend.transaction() as session:
            session.add(DbNode(node_type="data.", user_id=user.id, attributes={"v": value}))
    assert count(backend, DbNode) == 0 and count(backend, DbSetting) == 1  # only schema_generation


def test_huge_strings_and_awkward_keys_round_trip(backend, user):
    huge = "é" * 4_000_000 + "\U0001F600"
    document = {"a.b.c": 1e20, "quo'te\"s": [1.0, -0.0, 2**70, 5e-324], "--; DROP": {"": huge}}
    backend.settings.set("huge", document)
    assert same(backend.settings.get("huge").value, document)
    [pk] = backend.bulk_insert(DbNode, [{"node_type": "data.", "user_id": user.id, "attributes": document}])
    with backend.transaction() as session:
        node = DbNode(node_type="data.", user_id=user.id, extras=document, label="x" * 255)
        session.add(node)
    with backend.engine.connect() as connection:
        rows = connection.execute(select(DbNode.attributes, DbNode.extras, DbNode.label).order_by(DbNode.id)).all()
    assert same(rows[0].attributes, document) and same(rows[1].extras, document) and rows[1].label == "x" * 255
    with pytest.raises(ValidationError, match="longer than 255"):
        backend.bulk_insert(DbNode, [{"node_type": "data.", "user_id": user.id, "label": "x" * 256}])
    with pytest.raises(ValidationError, match="longer than 255"):
        with backend.transaction() as session:
            session.add(DbNode(node_type="data.", user_id=user.id, label="x" * 256))
    assert count(backend, DbNode) == 2 and pk == 1 or dialect_pk_offset(pk)


def dialect_pk_offset(pk: int) -> bool:
    """PostgreSQL sequences may start elsewhere; only that the pk is positive matters then."""
    return pk > 0
