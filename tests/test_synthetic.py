"""build_graph: exact counts, every link type, acyclic, deep chains, deterministic for a seed."""
from __future__ import annotations

import datetime
from collections import Counter, defaultdict, deque

from sqlalchemy import func, select

from aiida_sqla_plugin import synthetic
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.models import DbComputer, DbLink, DbNode, DbUser
from aiida_sqla_plugin.synthetic import SyntheticGraph, build_graph

LINK_TYPES = {"input_calc", "create", "call_calc", "call_work", "return", "input_work"}


def stored_links(backend: SqlaBackend) -> list[tuple[int, int, str, str]]:
    with backend.engine.connect() as connection:
        rows = connection.execute(select(DbLink.input_id, DbLink.output_id, DbLink.type, DbLink.label).order_by(DbLink.id))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def stored_nodes(backend: SqlaBackend, ids: tuple[int, ...]) -> list[tuple[str, str | None, dict, datetime.datetime]]:
    with backend.engine.connect() as connection:
        rows = connection.execute(
            select(DbNode.node_type, DbNode.process_type, DbNode.attributes, DbNode.ctime)
            .where(DbNode.id.in_(ids))
            .order_by(DbNode.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_counts_link_types_and_acyclic(backend: SqlaBackend):
    calls: list[tuple[str, int, int | None]] = []
    graph = build_graph(backend, 400, seed=3, days=10, progress=lambda *args: calls.append(args))
    assert len(graph.node_ids) == 400 == len(set(graph.node_ids))
    assert sorted(graph.data_ids + graph.calc_ids + graph.workflow_ids) == sorted(graph.node_ids)
    assert graph.data_ids and graph.calc_ids and graph.workflow_ids
    with backend.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(DbNode)).scalar_one() == 400
        assert connection.execute(select(DbUser.email)).scalars().all() == [synthetic.SYNTHETIC_USER_EMAIL]
        types = dict(connection.execute(select(DbNode.node_type, func.count()).group_by(DbNode.node_type)).all())
        assert connection.execute(select(func.count()).select_from(DbComputer)).scalar_one() == 1
    assert set(types) <= {*synthetic.DATA_TYPES, synthetic.CALCJOB_TYPE, synthetic.CALCFUNCTION_TYPE, synthetic.WORKCHAIN_TYPE}
    assert types[synthetic.WORKCHAIN_TYPE] == len(graph.workflow_ids)

    links = stored_links(backend)
    assert len(links) == graph.link_count == sum(graph.link_counts.values())
    assert set(Counter(link[2] for link in links)) == LINK_TYPES == set(graph.link_counts)
    kind = {pk: "data" for pk in graph.data_ids} | {pk: "calc" for pk in graph.calc_ids} | {pk: "work" for pk in graph.workflow_ids}
    allowed = {
        "input_calc": ("data", "calc"), "create": ("calc", "data"), "call_calc": ("work", "calc"),
        "call_work": ("work", "work"), "return": ("work", "data"), "input_work": ("data", "work"),
    }
    inputs_per_calc: Counter[int] = Counter()
    outputs_per_calc: Counter[int] = Counter()
    for source, target, link_type, _label in links:
        assert (kind[source], kind[target]) == allowed[link_type]
        inputs_per_calc[target] += link_type == "input_calc"
        outputs_per_calc[source] += link_type == "create"
    assert all(1 <= inputs_per_calc[pk] <= 3 for pk in graph.calc_ids)
    assert all(1 <= outputs_per_calc[pk] <= 2 for pk in graph.calc_ids)

    # Acyclic over all link types: Kahn's algorithm consumes every node.
    children: dict[int, list[int]] = defaultdict(list)
    indegree = Counter({pk: 0 for pk in graph.node_ids})
    for source, target, _type, _label in links:
        children[source].append(target)
        indegree[target] += 1
    ready = deque(pk for pk, degree in indegree.items() if degree == 0)
    seen = 0
    while ready:
        pk = ready.popleft()
        seen += 1
        for child in children[pk]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    assert seen == 400

    # ctime spread over the days, in creation order, in UTC.
    ctimes = [row[3] for row in stored_nodes(backend, graph.node_ids)]
    assert ctimes == sorted(ctimes)
    assert ctimes[0] == synthetic.SYNTHETIC_EPOCH
    assert datetime.timedelta(days=9) < ctimes[-1] - ctimes[0] < datetime.timedelta(days=10)
    assert calls[-1][1] == calls[-1][2] == graph.link_count


def test_deepest_node_ends_the_longest_provenance_chain(backend: SqlaBackend):
    graph = build_graph(backend, 600, seed=1)
    parents: dict[int, list[int]] = defaultdict(list)
    for source, target, link_type, _label in stored_links(backend):
        if link_type in ("create", "input_calc"):
            parents[target].append(source)
    depth: dict[int, int] = {}
    for pk in sorted(graph.node_ids):  # ids follow creation order, and links go forward
        depth[pk] = max((depth[parent] + 1 for parent in parents[pk]), default=0)
    assert graph.depth == max(depth.values()) == depth[graph.deepest_node]
    assert graph.deepest_node in graph.data_ids
    assert graph.depth >= 10


def test_deterministic_for_a_seed_and_reuses_the_user(backend: SqlaBackend, user: DbUser):
    user_id = user.id
    backend.get_session().rollback()

    def shape(graph: SyntheticGraph) -> tuple[list, list]:
        position = {pk: i for i, pk in enumerate(graph.node_ids)}
        links = [
            (position[s], position[t], ty, label) for s, t, ty, label in stored_links(backend) if s in position and t in position
        ]
        return stored_nodes(backend, graph.node_ids), links

    first = build_graph(backend, 150, seed=7)
    second = build_graph(backend, 150, seed=7)
    third = build_graph(backend, 150, seed=8)
    assert first.user_id == second.user_id == user_id
    assert shape(first) == shape(second)
    assert (first.depth, first.link_count, dict(first.link_counts)) == (second.depth, second.link_count, dict(second.link_counts))
    assert shape(third) != shape(first)


def test_tiny_graphs(backend: SqlaBackend):
    assert build_graph(backend, 0).node_ids == ()
    graph = build_graph(backend, 5, seed=2)
    assert len(graph.node_ids) == 5 and graph.deepest_node in graph.data_ids
