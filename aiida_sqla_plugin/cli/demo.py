"""``aiida-sqla demo``: prints what :func:`aiida_sqla_plugin.demo.run_demo` did."""
from __future__ import annotations

from collections.abc import Callable

import click

from ..demo import DEMO_PROFILE, run_demo
from ._root import common_options, emit_json, get_state, json_option
from .node import format_pks

__all__ = ("demo",)


@click.command("demo")
@click.option("--nodes", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Number of nodes of the synthetic provenance graph.")
@json_option
@common_options
def demo(nodes: int, as_json: bool) -> None:
    """Run the whole job: create the profile if needed (SQLite in the user data directory), migrate it, store a
    synthetic provenance graph, then print statistics, the ancestors of one output and a dry-run deletion.

    The profile is -p/--profile, else 'demo'. Running it again adds another graph.

    \b
    Example:
      aiida-sqla demo
      aiida-sqla demo --nodes 100000 -p big --json
    """
    state = get_state()
    note: Callable[[str], None] = state.info if as_json else click.echo
    name = state.profile_name or DEMO_PROFILE
    state.profile_name = name
    with state.progress() as progress:
        result = run_demo(state.config_file, name, nodes, progress=progress, note=note)
    data = result.as_dict()
    graph, counts, statistics = result.graph, result.counts, result.statistics
    ancestry_types, ancestors, output = result.ancestry_types, result.ancestors, graph.deepest_node
    workflow, doomed = result.workflow, result.doomed
    if as_json:
        emit_json(data)
        return
    stored = data["stored"]
    seconds = sum(graph.store_seconds.values())
    click.echo(f"\nStored {stored['nodes']} nodes ({stored['data']} data, {stored['calculations']} calculations, "
               f"{stored['workflows']} workflows) and {stored['links']} links in {seconds:.2f} s.")
    click.echo("Links by type: " + ", ".join(f"{key} {value}" for key, value in sorted(stored["link_types"].items())))
    click.echo(f"\nStorage {result.location} now holds: "
               + ", ".join(f"{value} {key}" for key, value in counts.items()) + ".")
    click.echo("Nodes by type:")
    for node_type, count in sorted(statistics["types"].items()):
        click.echo(f"  {node_type:<50} {count}")
    click.echo(f"Created over {len(statistics['ctime_by_day'])} day(s).")
    limit = None if state.verbose else 30
    click.echo(f"\nAncestors of output {output} (end of the deepest chain, {graph.depth} links; "
               f"link types {', '.join(ancestry_types)}): {len(ancestors)}")
    if ancestors:
        click.echo(f"  {format_pks(ancestors, limit)}")
    click.echo(f"\nDeleting workflow {workflow} would delete {len(doomed)} node(s) (dry run, nothing deleted)")
    if doomed:
        click.echo(f"  {format_pks(doomed, limit)}")
    click.echo(f"\nNext: aiida-sqla -p {name} storage info, aiida-sqla -p {name} graph ancestors {output}")
