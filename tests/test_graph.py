"""delete_nodes / delete_group_nodes traversal rules and get_ancestors / get_descendants, on SQLite and PostgreSQL."""
from __future__ import annotations

import logging
import uuid

import pytest
from sqlalchemy import func, insert, select

from aiida_sqla_plugin import closure
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import ValidationError
from aiida_sqla_plugin.graph import (
    ConcurrentGraphChange,
    delete_group_nodes,
    delete_nodes,
    get_ancestors,
    get_descendants,
)
from aiida_sqla_plugin.models import (
    DbComment,
    DbGroup,
    DbGroupNode,
    DbLink,
    DbLog,
    DbNode,
    DbPath,
    DbSetting,
    utc_now,
)
from helpers import id_set, insert_links, user_pk

#: The hand-built provenance graph: ``(input, output, link type)``.
#: d_in feeds C1 (called by W1, which W0 calls) and C3 (called by W2, which W0 also calls); C1 creates d_out1
#: (returned by W1 and W0), d_out1 feeds C2 which creates d_out2, C3 creates d_out3. d_other -> C_other ->
#: d_other_out is an unrelated calculation.
LINKS = (
    ("d_in", "C1", "input_calc"),
    ("C1", "d_out1", "create"),
    ("d_in", "W1", "input_work"),
    ("W1", "C1", "call_calc"),
    ("W1", "d_out1", "return"),
    ("d_out1", "C2", "input_calc"),
    ("C2", "d_out2", "create"),
    ("d_in", "W0", "input_work"),
    ("W0", "W1", "call_work"),
    ("W0", "d_out1", "return"),
    ("W0", "W2", "call_work"),
    ("d_in", "W2", "input_work"),
    ("W2", "C3", "call_calc"),
    ("d_in", "C3", "input_calc"),
    ("C3", "d_out3", "create"),
    ("d_other", "C_other", "input_calc"),
    ("C_other", "d_other_out", "create"),
)
NAMES = tuple(dict.fromkeys(name for link in LINKS for name in link[:2]))
ALL_BUT_D_IN = {"C1", "d_out1", "W1", "C2", "d_out2", "W0", "W2", "C3", "d_out3"}


def node_type(name: str) -> str:
    if name.startswith("d_"):
        return "data.core.int.Int."
    if name.startswith("W"):
        return "process.workflow.workchain.WorkChainNode."
    return "process.calculation.calcjob.CalcJobNode."


def add_nodes(backend: SqlaBackend, names: list[str]) -> dict[str, int]:
    """Store one node per name (Core executemany); return ``name -> pk``."""
    user_id, now = user_pk(backend), utc_now()
    rows = [
        {
            "uuid": uuid.uuid4(), "node_type": node_type(name), "label": name, "description": "", "ctime": now,
            "mtime": now, "attributes": {}, "extras": {}, "repository_metadata": {}, "user_id": user_id,
        }
        for name in names
    ]
    with backend.transaction() as session:
        connection = session.connection()
        connection.execute(insert(DbNode.__table__), rows)
        return dict(connection.execute(select(DbNode.label, DbNode.id).where(DbNode.label.in_(names))).all())


def add_links(backend: SqlaBackend, links: list[tuple[int, int, str]]) -> None:
    with backend.transaction() as session:
        insert_links(session.connection(), links)


class Graph:
    """The stored hand-built graph: pks by name and back."""

    def __init__(self, backend: SqlaBackend) -> None:
        self.backend = backend
        self.pk = add_nodes(backend, list(NAMES))
        self.name = {pk: name for name, pk in self.pk.items()}
        add_links(backend, [(self.pk[a], self.pk[b], kind) for a, b, kind in LINKS])

    def pks(self, *names: str) -> set[int]:
        return {self.pk[name] for name in names}

    def names(self, pks: set[int]) -> set[str]:
        return {self.name[pk] for pk in pks}

    def remaining(self) -> set[str]:
        return self.names(id_set(self.backend))


@pytest.fixture
def graph(backend, user) -> Graph:
    return Graph(backend)


# ------------------------------------------------------------------------------------------- traversal rules


