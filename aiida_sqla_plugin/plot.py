"""A picture of the creation statistics: nodes created per UTC day, stacked by node type (matplotlib, Agg).

Needs the optional python package ``matplotlib`` (``pip install 'aiida-sqla-plugin[plot]'``).
"""
from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .exceptions import MissingDependency, ValidationError

__all__ = ("daily_counts", "plot_creation_statistics")

#: Colours of the stacked types, in order (colour-blind friendly, after Okabe and Ito).
_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: Types beyond this many (the rarest) are summed as "other".
_MAX_TYPES = len(_COLOURS) - 1


def daily_counts(statistics: Mapping[str, Any]) -> tuple[list[datetime.date], dict[str, list[int]]]:
    """Every UTC day from the first to the last with nodes (days without nodes as 0), and per node type its
    count on each of those days, from :meth:`SqlaQueryManager.get_creation_statistics`. Types are ordered by
    total count, most first; beyond seven the rarest are summed as ``other``."""
    by_day_and_type = statistics.get("ctime_by_day_and_type")
    if not isinstance(by_day_and_type, Mapping):
        raise ValidationError("statistics have no 'ctime_by_day_and_type'; pass get_creation_statistics()'s result")
    if not by_day_and_type:
        return [], {}
    dated = {datetime.date.fromisoformat(day): counts for day, counts in by_day_and_type.items()}
    first, last = min(dated), max(dated)
    days = [first + datetime.timedelta(days=offset) for offset in range((last - first).days + 1)]
    totals: dict[str, int] = {}
    for counts in dated.values():
        for node_type, count in counts.items():
            totals[node_type] = totals.get(node_type, 0) + count
    ordered = sorted(totals, key=lambda node_type: (-totals[node_type], node_type))
    shown, rest = ordered[:_MAX_TYPES], ordered[_MAX_TYPES:]
    if len(rest) == 1:
        shown, rest = ordered, []
    series = {node_type: [dated.get(day, {}).get(node_type, 0) for day in days] for node_type in shown}
    if rest:
        series["other"] = [sum(dated.get(day, {}).get(node_type, 0) for node_type in rest) for day in days]
    return days, series


def _type_names(node_types: list[str]) -> dict[str, str]:
    """Legend names: the class name (``data.core.int.Int.`` -> ``Int``), or the whole type where two share one."""
    short = {node_type: ([part for part in node_type.split(".") if part] or [node_type])[-1] for node_type in node_types}
    clashing = {name for name in short.values() if list(short.values()).count(name) > 1}
    return {node_type: node_type.rstrip(".") if name in clashing else name for node_type, name in short.items()}


def plot_creation_statistics(
    statistics: Mapping[str, Any],
    path: str | Path,
    *,
    width: int = 1200,
    height: int = 600,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Draw nodes created per UTC day, stacked by node type, into ``path`` (format from the suffix, e.g. ``.png``).

    ``statistics`` is the result of ``get_creation_statistics``; ``width`` and ``height`` are in pixels. An
    empty database gives a picture saying so. Raises :class:`MissingDependency` without matplotlib.
    """
    for name, value in (("width", width), ("height", height), ("dpi", dpi)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValidationError(f"{name} must be a positive integer (pixels), not {value!r}")
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency

        matplotlib.use("Agg")
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
        from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
    except ImportError as error:
        raise MissingDependency(
            "plotting the creation statistics needs the python package 'matplotlib': "
            "pip install 'aiida-sqla-plugin[plot]' (or pip install matplotlib)"
        ) from error
    days, series = daily_counts(statistics)
    path = Path(path)
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    axes = figure.add_subplot()
    total = int(statistics.get("total", sum(sum(values) for values in series.values())))
    axes.set_title(title or f"Nodes created per day (UTC), {total} in all")
    axes.set_ylabel("nodes created")
    axes.set_xlabel("day (UTC)")
    if days:
        positions = date2num(days)
        bottom = [0] * len(days)
        names = {**_type_names([node_type for node_type in series if node_type != "other"]), "other": "other types"}
        for index, (node_type, values) in enumerate(series.items()):
            label = names[node_type]
            axes.bar(positions, values, bottom=bottom, width=0.85, label=f"{label}: {sum(values)}",
                     color=_COLOURS[index % len(_COLOURS)], edgecolor="white", linewidth=0.3)
            bottom = [below + value for below, value in zip(bottom, values)]
        axes.xaxis_date()
        locator = AutoDateLocator()
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        figure.legend(title="node type: nodes", loc="outside right upper", fontsize="small")
        axes.set_ylim(0, max(bottom) * 1.05 + 1)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        axes.text(0.5, 0.5, "no nodes yet", ha="center", va="center", transform=axes.transAxes, fontsize="large")
        axes.set_yticks([])
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    figure.savefig(path, dpi=dpi)
    return path
