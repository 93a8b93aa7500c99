"""flag_modified on models and ModelWrapper: in-place JSON changes persist only when flagged."""
from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.models import DbNode, DbUser
from aiida_sqla_plugin.utils import ModelWrapper, flag_modified


def stored_node(backend: SqlaBackend, user: DbUser) -> int:
    with backend.transaction() as session:
        node = DbNode(node_type="data.core.dict.Dict.", user_id=user.id, attributes={"a": 1, "nested": {"b": [1]}})
        session.add(node)
    return node.id


def read_attributes(backend: SqlaBackend, pk: int) -> dict:
    with Session(backend.engine) as fresh:  # a new session: nothing cached from the writing one
        return fresh.get(DbNode, pk).attributes


@pytest.mark.parametrize("wrapped", [False, True], ids=["model", "wrapper"])
def test_flag_modified_persists_an_in_place_change(backend: SqlaBackend, user: DbUser, wrapped: bool):
    pk = stored_node(backend, user)
    session = backend.get_session()
    node = session.get(DbNode, pk)
    target = ModelWrapper(node) if wrapped else node
    target.attributes["a"] = 2
    target.attributes["nested"]["b"].append(2)
    flag_modified(target, "attributes")
    session.commit()
    assert read_attributes(backend, pk) == {"a": 2, "nested": {"b": [1, 2]}}


@pytest.mark.parametrize("wrapped", [False, True], ids=["model", "wrapper"])
def test_without_flag_modified_an_in_place_change_is_lost(backend: SqlaBackend, user: DbUser, wrapped: bool):
    pk = stored_node(backend, user)
    session = backend.get_session()
    node = session.get(DbNode, pk)
    target = ModelWrapper(node) if wrapped else node
    target.attributes["a"] = 2
    session.commit()
    assert read_attributes(backend, pk) == {"a": 1, "nested": {"b": [1]}}


def test_wrapper_forwards_reads_and_writes(backend: SqlaBackend, user: DbUser):
    pk = stored_node(backend, user)
    session = backend.get_session()
    wrapper = ModelWrapper(session.get(DbNode, pk))
    wrapper.label = "renamed"  # plain assignment is tracked without any flag
    session.commit()
    with Session(backend.engine) as fresh:
        assert fresh.get(DbNode, pk).label == "renamed"
    assert wrapper.id == pk and "DbNode" in repr(wrapper)