@pytest.mark.parametrize(
    ("start", "rules", "expected"),
    [
        # a created data node takes its creator; the creator's inputs stay
        (["d_out2"], {}, {"d_out2", "C2"}),
        # ... and, through its creator's callers, the callers' other work, recursively
        (["d_out3"], {}, ALL_BUT_D_IN),
        (["d_out3"], {"call_work_forward": False}, {"d_out3", "C3", "W2", "W0"}),
        (["d_out3"], {"call_work_forward": False, "call_calc_forward": False}, {"d_out3", "C3", "W2", "W0"}),
        # a data node takes every process that used it, and theirs outputs
        (["d_in"], {}, ALL_BUT_D_IN | {"d_in"}),
        (["d_out1"], {}, {"d_out1", "C1", "W1", "W0", "C2", "d_out2", "W2", "C3", "d_out3"}),
        # a calculation takes its callers and, unless switched off, its outputs; never its inputs
        (["C2"], {}, {"C2", "d_out2"}),
        (["C2"], {"create_forward": False}, {"C2"}),
        (["C1"], {"create_forward": False}, {"C1", "W1", "W0", "W2", "C3"}),
        (["C1"], {"create_forward": False, "call_work_forward": False}, {"C1", "W1", "W0"}),
        (["C1"], {"create_forward": False, "call_calc_forward": False}, {"C1", "W1", "W0", "W2"}),
        # a workflow takes its callers and what it called
        (["W2"], {}, ALL_BUT_D_IN),
        (["W2"], {"call_work_forward": False}, {"W2", "W0", "C3", "d_out3"}),
        (["W2"], {"call_work_forward": False, "call_calc_forward": False}, {"W2", "W0"}),
        (["W0"], {"call_work_forward": False}, {"W0"}),
        # fixed rules may be passed with their own value
        (["C2"], {"create_backward": True, "return_forward": False, "input_calc_backward": False}, {"C2", "d_out2"}),
        # the unrelated calculation, from either end
        (["d_other_out"], {}, {"d_other_out", "C_other"}),
        (["d_other"], {}, {"d_other", "C_other", "d_other_out"}),
        (["d_out2", "d_other_out"], {}, {"d_out2", "C2", "d_other_out", "C_other"}),
    ],
)
def test_delete_rules(graph: Graph, start: list[str], rules: dict[str, bool], expected: set[str]) -> None:
    would, deleted = delete_nodes(graph.pks(*start), backend=graph.backend, **rules)
    assert (graph.names(would), deleted) == (expected, False)
    assert graph.remaining() == set(NAMES)  # dry run by default

    gone, deleted = delete_nodes(graph.pks(*start), dry_run=False, backend=graph.backend, **rules)
    assert (graph.names(gone), deleted) == (expected, True)
    assert graph.remaining() == set(NAMES) - expected
    with graph.backend.engine.connect() as connection:
        dangling = connection.execute(
            select(func.count()).select_from(DbLink).where(DbLink.input_id.in_(gone) | DbLink.output_id.in_(gone))
        ).scalar_one()
    assert dangling == 0


