from __future__ import annotations

from aiida_sqla_plugin.models import DbNode


def test_store_and_count_node(backend, user):
    with backend.transaction() as session:
        session.add(DbNode(node_type="data.core.int.Int.", user_id=user.id))
    assert backend.query_manager.get_creation_statistics()["total"] == 1
