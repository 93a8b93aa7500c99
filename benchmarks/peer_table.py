"""The issue #11 comparison table from ``bench.py --graph peer --aiida-python ...`` output.

    python benchmarks/peer_table.py benchmarks/results/peer-100k.jsonl

Reads the JSON lines of one run (ours: ``"benchmark": "peer"``; aiida-core's: ``"peer-aiida-core"``, or lines the
shared script printed itself), per dialect,
and prints two Markdown tables: the times side by side, and every target of issue #11 as a ratio of that run.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: (row, our timing key, aiida-core's timing key or None)
OPERATIONS: tuple[tuple[str, str, str | None], ...] = (
    ("bulk store nodes", "store_nodes", "b_bulk_insert_nodes"),
    ("bulk store links", "store_links", "b_bulk_insert_links"),
    ("creation statistics", "creation_statistics", "c_creation_statistics"),
    ("ancestors of the deepest node, warm", "ancestors", "d_ancestors_min_of_3"),
    ("descendants of a node at depth ~100, warm", "descendants", "d_descendants_min_of_3"),
    ("settings get x1000", "settings_get_x1000", "f_settings_get_x1000"),
    ("settings set+get x1000", "settings_set_get_x1000", "f_settings_roundtrip_x1000"),
    ("delete newest 10%, default rules", "delete_10_percent", "e_delete_nodes_default_rules"),
    ("closure install (`rebuild_tc`)", "closure_install", None),
    ("store links with the closure installed", "store_links_with_closure", None),
    ("delete newest 10% with the closure installed", "delete_10_percent_with_closure", None),
)

#: (target, numerator, denominator key, at most): ratios of our own timings within one dialect's run. A numerator
#: is a timing key, or (a, b) for the difference a - b; "at most" None marks an anchor row, which has no target.
OWN_TARGETS: tuple[tuple[str, str | tuple[str, str], str, float | None], ...] = (
    ("bulk store nodes / raw driver", "store_nodes", "raw_nodes", 1.3),
    ("bulk store links / raw driver", "store_links", "raw_links", 1.3),
    ("closure install / raw pairs into an indexed table", "closure_install", "raw_closure_pairs", 3.0),
    ("store links with the closure / without", "store_links_with_closure", "store_links", 2.0),
    ("delete with the closure / without", "delete_10_percent_with_closure", "delete_10_percent", 2.0),
    ("anchor: store links with the closure / raw pairs into an indexed table", "store_links_with_closure", "raw_closure_pairs", None),
    (
        "anchor: what the closure adds to the delete / raw delete of the same pairs",
        ("delete_10_percent_with_closure", "delete_10_percent"),
        "raw_closure_pair_delete",
        None,
    ),
)

#: ours / aiida-core on the same dialect must be at most this
AIIDA_RATIO_TARGET = 0.5
DIALECTS = ("sqlite", "postgresql")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g} s" if value < 1 else f"{value:.2f} s"


def _ratio(numerator: float | None, denominator: float | None, limit: float | None) -> str:
    if numerator is None or not denominator:
        return "-"
    ratio = numerator / denominator
    if limit is None:
        return f"{ratio:.2f}x"
    return f"{ratio:.2f}x {'ok' if ratio <= limit else '**missed**'}"


def _value(timings: dict[str, float], key: str | tuple[str, str]) -> float | None:
    if isinstance(key, str):
        return timings.get(key)
    first, second = (timings.get(part) for part in key)
    return None if first is None or second is None else first - second


#: the shared script's own ``backend`` values, for lines it printed itself
SHARED_BACKENDS = {"sqlite_dos": "sqlite", "psql_dos": "postgresql"}


def _by_dialect(lines: Iterable[dict[str, Any]], benchmark: str) -> dict[str, dict[str, float]]:
    found = {}
    for line in lines:
        if line.get("benchmark") == benchmark:
            found[line["dialect"]] = line["timings"]
        elif benchmark == "peer-aiida-core" and line.get("backend") in SHARED_BACKENDS:
            found[SHARED_BACKENDS[line["backend"]]] = line["timings"]
    return found


def render(lines: Iterable[dict[str, Any]]) -> str:
    """Both Markdown tables for the peer lines of one run."""
    lines = list(lines)
    ours, aiida = _by_dialect(lines, "peer"), _by_dialect(lines, "peer-aiida-core")
    header = "| operation | aiida SQLite | ours SQLite | aiida PostgreSQL | ours PostgreSQL | ours / aiida SQLite (at most 0.5x) | ours / aiida PostgreSQL (at most 0.5x) |"
    table = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, our_key, aiida_key in OPERATIONS:
        cells, ratios = [], []
        for dialect in DIALECTS:
            mine = ours.get(dialect, {}).get(our_key)
            theirs = aiida.get(dialect, {}).get(aiida_key) if aiida_key else None
            cells += [_seconds(theirs), _seconds(mine)]
            ratios.append(_ratio(mine, theirs, AIIDA_RATIO_TARGET))
        table.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    table += ["", "| target (same run) | at most | SQLite | PostgreSQL |", "| --- | ---: | ---: | ---: |"]
    for label, numerator, denominator, limit in OWN_TARGETS:
        cells = [_ratio(_value(ours.get(d, {}), numerator), ours.get(d, {}).get(denominator), limit) for d in DIALECTS]
        table.append(f"| {label} | {'-' if limit is None else f'{limit:g}x'} | " + " | ".join(cells) + " |")
    return "\n".join(table)


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    lines = [json.loads(text) for path in paths for text in Path(path).read_text().splitlines() if text.strip()]
    print(render(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