@pytest.mark.parametrize(
    "rules",
    [
        {"return_forward": True},
        {"create_backward": False},
        {"input_calc_backward": True},
        {"input_work_backward": True},
        {"call_calc_backward": False},
        {"call_work_backward": False},
        {"input_calc_forward": False},
        {"nonsense_forward": True},
        {"create": True},
        {"create_forward": 1},
        {"call_calc_forward": "no"},
        {"call_work_forward": None},
    ],
)
def test_invalid_rules(graph: Graph, rules: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        delete_nodes(graph.pks("C2"), dry_run=False, backend=graph.backend, **rules)
    assert graph.remaining() == set(NAMES)


def test_invalid_pks_and_dry_run(graph: Graph) -> None:
    with pytest.raises(ValidationError):
        delete_nodes(["1"], backend=graph.backend)
    with pytest.raises(ValidationError):
        delete_nodes(5, backend=graph.backend)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        delete_nodes(graph.pks("C2"), dry_run="yes", backend=graph.backend)  # type: ignore[arg-type]
    assert graph.remaining() == set(NAMES)


def test_dry_run_callable(graph: Graph) -> None:
    seen: list[set[int]] = []

    def refuse(pks: set[int]) -> bool:
        seen.append(pks)
        return True

    would, deleted = delete_nodes(graph.pks("d_out2"), dry_run=refuse, backend=graph.backend)
    assert (graph.names(would), deleted) == ({"d_out2", "C2"}, False)
    assert seen == [graph.pks("d_out2", "C2")]
    assert graph.remaining() == set(NAMES)

    gone, deleted = delete_nodes(graph.pks("d_out2"), dry_run=seen.append, backend=graph.backend)  # returns None
    assert (graph.names(gone), deleted) == ({"d_out2", "C2"}, True)
    assert graph.remaining() == set(NAMES) - {"d_out2", "C2"}


def test_graph_change_during_confirmation_deletes_nothing(graph: Graph, caplog: pytest.LogCaptureFixture) -> None:
    backend = graph.backend
    missing = max(graph.pk.values()) + 100

    def use_it_meanwhile(pks: set[int]) -> bool:
        new = add_nodes(backend, ["C_new"])["C_new"]  # another writer: a new calculation uses d_out2
        add_links(backend, [(graph.pk["d_out2"], new, "input_calc")])
        return False

    with caplog.at_level(logging.WARNING, logger="aiida_sqla_plugin.graph"):
        with pytest.raises(ConcurrentGraphChange):
            delete_nodes(graph.pks("d_out2") | {missing}, dry_run=use_it_meanwhile, backend=backend)
    assert set(graph.pk.values()) < id_set(backend)
    assert len(id_set(backend)) == len(NAMES) + 1
    assert len(caplog.records) == 1  # the missing pk is reported once


def test_missing_pks_are_skipped_with_a_warning(graph: Graph, caplog: pytest.LogCaptureFixture) -> None:
    missing = max(graph.pk.values()) + 100
    with caplog.at_level(logging.WARNING, logger="aiida_sqla_plugin.graph"):
        gone, deleted = delete_nodes(graph.pks("d_out2") | {missing}, dry_run=False, backend=graph.backend)
    assert (graph.names(gone), deleted) == ({"d_out2", "C2"}, True)
    assert [record.name for record in caplog.records] == ["aiida_sqla_plugin.graph"]
    assert str(missing) in caplog.records[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiida_sqla_plugin.graph"):
        assert delete_nodes([missing], dry_run=False, backend=graph.backend) == (set(), True)
        assert delete_nodes([], backend=graph.backend) == (set(), True)  # nothing to delete: done, as in AiiDA
    assert len(caplog.records) == 1
    assert graph.remaining() == set(NAMES) - {"d_out2", "C2"}


def test_deletion_takes_comments_logs_and_memberships(graph: Graph) -> None:
    backend, user_id = graph.backend, user_pk(graph.backend)
    with backend.transaction() as session:
        group = DbGroup(label="g", user_id=user_id)
        session.add(group)
        session.flush()
        group_id = group.id
        for name in ("C2", "d_out2", "d_out3"):
            session.add(DbGroupNode(dbgroup_id=group.id, dbnode_id=graph.pk[name]))
            session.add(DbComment(dbnode_id=graph.pk[name], user_id=user_id, content=name))
            session.add(DbLog(dbnode_id=graph.pk[name], loggername="x", levelname="INFO", message=name))
    delete_nodes(graph.pks("d_out2"), dry_run=False, backend=backend)
    with backend.engine.connect() as connection:
        assert set(connection.execute(select(DbGroupNode.dbnode_id)).scalars()) == graph.pks("d_out3")
        assert set(connection.execute(select(DbComment.content)).scalars()) == {"d_out3"}
        assert set(connection.execute(select(DbLog.message)).scalars()) == {"d_out3"}
        assert set(connection.execute(select(DbGroup.id)).scalars()) == {group_id}


def test_progress_is_reported(graph: Graph) -> None:
    calls: list[tuple[str, int, int | None]] = []
    delete_nodes(graph.pks("d_out2"), dry_run=False, backend=graph.backend, progress=lambda *call: calls.append(call))
    assert calls[0] == ("traverse", 1, None)
    assert ("traverse", 2, None) in calls
    assert calls[-1] == ("delete", 2, 2)


def test_default_backend_is_the_current_profile(graph: Graph) -> None:
    assert graph.names(delete_nodes(graph.pks("C2"))[0]) == {"C2", "d_out2"}
    assert graph.names(get_ancestors(graph.pks("d_out2"))) == {"C2", "d_out1", "C1", "d_in"}


def test_delete_group_nodes(graph: Graph, caplog: pytest.LogCaptureFixture) -> None:
    backend, user_id = graph.backend, user_pk(graph.backend)
    with backend.transaction() as session:
        groups = [DbGroup(label=label, user_id=user_id) for label in ("a", "b", "empty")]
        session.add_all(groups)
        session.flush()
        group_ids = [group.id for group in groups]
        session.add(DbGroupNode(dbgroup_id=group_ids[0], dbnode_id=graph.pk["d_out2"]))
        session.add(DbGroupNode(dbgroup_id=group_ids[1], dbnode_id=graph.pk["d_other_out"]))
        session.add(DbGroupNode(dbgroup_id=group_ids[1], dbnode_id=graph.pk["d_out2"]))

    would, deleted = delete_group_nodes([group_ids[0]], backend=backend)
    assert (graph.names(would), deleted) == ({"d_out2", "C2"}, False)
    assert graph.names(delete_group_nodes([group_ids[2]], backend=backend)[0]) == set()
    with caplog.at_level(logging.WARNING, logger="aiida_sqla_plugin.graph"):
        gone, deleted = delete_group_nodes(group_ids + [max(group_ids) + 7], dry_run=False, backend=backend)
    assert (graph.names(gone), deleted) == ({"d_out2", "C2", "d_other_out", "C_other"}, True)
    assert "groups" in caplog.text
    with backend.engine.connect() as connection:
        assert set(connection.execute(select(DbGroup.id)).scalars()) == set(group_ids)  # the groups stay
        assert connection.execute(select(func.count()).select_from(DbGroupNode)).scalar_one() == 0
    with pytest.raises(ValidationError):
        delete_group_nodes(group_ids, dry_run=False, backend=backend, call_calc_backward=False)


# ------------------------------------------------------------------------------------- ancestors, descendants


def test_ancestors_and_descendants(graph: Graph) -> None:
    backend = graph.backend

    def ancestors(*names: str, **kwargs: object) -> set[str]:
        return graph.names(get_ancestors(graph.pks(*names), backend=backend, **kwargs))

    def descendants(*names: str, **kwargs: object) -> set[str]:
        return graph.names(get_descendants(graph.pks(*names), backend=backend, **kwargs))

    assert ancestors("d_out2") == {"C2", "d_out1", "C1", "d_in"}
    assert ancestors("d_out2", max_depth=0) == set()
    assert ancestors("d_out2", max_depth=1) == {"C2"}
    assert ancestors("d_out2", max_depth=3) == {"C2", "d_out1", "C1"}
    assert ancestors("d_out2", max_depth=4) == ancestors("d_out2", max_depth=100) == ancestors("d_out2")
    # a start node is included only when it is an ancestor of another start node
    assert ancestors("d_out2", "d_out1") == {"C2", "d_out1", "C1", "d_in"}
    assert ancestors("d_out2", "d_out1", max_depth=2) == {"C2", "d_out1", "C1", "d_in"}
    assert ancestors("d_in") == set()
    assert descendants("d_in") == {"C1", "d_out1", "C2", "d_out2", "C3", "d_out3"}
    assert descendants("d_in", max_depth=2) == {"C1", "d_out1", "C3", "d_out3"}
    assert descendants("d_other") == {"C_other", "d_other_out"}
    # other link types
    assert ancestors("C1", link_types=("call_calc", "call_work")) == {"W1", "W0"}
    assert ancestors("C1", link_types="call_calc") == {"W1"}
    assert descendants("W0", link_types=["call_calc", "call_work"]) == {"W1", "W2", "C1", "C3"}
    assert descendants("W0", link_types=["call_calc", "call_work"], max_depth=1) == {"W1", "W2"}
    assert descendants("d_in", link_types=("input_work", "return")) == {"W0", "W1", "W2", "d_out1"}
    assert get_ancestors([], backend=backend) == set()
    assert get_descendants([max(graph.pk.values()) + 1], backend=backend) == set()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"link_types": ()},
        {"link_types": ("create", 3)},
        {"link_types": ("creates",)},
        {"link_types": None},
        {"max_depth": -1},
        {"max_depth": 1.5},
        {"max_depth": True},
        {"max_depth": "2"},
    ],
)
def test_ancestry_validation(graph: Graph, kwargs: dict[str, object]) -> None:
    for function in (get_ancestors, get_descendants):
        with pytest.raises(ValidationError):
            function(graph.pks("d_out2"), backend=graph.backend, **kwargs)
    with pytest.raises(ValidationError):
        get_ancestors([1.0], backend=graph.backend)  # type: ignore[list-item]


