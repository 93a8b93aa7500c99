"""Pictures of the provenance: a node's neighbourhood as a Graphviz digraph, a Mermaid flowchart or JSON.

The neighbourhood is gathered set-based: the ancestry functions of :mod:`aiida_sqla_plugin.graph` (bounded by
depth), then one query for the nodes and one for the links among them, each with its ids as one bound parameter.
``dot``, ``mermaid`` and ``json`` output need no Graphviz program; ``svg``, ``png`` and ``pdf`` need ``dot``.

Needs the optional python package ``graphviz`` (``pip install 'aiida-sqla-plugin[draw]'``) for Digraphs.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, select

from .exceptions import DrawingTooLarge, MissingDependency, NotExistent, ValidationError
from .graph import _ids, _validate_depth, get_ancestors, get_descendants
from .links import LINK_TYPES
from .links import validate_link_types as _validate_link_types
from .models import DbLink, DbNode
from .sql import id_select

if TYPE_CHECKING:
    import graphviz

    from .backend import SqlaBackend

__all__ = (
    "EDGE_STYLES",
    "FORMATS",
    "NODE_STYLES",
    "Neighbourhood",
    "gather_neighbourhood",
    "node_kind",
    "provenance_graph",
    "to_digraph",
    "to_json",
    "to_mermaid",
    "write_neighbourhood",
)

#: Output formats of :func:`write_neighbourhood`; the first three need the Graphviz program ``dot``.
FORMATS: tuple[str, ...] = ("svg", "png", "pdf", "dot", "mermaid", "json")
_RENDERED = frozenset({"svg", "png", "pdf"})

#: Node types whose ``attributes["value"]`` is shown in the picture.
SMALL_DATA_TYPES: tuple[str, ...] = (
    "data.core.int.Int.",
    "data.core.float.Float.",
    "data.core.str.Str.",
    "data.core.bool.Bool.",
)
_VALUE_CHARS = 40

#: Graphviz attributes per node kind (AiiDA's colours: data green ellipses, processes rectangles).
NODE_STYLES: dict[str, dict[str, str]] = {
    "data": {"shape": "ellipse", "style": "filled", "fillcolor": "#8cd499", "color": "#3d7a49"},
    "calculation": {"shape": "rectangle", "style": "filled", "fillcolor": "#de707f", "color": "#8f2c3a"},
    "workflow": {"shape": "rectangle", "style": "filled,rounded", "fillcolor": "#e38851", "color": "#8f4a1f"},
    "other": {"shape": "octagon", "style": "filled", "fillcolor": "#d0d0d0", "color": "#606060"},
}
#: Extra attributes of the start nodes.
START_STYLE: dict[str, str] = {"penwidth": "3.5", "color": "#1a3d8f", "peripheries": "2"}

#: Graphviz attributes per link type; Mermaid uses the arrow and colour too.
EDGE_STYLES: dict[str, dict[str, str]] = {
    "input_calc": {"style": "solid", "color": "#000000", "penwidth": "1.2"},
    "input_work": {"style": "dashed", "color": "#555555", "penwidth": "1.2"},
    "create": {"style": "solid", "color": "#1f5f99", "penwidth": "2.2"},
    "return": {"style": "dashed", "color": "#2e7d32", "penwidth": "1.6"},
    "call_calc": {"style": "dotted", "color": "#b34a00", "penwidth": "1.6"},
    "call_work": {"style": "dotted", "color": "#7b1fa2", "penwidth": "2.2"},
}
_MERMAID_ARROWS = {"solid": "-->", "dashed": "-.->", "dotted": "-.->"}
_KIND_TITLES = {"data": "Data", "calculation": "Calculation", "workflow": "Workflow", "other": "Other node"}


@dataclass(frozen=True)
class DrawnNode:
    """One node of a picture."""

    pk: int
    node_type: str
    process_type: str | None
    label: str
    kind: str
    short_type: str
    process_label: str | None
    value: Any
    start: bool

    def lines(self) -> list[str]:
        """The text lines of the node's label in a picture."""
        lines = [f"{self.short_type} #{self.pk}"]
        if self.process_label and self.process_label != self.label:
            lines.append(self.process_label)
        if self.label:
            lines.append(self.label)
        if self.value is not None:
            text = json.dumps(self.value) if isinstance(self.value, (bool, str)) else repr(self.value)
            lines.append(text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 3] + "...")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.pk, "node_type": self.node_type, "process_type": self.process_type, "label": self.label,
            "kind": self.kind, "short_type": self.short_type, "process_label": self.process_label,
            "value": self.value, "start": self.start,
        }


