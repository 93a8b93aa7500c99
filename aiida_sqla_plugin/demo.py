"""The demo: a profile (SQLite by default), migrated, a synthetic provenance graph stored, then reports on it.

:func:`run_demo` is what ``aiida-sqla demo`` runs; it returns a :class:`DemoResult` and never prints (notes go
to the ``note`` callback).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import ConfigFile, build_profile
from .graph import delete_nodes, get_ancestors
from .links import DEFAULT_CLOSURE_LINK_TYPES
from .migration import migrate_if_needed
from .plugins import load_backend
from .progress import ProgressCallback
from .reports import count_entities
from .synthetic import SyntheticGraph, build_graph

__all__ = ("DEMO_PROFILE", "DemoResult", "run_demo")

#: Profile the demo uses unless told otherwise.
DEMO_PROFILE = "demo"


@dataclass(frozen=True)
class DemoResult:
    """What the demo stored and found."""

    profile: str
    location: str
    graph: SyntheticGraph
    counts: dict[str, int]
    statistics: dict[str, Any]
    ancestry_types: list[str]
    ancestors: list[int]
    workflow: int | None
    doomed: list[int]

    def as_dict(self) -> dict[str, Any]:
        """Stable JSON-ready keys (as ``aiida-sqla demo --json`` prints them)."""
        graph = self.graph
        return {
            "profile": self.profile,
            "location": self.location,
            "stored": {
                "nodes": len(graph.node_ids), "data": len(graph.data_ids), "calculations": len(graph.calc_ids),
                "workflows": len(graph.workflow_ids), "links": graph.link_count, "link_types": dict(graph.link_counts),
                "seconds": {key: round(value, 3) for key, value in graph.store_seconds.items()},
            },
            "counts": self.counts,
            "creation_statistics": {"total": self.statistics["total"], "types": self.statistics["types"],
                                    "days": len(self.statistics["ctime_by_day"])},
            "ancestors": {"node": graph.deepest_node, "depth": graph.depth, "link_types": self.ancestry_types,
                          "count": len(self.ancestors), "pks": self.ancestors},
            "dry_run_delete": {"workflow": self.workflow, "count": len(self.doomed), "pks": self.doomed},
        }


def _ignore(message: str) -> None:
    """Drop a note."""


def run_demo(
    config_file: ConfigFile,
    name: str = DEMO_PROFILE,
    nodes: int = 10_000,
    progress: ProgressCallback | None = None,
    note: Callable[[str], None] = _ignore,
) -> DemoResult:
    """Create the profile ``name`` if ``config_file`` lacks it, migrate it if needed, store a graph of ``nodes``.

    Then count, take the creation statistics, the ancestors of the end of the deepest chain and a dry-run deletion
    of the first workflow. Running it again adds another graph.
    """
    if name not in config_file.read().profiles:
        profile = config_file.add_profile(build_profile(name))
        note(f"Created profile {name!r}: SQLite file {profile.storage_config['url'].removeprefix('sqlite:///')}")
    loaded = load_backend(config_file.get_profile(name))
    plan = migrate_if_needed(loaded.backend_manager)
    if plan.applied:
        note(f"Migrated profile {name!r} to {plan.report.code_revision} ({len(plan.applied)} step(s))")
    backend = loaded.backend
    graph = build_graph(backend, nodes, seed=0, progress=progress)
    ancestry_types = list(DEFAULT_CLOSURE_LINK_TYPES)
    output = graph.deepest_node
    ancestors = sorted(get_ancestors([output], link_types=ancestry_types, backend=backend)) if output is not None else []
    workflow = graph.workflow_ids[0] if graph.workflow_ids else None
    doomed: set[int] = set()
    if workflow is not None:
        doomed, _ = delete_nodes([workflow], dry_run=True, backend=backend)
    return DemoResult(
        profile=name, location=plan.report.location, graph=graph, counts=count_entities(backend.engine),
        statistics=loaded.query_manager(backend).get_creation_statistics(), ancestry_types=ancestry_types,
        ancestors=ancestors, workflow=workflow, doomed=sorted(doomed),
    )