def test_deep_chain(backend, user) -> None:
    """500 alternating create / input_calc links: one recursive query, each node once."""
    pk = add_nodes(backend, [f"n{index}" for index in range(501)])
    chain = [pk[f"n{index}"] for index in range(501)]
    add_links(
        backend,
        [(chain[i], chain[i + 1], "create" if i % 2 else "input_calc") for i in range(500)]
        # a parallel shortcut every 10 nodes: many paths, still each node once
        + [(chain[i], chain[i + 2], "create") for i in range(0, 200, 10)],
    )
    assert get_ancestors([chain[-1]], backend=backend) == set(chain[:-1])
    assert get_descendants([chain[0]], backend=backend) == set(chain[1:])
    assert get_ancestors([chain[-1]], max_depth=10, backend=backend) == set(chain[490:500])
    assert get_descendants([chain[0]], max_depth=3, backend=backend) == set(chain[1:5])  # 0 -> 2 shortcut
    assert get_ancestors([chain[250]], link_types=("create",), backend=backend) == {chain[249]}


# ------------------------------------------------------------------------------------------ closure table


def install_closure_by_hand(backend: SqlaBackend, link_types: tuple[str, ...], pairs: set[tuple[int, int]]) -> None:
    """Fill db_dbpath and the setting as the closure triggers would (until closure.install_tc exists)."""
    with backend.transaction() as session:
        connection = session.connection()
        if pairs:
            connection.execute(
                insert(DbPath.__table__), [{"parent_id": p, "child_id": c, "path_count": 1} for p, c in pairs]
            )
        session.add(DbSetting(key=closure.CLOSURE_SETTING_KEY, val=list(link_types)))