@dataclass(frozen=True)
class DrawnEdge:
    """One link of a picture."""

    source: int
    target: int
    link_type: str
    label: str

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "type": self.link_type, "label": self.label}


@dataclass(frozen=True)
class Neighbourhood:
    """The nodes and links of a picture, in pk order (links by source, target, type, label)."""

    start: tuple[int, ...]
    nodes: tuple[DrawnNode, ...]
    edges: tuple[DrawnEdge, ...]
    link_types: tuple[str, ...]
    ancestor_depth: int | None
    descendant_depth: int | None


def node_kind(node_type: str) -> str:
    """``data``, ``calculation``, ``workflow`` or ``other`` for an AiiDA node type string."""
    if node_type.startswith("data."):
        return "data"
    if node_type.startswith("process.calculation."):
        return "calculation"
    if node_type.startswith("process.workflow."):
        return "workflow"
    return "other"


def _short_type(node_type: str) -> str:
    parts = [part for part in node_type.split(".") if part]
    return parts[-1] if parts else "Node"


def _validate_max_nodes(max_nodes: int | None) -> int | None:
    if max_nodes is None:
        return None
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1:
        raise ValidationError(f"max_nodes must be None or an integer >= 1, not {max_nodes!r}")
    return max_nodes


def _get_backend(backend: SqlaBackend | None) -> SqlaBackend:
    from .backend import get_backend  # noqa: PLC0415 - backend imports most modules; keep this one light

    return get_backend(backend)


def gather_neighbourhood(
    pks: Iterable[int],
    ancestor_depth: int | None = 1,
    descendant_depth: int | None = 1,
    link_types: Collection[str] | str | None = None,
    max_nodes: int | None = 500,
    backend: SqlaBackend | None = None,
) -> Neighbourhood:
    """The nodes ``pks``, their ancestors up to ``ancestor_depth`` and descendants down to ``descendant_depth``
    links of ``link_types`` (None: every type; a depth None: no limit), and every such link among them.

    Raises :class:`NotExistent` for unknown start pks and :class:`DrawingTooLarge` when there would be more than
    ``max_nodes`` nodes (None: no limit), before reading any node row. Runs in the caller's transaction if any.
    """
    start = _ids(pks, "pks")
    if not start:
        raise ValidationError("pks must name at least one node to draw")
    types = _validate_link_types(LINK_TYPES if link_types is None else link_types)
    up = _validate_depth(ancestor_depth)
    down = _validate_depth(descendant_depth)
    limit = _validate_max_nodes(max_nodes)
    backend = _get_backend(backend)
    with backend.transaction() as session:
        ids = set(start)
        if up != 0:
            ids |= get_ancestors(start, link_types=types, max_depth=up, backend=backend)
        if down != 0:
            ids |= get_descendants(start, link_types=types, max_depth=down, backend=backend)
        if limit is not None and len(ids) > limit:
            raise DrawingTooLarge(
                f"the picture would hold {len(ids)} nodes, more than max_nodes={limit}; lower the depths "
                f"(--ancestors/--descendants), restrict --link-types, or raise --max-nodes to at least {len(ids)}",
                len(ids), limit,
            )
        connection = session.connection()
        dialect = connection.dialect.name
        wanted = case(
            (DbNode.node_type.in_(SMALL_DATA_TYPES), DbNode.attributes),
            (DbNode.node_type.like("process.%"), DbNode.attributes),
            else_=None,
        )
        node_rows = connection.execute(
            select(DbNode.id, DbNode.node_type, DbNode.process_type, DbNode.label, wanted)
            .where(DbNode.id.in_(id_select(dialect, ids)))
            .order_by(DbNode.id)
        ).all()
        link_rows = connection.execute(
            select(DbLink.input_id, DbLink.output_id, DbLink.type, DbLink.label)
            .where(
                DbLink.input_id.in_(id_select(dialect, ids)),
                DbLink.output_id.in_(id_select(dialect, ids)),
                DbLink.type.in_(types),
            )
            .order_by(DbLink.input_id, DbLink.output_id, DbLink.type, DbLink.label)
        ).all()
    missing = start - {row[0] for row in node_rows}
    if missing:
        raise NotExistent(
            f"no node with pk {', '.join(map(str, sorted(missing)[:20]))}; check the pks to draw "
            "(aiida-sqla storage info shows how many nodes there are)"
        )
    nodes = []
    for pk, node_type, process_type, label, attributes in node_rows:
        attributes = attributes if isinstance(attributes, dict) else {}
        kind = node_kind(node_type)
        process_label = attributes.get("process_label") if kind in ("calculation", "workflow") else None
        nodes.append(DrawnNode(
            pk=pk, node_type=node_type, process_type=process_type, label=label or "", kind=kind,
            short_type=_short_type(node_type),
            process_label=process_label if isinstance(process_label, str) else None,
            value=attributes.get("value") if node_type in SMALL_DATA_TYPES else None,
            start=pk in start,
        ))
    edges = tuple(DrawnEdge(source, target, link_type, label) for source, target, link_type, label in link_rows)
    return Neighbourhood(tuple(sorted(start)), tuple(nodes), edges, types, up, down)


