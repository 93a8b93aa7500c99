"""A seeded synthetic provenance graph, stored with :func:`~aiida_sqla_plugin.bulk.bulk_insert`.

Workflows take data inputs (``input_work``), call calculations (``call_calc``) and sub-workflows
(``call_work``) and return some of the results (``return``); calculations take 1-3 data inputs
(``input_calc``) and create 1-2 outputs (``create``). Later calculations reuse earlier outputs, preferring
recent ones, so create/input_calc chains get deep. Nodes are generated in creation order and every link goes
from an earlier to a later node, so the graph is acyclic; ``ctime`` grows with that order over ``days`` days.
The same ``seed`` and ``nodes`` give the same graph (except for the random UUIDs).
"""
from __future__ import annotations

import datetime
import random
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .bulk import bulk_insert
from .models import DbComputer, DbLink, DbNode, DbUser
from .progress import ProgressCallback

if TYPE_CHECKING:
    from .backend import SqlaBackend

__all__ = ("SYNTHETIC_EPOCH", "SyntheticGraph", "build_graph", "node_rows")

#: Default ``ctime`` of the first synthetic node (fixed, so a seed always gives the same times).
SYNTHETIC_EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
SYNTHETIC_USER_EMAIL = "synthetic@example.org"
SYNTHETIC_COMPUTER_LABEL = "localhost"
#: Rows per bulk_insert call, so that memory stays bounded for millions of nodes.
STORE_CHUNK = 100_000

DATA_TYPES = (
    "data.core.int.Int.",
    "data.core.float.Float.",
    "data.core.str.Str.",
    "data.core.dict.Dict.",
)
CALCJOB_TYPE = "process.calculation.calcjob.CalcJobNode."
CALCFUNCTION_TYPE = "process.calculation.calcfunction.CalcFunctionNode."
WORKCHAIN_TYPE = "process.workflow.workchain.WorkChainNode."
_PROCESSES = {
    CALCJOB_TYPE: ("aiida.calculations:core.arithmetic.add", "ArithmeticAddCalculation"),
    CALCFUNCTION_TYPE: ("aiida.calculations:core.templatereplacer", "multiply"),
    WORKCHAIN_TYPE: ("aiida.workflows:core.arithmetic.multiply_add", "MultiplyAddWorkChain"),
}
_MAX_WORKFLOW_LEVEL = 2
#: Lineages (independent projects) worked on at the same time; their workflows interleave in time.
_ACTIVE_LINEAGES = 8
#: Size bounds (nodes) of an ordinary lineage, and the largest size of the first, deep one.
_LINEAGE_SIZE = (10, 120)
_DEEP_LINEAGE_MAX = 1000


@dataclass(frozen=True)
class SyntheticGraph:
    """What :func:`build_graph` stored; id tuples are in creation order."""

    user_id: int
    node_ids: tuple[int, ...]
    data_ids: tuple[int, ...]
    calc_ids: tuple[int, ...]
    workflow_ids: tuple[int, ...]
    link_count: int
    link_counts: Mapping[str, int] = field(compare=False)
    #: A data node at the end of the longest create/input_calc chain (None for an empty graph).
    deepest_node: int | None
    #: Number of create/input_calc links on that chain.
    depth: int
    #: Wall-clock seconds spent storing ``"nodes"`` and ``"links"`` (bulk_insert calls, generation excluded).
    store_seconds: Mapping[str, float] = field(default_factory=dict, compare=False)


@dataclass
class _Lineage:
    """A project: chained workflows that reuse each other's results (and shared root data)."""

    target: int
    size: int = 0
    pool: list[int] = field(default_factory=list)