def test_closure_table_answers_when_installed_for_the_same_link_types(graph: Graph) -> None:
    backend = graph.backend
    types = ("create", "input_calc")
    expected = {pk: get_ancestors([pk], link_types=types, backend=backend) for pk in graph.pk.values()}
    pairs = {(parent, child) for child, parents in expected.items() for parent in parents}
    fake = (graph.pk["d_other"], graph.pk["d_out2"])  # not in the graph: shows where an answer came from
    install_closure_by_hand(backend, types, pairs | {fake})

    truth = expected[graph.pk["d_out2"]]
    assert get_ancestors(graph.pks("d_out2"), link_types=types, backend=backend) == truth | {fake[0]}
    assert get_descendants(graph.pks("d_other"), link_types=types, backend=backend) == graph.pks(
        "C_other", "d_other_out", "d_out2"
    )
    # bounded depth or other link types: the links, not the closure
    assert get_ancestors(graph.pks("d_out2"), link_types=types, max_depth=9, backend=backend) == truth
    assert get_ancestors(graph.pks("d_out2"), link_types=("create",), backend=backend) == graph.pks("C2")


def test_same_answers_with_and_without_the_closure(graph: Graph) -> None:
    backend = graph.backend
    types = ("create", "input_calc")
    before = {
        pk: (
            get_ancestors([pk], link_types=types, backend=backend),
            get_descendants([pk], link_types=types, backend=backend),
        )
        for pk in graph.pk.values()
    }
    with backend.transaction() as session:
        closure.install_tc(session, types)  # type: ignore[attr-defined]
    with backend.engine.connect() as connection:
        assert closure.installed_link_types(connection) == frozenset(types)
    after = {
        pk: (
            get_ancestors([pk], link_types=types, backend=backend),
            get_descendants([pk], link_types=types, backend=backend),
        )
        for pk in graph.pk.values()
    }
    assert after == before

    # deleting nodes removes their links; the triggers keep db_dbpath exact, so both ways still agree
    delete_nodes(graph.pks("C2"), dry_run=False, backend=backend)
    for pk in graph.pk.values():
        if pk in graph.pks("C2", "d_out2"):
            continue
        for function in (get_ancestors, get_descendants):
            from_closure = function([pk], link_types=types, backend=backend)
            from_links = function([pk], link_types=types, max_depth=len(NAMES), backend=backend)
            assert from_closure == from_links