# ---------------------------------------------------------------------------------------------------- Graphviz


def _graphviz() -> Any:
    try:
        import graphviz  # noqa: PLC0415 - optional dependency
    except ImportError as error:
        raise MissingDependency(
            "drawing provenance graphs needs the python package 'graphviz': "
            "pip install 'aiida-sqla-plugin[draw]' (or pip install graphviz)"
        ) from error
    return graphviz


def node_name(pk: int) -> str:
    """The Graphviz node name of the node ``pk`` (also the ``<title>`` of its SVG element)."""
    return f"N{pk}"


def _add_legend(digraph: graphviz.Digraph, kinds: Iterable[str], link_types: Iterable[str]) -> None:
    """A 'Legend' cluster: a column of sample nodes (one per kind drawn, and a start node) beside a column of
    sample links (one per link type drawn), each a horizontal arrow between two points."""
    with digraph.subgraph(name="cluster_legend") as legend:
        legend.attr(label="Legend", fontsize="12", style="rounded", color="#9e9e9e", fontname="Helvetica")
        legend.attr("node", fontsize="10", fontname="Helvetica", margin="0.08,0.03", height="0.3")
        legend.attr("edge", fontsize="9", fontname="Helvetica", arrowsize="0.7")
        samples = [(f"legend_{kind}", _KIND_TITLES[kind], NODE_STYLES[kind]) for kind in kinds]
        samples.append(("legend_start", "start node", {**NODE_STYLES["other"], "fillcolor": "#ffffff", **START_STYLE}))
        for (name, title, style), (below, _, _) in zip(samples, [*samples[1:], (None, "", {})]):
            legend.node(name, title, **style)
            if below is not None:
                legend.edge(name, below, style="invis")
        previous: str | None = None
        for link_type in link_types:
            tail, head = f"legend_{link_type}_from", f"legend_{link_type}_to"
            with legend.subgraph() as row:
                row.attr(rank="same")
                row.node(tail, "", shape="point", width="0.05")
                row.node(head, "", shape="point", width="0.05")
            legend.edge(tail, head, label=f" {link_type} ", minlen="2", **EDGE_STYLES[link_type])
            if previous is not None:
                legend.edge(previous, tail, style="invis", weight="10")
            previous = tail


def to_digraph(neighbourhood: Neighbourhood, legend: bool = True) -> graphviz.Digraph:
    """The neighbourhood as a Graphviz ``Digraph``: nodes by kind, start nodes highlighted, links by type."""
    graphviz = _graphviz()
    start = ", ".join(map(str, neighbourhood.start))
    digraph = graphviz.Digraph(name="provenance", comment=f"provenance of node(s) {start}")
    digraph.attr(rankdir="TB", fontname="Helvetica", labelloc="t", fontsize="14",
                 label=f"Provenance of node(s) {start}", newrank="true")
    digraph.attr("node", fontname="Helvetica", fontsize="11", margin="0.12,0.05")
    digraph.attr("edge", fontname="Helvetica", fontsize="9", arrowsize="0.7")
    for node in neighbourhood.nodes:
        attributes = dict(NODE_STYLES[node.kind])
        if node.start:
            attributes.update(START_STYLE)
        # DOT's own line break (backslash n) keeps each statement on one line; literal backslashes are doubled.
        label = "\\n".join(line.replace("\\", "\\\\") for line in node.lines())
        digraph.node(node_name(node.pk), label, tooltip=node.node_type, **attributes)
    for edge in neighbourhood.edges:
        digraph.edge(node_name(edge.source), node_name(edge.target), label=edge.label,
                     tooltip=edge.link_type, **EDGE_STYLES[edge.link_type])
    if legend:
        kinds = [kind for kind in NODE_STYLES if any(node.kind == kind for node in neighbourhood.nodes)]
        drawn_types = [link_type for link_type in LINK_TYPES if link_type in neighbourhood.link_types]
        _add_legend(digraph, kinds, drawn_types)
    return digraph