class _Generator:
    """Builds node specs and links between node indices (creation order) within a node budget.

    Data is reused only within a lineage (plus a few shared root nodes), which keeps ancestor sets, and so
    the closure, bounded whatever the total size, while the first lineage grows one long chain.
    """

    def __init__(self, nodes: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.budget = nodes
        self.kinds: list[str] = []  # node_type per index
        self.attributes: list[dict[str, Any]] = []
        self.labels: list[str] = []
        self.depth: list[int] = []  # longest create/input_calc chain ending at the node
        self.links: list[tuple[int, int, str, str]] = []  # (input index, output index, type, label)
        self.data_indices: list[int] = []
        self.roots: list[int] = []

    @property
    def remaining(self) -> int:
        return self.budget - len(self.kinds)

    def _node(self, node_type: str, attributes: dict[str, Any], label: str, depth: int) -> int:
        self.kinds.append(node_type)
        self.attributes.append(attributes)
        self.labels.append(label)
        self.depth.append(depth)
        return len(self.kinds) - 1

    def data(self, lineage: _Lineage | None, depth: int = 0) -> int:
        rng = self.rng
        node_type = rng.choice(DATA_TYPES)
        if node_type == "data.core.int.Int.":
            attributes: dict[str, Any] = {"value": rng.randint(-1000, 1000)}
        elif node_type == "data.core.float.Float.":
            attributes = {"value": round(rng.uniform(-1e3, 1e3), 6)}
        elif node_type == "data.core.str.Str.":
            attributes = {"value": f"text-{rng.randrange(10**6)}"}
        else:
            attributes = {"parameters": {"cutoff": rng.choice((30, 40, 50)), "smearing": "gaussian", "kpoints": [4, 4, 4]}}
        index = self._node(node_type, attributes, "", depth)
        self.data_indices.append(index)
        if lineage is not None:
            lineage.pool.append(index)
        return index

    def pick(self, lineage: _Lineage) -> int:
        """An input to continue the lineage's work: mostly one of its latest results, so chains grow."""
        if self.rng.random() < 0.8:
            return self.rng.choice(lineage.pool[-4:])
        return self.rng.choice(lineage.pool)

    def extra_input(self, lineage: _Lineage) -> int:
        """A further input: usually shared root data, sometimes an earlier result (making diamonds)."""
        if self.roots and self.rng.random() < 0.8:
            return self.rng.choice(self.roots)
        return self.rng.choice(lineage.pool)

    @staticmethod
    def _process_attributes(node_type: str) -> dict[str, Any]:
        return {"process_state": "finished", "exit_status": 0, "process_label": _PROCESSES[node_type][1], "sealed": True}

    def calculation(self, lineage: _Lineage, first_input: int) -> tuple[int, list[int]]:
        """A calculation reading ``first_input`` and 0-2 more data nodes; returns it and its outputs."""
        rng = self.rng
        inputs = [first_input]
        for _ in range(rng.randint(0, 2)):
            candidate = self.extra_input(lineage)
            if candidate not in inputs:
                inputs.append(candidate)
        node_type = CALCJOB_TYPE if rng.random() < 0.7 else CALCFUNCTION_TYPE
        depth = max(self.depth[i] for i in inputs) + 1
        calc = self._node(node_type, self._process_attributes(node_type), _PROCESSES[node_type][1], depth)
        for label, source in zip(("x", "y", "z"), inputs):
            self.links.append((source, calc, "input_calc", label))
        outputs = []
        for label in ("result", "remote_folder")[: min(rng.randint(1, 2), self.remaining)]:
            output = self.data(lineage, depth + 1)
            self.links.append((calc, output, "create", label))
            outputs.append(output)
        return calc, outputs

    def workflow(self, lineage: _Lineage, level: int, inputs: list[int]) -> tuple[int, list[int]]:
        """A workflow running 1-4 chained steps on ``inputs``; returns it and the data it returns."""
        rng = self.rng
        workflow = self._node(WORKCHAIN_TYPE, self._process_attributes(WORKCHAIN_TYPE), _PROCESSES[WORKCHAIN_TYPE][1], 0)
        for label, source in zip(("x", "y"), inputs):
            self.links.append((source, workflow, "input_work", label))
        current = inputs[0]
        produced: list[int] = []
        for step in range(rng.randint(1, 4)):
            if self.remaining < 2:
                break
            if level < _MAX_WORKFLOW_LEVEL and self.remaining >= 3 and rng.random() < 0.2:
                child, results = self.workflow(lineage, level + 1, [current])
                self.links.append((workflow, child, "call_work", f"CALL_WORK_{step}"))
            else:
                child, results = self.calculation(lineage, current)
                self.links.append((workflow, child, "call_calc", f"CALL_CALC_{step}"))
            if results:
                current = results[0]
                produced.extend(results)
        returned = produced[-1:] + [out for out in produced[:-1] if rng.random() < 0.2]
        for number, output in enumerate(returned):
            self.links.append((workflow, output, "return", "result" if number == 0 else f"result_{number}"))
        return workflow, returned

    def run(self) -> None:
        rng = self.rng
        for _ in range(min(self.budget, max(2, min(200, self.budget // 200)))):
            self.roots.append(self.data(None))
        active: list[_Lineage] = []
        first = True
        while self.remaining > 0:
            if self.remaining >= 4 and len(active) < _ACTIVE_LINEAGES:
                target = max(_LINEAGE_SIZE[0], min(_DEEP_LINEAGE_MAX, self.budget // 10)) if first else rng.randint(*_LINEAGE_SIZE)
                first = False
                lineage = _Lineage(target)
                self.data(lineage)  # its own starting data, e.g. an uploaded structure
                active.append(lineage)
                continue
            if self.remaining < 3 or not active:
                self.data(None)
                continue
            lineage = rng.choice(active)
            before = len(self.kinds)
            inputs = [self.pick(lineage)]
            if rng.random() < 0.5:
                second = self.extra_input(lineage)
                if second != inputs[0]:
                    inputs.append(second)
            self.workflow(lineage, 0, inputs)
            lineage.size += len(self.kinds) - before
            if lineage.size >= lineage.target:
                active.remove(lineage)


def _user_id(backend: SqlaBackend) -> int:
    with backend.engine.connect() as connection:
        found = connection.execute(select(DbUser.id).order_by(DbUser.id).limit(1)).scalar_one_or_none()
    if found is not None:
        return int(found)
    return bulk_insert(backend, DbUser, [{"email": SYNTHETIC_USER_EMAIL, "first_name": "Synthetic", "last_name": "User"}])[0]


def _computer_id(backend: SqlaBackend) -> int:
    with backend.engine.connect() as connection:
        found = connection.execute(
            select(DbComputer.id).where(DbComputer.label == SYNTHETIC_COMPUTER_LABEL)
        ).scalar_one_or_none()
    if found is not None:
        return int(found)
    row = {"label": SYNTHETIC_COMPUTER_LABEL, "hostname": "localhost", "scheduler_type": "core.direct", "transport_type": "core.local"}
    return bulk_insert(backend, DbComputer, [row])[0]


def _offset_progress(progress: ProgressCallback | None, offset: int, total: int) -> ProgressCallback | None:
    if progress is None:
        return None

    overall = total

    def report_overall(description: str, done: int, total: int | None) -> None:
        # ``total`` is the chunk's own: the overall one is reported instead.
        progress(description, offset + done, overall)

    return report_overall


def _node_rows(
    generator: _Generator,
    begin: int,
    end: int,
    user_id: int,
    computer_id: int | None,
    start: datetime.datetime,
    days: int,
) -> Iterator[dict[str, Any]]:
    span = datetime.timedelta(days=days)
    for index in range(begin, end):
        node_type = generator.kinds[index]
        ctime = start + span * (index / max(generator.budget, 1))
        row: dict[str, Any] = {
            "node_type": node_type,
            "label": generator.labels[index],
            "attributes": generator.attributes[index],
            "ctime": ctime,
            "mtime": ctime,
            "user_id": user_id,
        }
        process = _PROCESSES.get(node_type)
        if process is not None:
            row["process_type"] = process[0]
        if node_type == CALCJOB_TYPE:
            row["dbcomputer_id"] = computer_id
        yield row


def node_rows(
    nodes: int,
    user_id: int,
    computer_id: int | None = None,
    seed: int = 0,
    days: int = 30,
    start: datetime.datetime = SYNTHETIC_EPOCH,
) -> Iterator[dict[str, Any]]:
    """The node rows :func:`build_graph` would store (without links), for bulk_insert; e.g. for benchmarks."""
    generator = _Generator(nodes, seed)
    generator.run()
    return _node_rows(generator, 0, nodes, user_id, computer_id, start, days)


def build_graph(
    backend: SqlaBackend,
    nodes: int,
    seed: int = 0,
    days: int = 30,
    progress: ProgressCallback | None = None,
    start: datetime.datetime = SYNTHETIC_EPOCH,
) -> SyntheticGraph:
    """Store a seeded synthetic provenance graph of exactly ``nodes`` nodes with bulk inserts.

    Uses the first user (creating ``synthetic@example.org`` if there is none) and a computer labelled
    ``localhost`` for calculation jobs. ``ctime`` runs from ``start`` over ``days`` days in creation order.
    Nodes and links are stored in chunks of :data:`STORE_CHUNK` rows, each chunk a transaction of its own.
    """
    if nodes < 0 or days <= 0:
        raise ValueError("nodes must be >= 0 and days > 0")
    generator = _Generator(nodes, seed)
    generator.run()
    user_id = _user_id(backend)
    computer_id = _computer_id(backend) if CALCJOB_TYPE in generator.kinds else None

    clock = time.perf_counter()
    ids: list[int] = []
    for begin in range(0, nodes, STORE_CHUNK):
        rows = list(_node_rows(generator, begin, min(begin + STORE_CHUNK, nodes), user_id, computer_id, start, days))
        ids.extend(bulk_insert(backend, DbNode, rows, _offset_progress(progress, begin, nodes)))
    node_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    links = generator.links
    for begin in range(0, len(links), STORE_CHUNK):
        chunk = [
            {"input_id": ids[source], "output_id": ids[target], "type": link_type, "label": label}
            for source, target, link_type, label in links[begin : begin + STORE_CHUNK]
        ]
        bulk_insert(backend, DbLink, chunk, _offset_progress(progress, begin, len(links)))
    link_seconds = time.perf_counter() - clock

    kinds = generator.kinds
    data = tuple(ids[i] for i, kind in enumerate(kinds) if kind.startswith("data."))
    pool = generator.data_indices
    deepest_index = max(pool, key=lambda i: (generator.depth[i], -i)) if pool else None
    return SyntheticGraph(
        user_id=user_id,
        node_ids=tuple(ids),
        data_ids=data,
        calc_ids=tuple(ids[i] for i, kind in enumerate(kinds) if kind.startswith("process.calculation.")),
        workflow_ids=tuple(ids[i] for i, kind in enumerate(kinds) if kind.startswith("process.workflow.")),
        link_count=len(links),
        link_counts=MappingProxyType(dict(Counter(link[2] for link in links))),
        deepest_node=ids[deepest_index] if deepest_index is not None else None,
        depth=generator.depth[deepest_index] if deepest_index is not None else 0,
        store_seconds=MappingProxyType({"nodes": node_seconds, "links": link_seconds}),
    )
