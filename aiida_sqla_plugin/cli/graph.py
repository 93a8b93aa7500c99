"""``aiida-sqla graph ...``: ancestry queries and the transitive closure table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..closure import closure_status, install_tc, rebuild_tc, uninstall_tc
from ..draw import FORMATS, gather_neighbourhood, write_neighbourhood
from ..graph import get_ancestors, get_descendants
from ..links import DEFAULT_CLOSURE_LINK_TYPES, LINK_TYPES
from ._root import CliState, common_options, emit_json, get_state, json_option
from .node import format_pks, require_nodes

__all__ = ("graph_group",)


@click.group("graph")
@common_options
def graph_group() -> None:
    """Query the provenance graph and manage its transitive closure.

    \b
    Example:
      aiida-sqla graph ancestors 42 --link-types create,input_calc --json
    """


def _link_types(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _ancestry_command(name: str, upward: bool) -> click.Command:
    what = "ancestors" if upward else "descendants"
    preposition = "to" if upward else "from"

    @click.argument("pks", metavar="PK...", nargs=-1, type=int, required=True)
    @click.option("--link-types", default=",".join(DEFAULT_CLOSURE_LINK_TYPES), show_default=True,
                  help=f"Comma-separated link types to follow ({', '.join(LINK_TYPES)}).")
    @click.option("--max-depth", type=click.IntRange(min=0), help="Follow at most this many links (default: no limit).")
    @json_option
    @common_options
    def command(pks: tuple[int, ...], link_types: str, max_depth: int | None, as_json: bool) -> None:
        state = get_state()
        backend = state.backend()
        require_nodes(backend, pks)
        types = _link_types(link_types)
        function = get_ancestors if upward else get_descendants
        found = function(pks, link_types=types, max_depth=max_depth, backend=backend)
        if as_json:
            emit_json({"pks": sorted(set(pks)), "link_types": types, "max_depth": max_depth, what: sorted(found),
                       "count": len(found)})
            return
        click.echo(f"{len(found)} {what}")
        if found:
            click.echo(format_pks(found, None if state.verbose else 200))

    command.__doc__ = (
        f"Print the {what} of the nodes PK...: nodes with a path of --link-types links {preposition} them.\n\n"
        f"\b\nExample:\n  aiida-sqla graph {what} 42 --max-depth 3 --json\n"
    )
    return graph_group.command(name)(command)


graph_ancestors = _ancestry_command("ancestors", upward=True)
graph_descendants = _ancestry_command("descendants", upward=False)


@graph_group.group("closure")
@common_options
def closure_group() -> None:
    """Install, remove, rebuild or inspect the transitive closure table db_dbpath (kept by triggers).

    \b
    Example:
      aiida-sqla graph closure install --link-types create,input_calc
    """


def _closure_session(state: CliState) -> Any:
    return state.backend().get_session()


def _print_closure_status(status: Any, as_json: bool) -> None:
    data = {"installed": status.installed, "link_types": list(status.link_types), "rows": status.rows, "links": status.links}
    if as_json:
        emit_json(data)
        return
    if status.installed:
        click.echo(f"closure installed for link types {', '.join(status.link_types)}: {status.rows} rows over {status.links} links")
    else:
        click.echo(f"closure not installed ({status.rows} rows in db_dbpath)")


@closure_group.command("install")
@click.option("--link-types", default=",".join(DEFAULT_CLOSURE_LINK_TYPES), show_default=True, help="Comma-separated link types it covers.")
@common_options
def closure_install(link_types: str) -> None:
    """Install the closure triggers and fill db_dbpath from the links (replaces an installed closure).

    \b
    Example:
      aiida-sqla graph closure install --link-types create,input_calc
    """
    state = get_state()
    session = _closure_session(state)
    with state.progress() as progress:
        install_tc(session, link_types=_link_types(link_types), progress=progress)
    _print_closure_status(closure_status(session), as_json=False)


@closure_group.command("uninstall")
@common_options
def closure_uninstall() -> None:
    """Drop the closure triggers and empty db_dbpath.

    \b
    Example:
      aiida-sqla graph closure uninstall
    """
    uninstall_tc(_closure_session(get_state()))
    click.echo("closure uninstalled")


@closure_group.command("rebuild")
@common_options
def closure_rebuild() -> None:
    """Recompute db_dbpath from the links for the installed link types.

    \b
    Example:
      aiida-sqla graph closure rebuild
    """
    state = get_state()
    session = _closure_session(state)
    with state.progress() as progress:
        rebuild_tc(session, progress=progress)
    _print_closure_status(closure_status(session), as_json=False)


@closure_group.command("status")
@json_option
@common_options
def closure_status_command(as_json: bool) -> None:
    """Print whether the closure is installed, for which link types, and its row count.

    \b
    Example:
      aiida-sqla graph closure status --json
    """
    session = _closure_session(get_state())
    _print_closure_status(closure_status(session), as_json)


@graph_group.command("draw")
@click.argument("pks", metavar="PK...", nargs=-1, type=int, required=True)
@click.option("--ancestors", type=click.IntRange(min=0), default=1, show_default=True,
              help="Draw ancestors up to this many links away.")
@click.option("--descendants", type=click.IntRange(min=0), default=1, show_default=True,
              help="Draw descendants down to this many links away.")
@click.option("--link-types", default=",".join(LINK_TYPES), show_default=True,
              help="Comma-separated link types to follow and draw.")
@click.option("--max-nodes", type=click.IntRange(min=1), default=500, show_default=True,
              help="Refuse (exit code 6) when the picture would hold more nodes.")
@click.option("--format", "file_format", type=click.Choice(FORMATS), default="svg", show_default=True,
              help="svg, png, pdf need the Graphviz program dot; dot, mermaid, json do not.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (default: <first pk>.<format>).")
@common_options
def graph_draw(pks: tuple[int, ...], ancestors: int, descendants: int, link_types: str, max_nodes: int,
               file_format: str, output: Path | None) -> None:
    """Draw the provenance around the nodes PK... (start nodes highlighted, links styled by type, a legend).

    \b
    Example:
      aiida-sqla graph draw 42 --ancestors 2 -o 42.svg
      aiida-sqla graph draw 42 --format mermaid -o 42.mmd
    """
    state = get_state()
    backend = state.backend()
    picture = gather_neighbourhood(pks, ancestors, descendants, _link_types(link_types), max_nodes, backend)
    suffix = {"mermaid": "mmd"}.get(file_format, file_format)
    path = write_neighbourhood(picture, output or Path(f"{pks[0]}.{suffix}"), file_format)
    click.echo(f"Wrote {path} ({file_format}): {len(picture.nodes)} node(s), {len(picture.edges)} link(s).")