def provenance_graph(
    pks: Iterable[int],
    ancestor_depth: int | None = 1,
    descendant_depth: int | None = 1,
    link_types: Collection[str] | str | None = None,
    max_nodes: int | None = 500,
    backend: SqlaBackend | None = None,
) -> graphviz.Digraph:
    """The provenance neighbourhood of ``pks`` as a Graphviz ``Digraph`` (see :func:`gather_neighbourhood`)."""
    _graphviz()  # fail before querying when the package is missing
    return to_digraph(gather_neighbourhood(pks, ancestor_depth, descendant_depth, link_types, max_nodes, backend))


# ---------------------------------------------------------------------------------------------------- text formats


def _mermaid_text(lines: Iterable[str]) -> str:
    escaped = []
    for line in lines:
        for char, entity in (("&", "#amp;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
            line = line.replace(char, entity)
        escaped.append(line)
    return "<br/>".join(escaped)


_MERMAID_SHAPES = {"data": ('(["', '"])'), "calculation": ('["', '"]'), "workflow": ('("', '")'), "other": ('{{"', '"}}')}


def to_mermaid(neighbourhood: Neighbourhood) -> str:
    """The neighbourhood as a Mermaid flowchart (renders in Markdown viewers that support Mermaid)."""
    lines = ["flowchart TB"]
    for node in neighbourhood.nodes:
        opening, closing = _MERMAID_SHAPES[node.kind]
        lines.append(f"    {node_name(node.pk)}{opening}{_mermaid_text(node.lines())}{closing}")
    link_styles: list[str] = []
    for index, edge in enumerate(neighbourhood.edges):
        style = EDGE_STYLES[edge.link_type]
        arrow = _MERMAID_ARROWS[style["style"]]
        text = _mermaid_text([f"{edge.link_type}: {edge.label}" if edge.label else edge.link_type])
        lines.append(f'    {node_name(edge.source)} {arrow}|"{text}"| {node_name(edge.target)}')
        link_styles.append(f"    linkStyle {index} stroke:{style['color']},stroke-width:{style['penwidth']}px")
    lines.extend(link_styles)
    for kind, style in NODE_STYLES.items():
        members = [node_name(node.pk) for node in neighbourhood.nodes if node.kind == kind]
        if members:
            lines.append(f"    classDef {kind} fill:{style['fillcolor']},stroke:{style['color']},color:#000000")
            lines.append(f"    class {','.join(members)} {kind}")
    starts = [node_name(node.pk) for node in neighbourhood.nodes if node.start]
    if starts:
        lines.append(f"    classDef start stroke:{START_STYLE['color']},stroke-width:4px")
        lines.append(f"    class {','.join(starts)} start")
    return "\n".join(lines) + "\n"


def to_json(neighbourhood: Neighbourhood) -> dict[str, Any]:
    """The neighbourhood as ``{"start", "link_types", "ancestor_depth", "descendant_depth", "nodes", "edges"}``."""
    return {
        "start": list(neighbourhood.start),
        "link_types": list(neighbourhood.link_types),
        "ancestor_depth": neighbourhood.ancestor_depth,
        "descendant_depth": neighbourhood.descendant_depth,
        "nodes": [node.as_dict() for node in neighbourhood.nodes],
        "edges": [edge.as_dict() for edge in neighbourhood.edges],
    }


def _require_dot() -> None:
    if shutil.which("dot") is None:
        raise MissingDependency(
            "svg, png and pdf output need the Graphviz program 'dot', which is not on PATH; install Graphviz "
            "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz; conda: conda install graphviz) "
            "or choose --format dot, mermaid or json"
        )


def write_neighbourhood(neighbourhood: Neighbourhood, path: str | Path, file_format: str | None = None) -> Path:
    """Write the neighbourhood to ``path`` as ``file_format`` (one of :data:`FORMATS`; None: from the suffix).

    ``svg``, ``png`` and ``pdf`` are rendered by the Graphviz program ``dot`` (:class:`MissingDependency` if absent).
    """
    path = Path(path)
    if file_format is None:
        file_format = {".gv": "dot", ".mmd": "mermaid"}.get(path.suffix.lower(), path.suffix.lower().lstrip("."))
    if file_format not in FORMATS:
        raise ValidationError(f"unknown picture format {file_format!r}; choose one of {', '.join(FORMATS)}")
    if file_format == "mermaid":
        path.write_text(to_mermaid(neighbourhood), encoding="utf-8")
    elif file_format == "json":
        path.write_text(json.dumps(to_json(neighbourhood), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    else:
        digraph = to_digraph(neighbourhood)
        if file_format == "dot":
            path.write_text(digraph.source, encoding="utf-8")
        else:
            _require_dot()
            path.write_bytes(digraph.pipe(format=file_format))
    return path
