"""Pictures of the provenance (draw) and of the creation statistics (plot), on a synthetic demo graph.

The expected neighbourhood is computed twice, independently of the drawing code: from the ancestry functions,
and by walking every link of the small graph in Python.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from pathlib import Path

import pytest
from sqlalchemy import select

from aiida_sqla_plugin import draw
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import AiidaSqlaError, DrawingTooLarge, MissingDependency, NotExistent, ValidationError
from aiida_sqla_plugin.graph import get_ancestors, get_descendants
from aiida_sqla_plugin.links import LINK_TYPES
from aiida_sqla_plugin.models import DbLink, DbNode
from aiida_sqla_plugin.plot import daily_counts, plot_creation_statistics
from aiida_sqla_plugin.synthetic import SyntheticGraph, build_graph

SVG = "{http://www.w3.org/2000/svg}"
ATTRIBUTE = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s\]]+)')
NODE_LINE = re.compile(r"^\s*(N\d+|legend_\w+) \[(.*)\]$")
EDGE_LINE = re.compile(r"^\s*(N\d+|legend_\w+) -> (N\d+|legend_\w+) \[(.*)\]$")

Edge = tuple[int, int, str, str]


@pytest.fixture
def demo(backend: SqlaBackend) -> SyntheticGraph:
    return build_graph(backend, 300, seed=3, days=10)


def all_links(backend: SqlaBackend) -> list[Edge]:
    with backend.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(  # type: ignore[misc]
            select(DbLink.input_id, DbLink.output_id, DbLink.type, DbLink.label))]


def walk(links: list[Edge], start: set[int], depth: int, upward: bool, types: Iterable[str]) -> set[int]:
    """Nodes within ``depth`` links of ``types`` of ``start`` (against the links when ``upward``), in Python."""
    allowed = set(types)
    found: set[int] = set()
    frontier = set(start)
    for _ in range(depth):
        step = {(source if upward else target) for source, target, link_type, _ in links
                if link_type in allowed and (target if upward else source) in frontier}
        frontier = step - found
        found |= step
    return found


def expected(backend: SqlaBackend, pks: set[int], up: int, down: int, types: tuple[str, ...]) -> tuple[set[int], set[Edge]]:
    links = all_links(backend)
    nodes = pks | walk(links, pks, up, True, types) | walk(links, pks, down, False, types)
    assert nodes == pks | get_ancestors(pks, types, up, backend) | get_descendants(pks, types, down, backend)
    edges = {link for link in links if link[0] in nodes and link[1] in nodes and link[2] in types}
    return nodes, edges


def attributes(text: str) -> dict[str, str]:
    return {key: value.strip('"') for key, value in ATTRIBUTE.findall(text)}


def parse_dot(source: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str, dict[str, str]]]]:
    """The node statements (name -> attributes) and edge statements of a DOT source, one statement per line."""
    nodes: dict[str, dict[str, str]] = {}
    edges: list[tuple[str, str, dict[str, str]]] = []
    joined = re.sub(r"\\\n", "", source)
    for line in joined.splitlines():
        if match := EDGE_LINE.match(line):
            edges.append((match.group(1), match.group(2), attributes(match.group(3))))
        elif match := NODE_LINE.match(line):
            nodes[match.group(1)] = attributes(match.group(2))
    return nodes, edges


def busy_calculation(backend: SqlaBackend, graph: SyntheticGraph) -> int:
    """A calculation called by a workflow, with inputs and outputs: a neighbourhood with several link types."""
    links = all_links(backend)
    called = {target for _, target, link_type, _ in links if link_type == "call_calc"}
    return next(pk for pk in graph.calc_ids if pk in called)


def test_dot_holds_exactly_the_neighbourhood_with_styles(backend: SqlaBackend, demo: SyntheticGraph) -> None:
    pk = busy_calculation(backend, demo)
    nodes, edges = expected(backend, {pk}, 2, 1, LINK_TYPES)
    digraph = draw.provenance_graph([pk], ancestor_depth=2, descendant_depth=1, backend=backend)
    dot_nodes, dot_edges = parse_dot(digraph.source)

    drawn = {name: attrs for name, attrs in dot_nodes.items() if name.startswith("N")}
    assert set(drawn) == {f"N{node}" for node in nodes}
    drawn_edges = [(int(a[1:]), int(b[1:]), attrs) for a, b, attrs in dot_edges if a.startswith("N")]
    assert {(source, target, attrs["tooltip"], attrs["label"]) for source, target, attrs in drawn_edges} == edges
    assert len(drawn_edges) == len(edges)
    assert {link[2] for link in edges} >= {"input_calc", "create", "call_calc"}

    with backend.engine.connect() as connection:
        types = dict(connection.execute(select(DbNode.id, DbNode.node_type).where(DbNode.id.in_(nodes))).all())
    shapes = {"data": "ellipse", "calculation": "rectangle", "workflow": "rectangle"}
    for node, node_type in types.items():
        attrs = drawn[f"N{node}"]
        kind = draw.node_kind(node_type)
        assert attrs["shape"] == shapes[kind]
        assert attrs["fillcolor"] == draw.NODE_STYLES[kind]["fillcolor"]
        assert (attrs.get("peripheries") == "2") == (node == pk), "only the start node is highlighted"
        assert attrs["label"].startswith(f"{node_type.split('.')[-2]} #{node}")
    assert draw.NODE_STYLES["calculation"]["fillcolor"] != draw.NODE_STYLES["workflow"]["fillcolor"]
    for _, _, attrs in drawn_edges:
        style = draw.EDGE_STYLES[attrs["tooltip"]]
        assert (attrs["style"], attrs["color"], attrs["penwidth"]) == (style["style"], style["color"], style["penwidth"])
    assert len({(style["style"], style["color"]) for style in draw.EDGE_STYLES.values()}) == len(LINK_TYPES)

    legend = [name for name in dot_nodes if name.startswith("legend_")]
    assert {"legend_data", "legend_calculation", "legend_start"} <= set(legend)
    legend_edges = {attrs["label"].strip() for a, _, attrs in dot_edges if a.startswith("legend_") and "label" in attrs}
    assert legend_edges == set(LINK_TYPES)


def test_small_data_values_and_process_labels(backend: SqlaBackend, demo: SyntheticGraph) -> None:
    pk = busy_calculation(backend, demo)
    neighbourhood = draw.gather_neighbourhood([pk], 1, 1, backend=backend)
    with backend.engine.connect() as connection:
        rows = {row.id: row for row in connection.execute(
            select(DbNode.id, DbNode.node_type, DbNode.attributes).where(DbNode.id.in_([n.pk for n in neighbourhood.nodes])))}
    for node in neighbourhood.nodes:
        row = rows[node.pk]
        if row.node_type in draw.SMALL_DATA_TYPES:
            assert node.value == row.attributes["value"]
            shown = json.dumps(node.value) if isinstance(node.value, str) else repr(node.value)
            assert shown[:30] in "\n".join(node.lines())
        else:
            assert node.value is None
        if node.kind in ("calculation", "workflow"):
            assert node.process_label == row.attributes["process_label"]


def test_link_types_and_depths_bound_the_neighbourhood(backend: SqlaBackend, demo: SyntheticGraph) -> None:
    pk = busy_calculation(backend, demo)
    only = ("create", "input_calc")
    nodes, edges = expected(backend, {pk}, 3, 2, only)
    neighbourhood = draw.gather_neighbourhood([pk], 3, 2, link_types=only, backend=backend)
    assert {node.pk for node in neighbourhood.nodes} == nodes
    assert {(e.source, e.target, e.link_type, e.label) for e in neighbourhood.edges} == edges
    alone = draw.gather_neighbourhood([pk], 0, 0, backend=backend)
    assert [node.pk for node in alone.nodes] == [pk] and alone.edges == ()
    several = set(demo.data_ids[:3])
    nodes, edges = expected(backend, several, 1, 1, LINK_TYPES)
    both = draw.gather_neighbourhood(several, backend=backend)
    assert {node.pk for node in both.nodes} == nodes and {node.pk for node in both.nodes if node.start} == several


def test_svg_mermaid_and_json_hold_the_same_graph(backend: SqlaBackend, demo: SyntheticGraph, tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        pytest.fail("the Graphviz program 'dot' is missing: apt-get install graphviz (.ci/run does)")
    pk = busy_calculation(backend, demo)
    neighbourhood = draw.gather_neighbourhood([pk], 2, 2, backend=backend)
    nodes = {node.pk for node in neighbourhood.nodes}
    edges = {(edge.source, edge.target, edge.link_type, edge.label) for edge in neighbourhood.edges}

    svg = ElementTree.parse(draw.write_neighbourhood(neighbourhood, tmp_path / "n.svg")).getroot()
    groups = [group for group in svg.iter(f"{SVG}g") if group.get("class") == "node"]
    titles = [group.findtext(f"{SVG}title") or "" for group in groups]
    assert sorted(title for title in titles if title.startswith("N")) == sorted(f"N{node}" for node in nodes)
    svg_edges = [group.findtext(f"{SVG}title") for group in svg.iter(f"{SVG}g") if group.get("class") == "edge"]
    assert sorted(t for t in svg_edges if t and t.startswith("N")) == sorted(f"N{a}->N{b}" for a, b, _, _ in edges)

    data = json.loads(draw.write_neighbourhood(neighbourhood, tmp_path / "n.json").read_text())
    assert {node["id"] for node in data["nodes"]} == nodes
    assert {(e["source"], e["target"], e["type"], e["label"]) for e in data["edges"]} == edges
    assert len(data["edges"]) == len(edges) and data["start"] == [pk]
    assert {node["id"]: node["kind"] for node in data["nodes"]} == {node.pk: node.kind for node in neighbourhood.nodes}

    mermaid = draw.write_neighbourhood(neighbourhood, tmp_path / "n.mmd").read_text()
    assert mermaid.startswith("flowchart TB\n")
    mermaid_nodes = set(map(int, re.findall(r"^    N(\d+)[(\[{]", mermaid, re.M)))
    mermaid_edges = {(int(a), int(b), t, label) for a, t, label, b in
                     re.findall(r'^    N(\d+) [-.=]+>\|"(\w+): ?([^"]*)"\| N(\d+)$', mermaid, re.M)}
    assert mermaid_nodes == nodes
    assert mermaid_edges == edges
    assert len(re.findall(r"^    linkStyle \d+ ", mermaid, re.M)) == len(edges)
    assert f"class N{pk} start" in mermaid

    for file_format, magic in (("png", b"\x89PNG\r\n\x1a\n"), ("pdf", b"%PDF")):
        written = draw.write_neighbourhood(neighbourhood, tmp_path / f"n.{file_format}")
        assert written.read_bytes().startswith(magic)
    assert draw.write_neighbourhood(neighbourhood, tmp_path / "n.gv").read_text().count("digraph provenance {") == 1


def test_max_nodes_refuses_before_drawing(backend: SqlaBackend, demo: SyntheticGraph) -> None:
    pk = busy_calculation(backend, demo)
    nodes, _ = expected(backend, {pk}, 2, 2, LINK_TYPES)
    with pytest.raises(DrawingTooLarge) as caught:
        draw.provenance_graph([pk], 2, 2, max_nodes=len(nodes) - 1, backend=backend)
    assert isinstance(caught.value, AiidaSqlaError)
    assert (caught.value.node_count, caught.value.max_nodes) == (len(nodes), len(nodes) - 1)
    assert f"would hold {len(nodes)} nodes" in str(caught.value) and "--max-nodes" in str(caught.value)
    assert len(draw.gather_neighbourhood([pk], 2, 2, max_nodes=len(nodes), backend=backend).nodes) == len(nodes)
    unbounded = draw.gather_neighbourhood([pk], None, None, max_nodes=None, backend=backend)
    assert len(unbounded.nodes) >= len(nodes)


def test_bad_requests(backend: SqlaBackend, demo: SyntheticGraph, tmp_path: Path) -> None:
    with pytest.raises(NotExistent, match="no node with pk 999999"):
        draw.gather_neighbourhood([demo.node_ids[0], 999999], backend=backend)
    with pytest.raises(ValidationError, match="at least one node"):
        draw.gather_neighbourhood([], backend=backend)
    with pytest.raises(ValidationError, match="unknown link type"):
        draw.gather_neighbourhood([demo.node_ids[0]], link_types=["bogus"], backend=backend)
    with pytest.raises(ValidationError, match="max_nodes"):
        draw.gather_neighbourhood([demo.node_ids[0]], max_nodes=0, backend=backend)
    neighbourhood = draw.gather_neighbourhood([demo.node_ids[0]], backend=backend)
    with pytest.raises(ValidationError, match="unknown picture format"):
        draw.write_neighbourhood(neighbourhood, tmp_path / "n.bmp")


def test_missing_dot_program_names_the_package(backend: SqlaBackend, demo: SyntheticGraph, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    neighbourhood = draw.gather_neighbourhood([demo.node_ids[0]], backend=backend)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MissingDependency, match="apt-get install graphviz"):
        draw.write_neighbourhood(neighbourhood, tmp_path / "n.svg")
    assert not (tmp_path / "n.svg").exists()
    for suffix in ("dot", "mmd", "json"):  # no Graphviz program needed
        assert draw.write_neighbourhood(neighbourhood, tmp_path / f"n.{suffix}").stat().st_size > 0


def test_runs_in_the_callers_transaction(backend: SqlaBackend, demo: SyntheticGraph) -> None:
    with backend.transaction() as session:
        extra = DbNode(node_type="data.core.int.Int.", user_id=demo.user_id, attributes={"value": 7}, label="mine")
        session.add(extra)
        session.flush()
        session.add(DbLink(input_id=demo.data_ids[0], output_id=extra.id, type="create", label="made"))
        neighbourhood = draw.gather_neighbourhood([extra.id], backend=backend)
        assert {node.pk for node in neighbourhood.nodes} == {extra.id, demo.data_ids[0]}
        assert [node.lines() for node in neighbourhood.nodes if node.pk == extra.id] == [[f"Int #{extra.id}", "mine", "7"]]
        session.rollback()


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def test_creation_plot_is_a_png_of_the_requested_size(backend: SqlaBackend, demo: SyntheticGraph, tmp_path: Path) -> None:
    statistics = backend.query_manager.get_creation_statistics()
    days, series = daily_counts(statistics)
    assert len(days) == 10 and [day.isoformat() for day in days] == sorted(statistics["ctime_by_day"])
    assert {node_type: sum(values) for node_type, values in series.items()} == statistics["types"]
    assert [sum(column) for column in zip(*series.values())] == [statistics["ctime_by_day"][d.isoformat()] for d in days]

    path = plot_creation_statistics(statistics, tmp_path / "plot.png", width=640, height=360, dpi=80)
    assert png_size(path) == (640, 360)
    empty = plot_creation_statistics({"total": 0, "ctime_by_day_and_type": {}}, tmp_path / "empty.png", width=300, height=200)
    assert png_size(empty) == (300, 200)
    with pytest.raises(ValidationError, match="width"):
        plot_creation_statistics(statistics, tmp_path / "x.png", width=0)
    with pytest.raises(ValidationError, match="ctime_by_day_and_type"):
        plot_creation_statistics({"total": 1}, tmp_path / "x.png")


def test_days_without_nodes_count_as_zero() -> None:
    statistics = {"ctime_by_day_and_type": {"2024-02-27": {"data.core.int.Int.": 2},
                                            "2024-03-02": {"data.core.int.Int.": 1, "data.core.str.Str.": 4}}}
    days, series = daily_counts(statistics)
    assert [day.isoformat() for day in days] == ["2024-02-27", "2024-02-28", "2024-02-29", "2024-03-01", "2024-03-02"]
    assert series == {"data.core.str.Str.": [0, 0, 0, 0, 4], "data.core.int.Int.": [2, 0, 0, 0, 1]}
    many = {"ctime_by_day_and_type": {"2024-01-01": {f"data.t{i}.T{i}.": i + 1 for i in range(10)}}}
    _, grouped = daily_counts(many)
    assert len(grouped) == 8 and grouped["other"] == [1 + 2 + 3] and sum(v[0] for v in grouped.values()) == 55


def test_cli_draw_and_plot(backend: SqlaBackend, demo: SyntheticGraph, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from aiida_sqla_plugin.cli import cli
    from aiida_sqla_plugin.config import CONFIG_DIR_ENV, DATA_DIR_ENV

    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    url = backend.engine.url.render_as_string(hide_password=False)

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output + result.stderr
        return result.stdout + result.stderr

    run("profile", "create", "p", "--url", url)
    pk = busy_calculation(backend, demo)
    nodes, edges = expected(backend, {pk}, 2, 1, LINK_TYPES)
    out = run("graph", "draw", str(pk), "--ancestors", "2", "--format", "json", "-o", "n.json")
    assert f"{len(nodes)} node(s), {len(edges)} link(s)" in out
    data = json.loads((tmp_path / "n.json").read_text())
    assert {node["id"] for node in data["nodes"]} == nodes
    run("graph", "draw", str(pk))
    assert ElementTree.parse(tmp_path / f"{pk}.svg").getroot().tag == f"{SVG}svg"
    refused = run("graph", "draw", str(pk), "--ancestors", "2", "--max-nodes", "2", code=6)
    assert f"would hold {len(nodes)} nodes" in refused and not (tmp_path / f"{pk}.dot").exists()
    run("storage", "info", "--plot", "created.png")
    assert png_size(tmp_path / "created.png") == (1200, 600)
