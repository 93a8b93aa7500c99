"""``aiida-sqla archive ...``: import AiiDA archives into a profile and export a profile's nodes as one."""
from __future__ import annotations

from pathlib import Path

import click

from ..archive import export_archive, import_archive
from ._root import common_options, emit_json, get_state, json_option

__all__ = ("archive_group",)


@click.group("archive")
@common_options
def archive_group() -> None:
    """Import AiiDA archives (.aiida files) and export nodes as archives aiida-core imports.

    \b
    Example:
      aiida-sqla archive import data.aiida --group imported
      aiida-sqla archive export all.aiida --all
    """


@archive_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--group", "group_label", metavar="LABEL", help="Put every node of the archive into this group (created if needed).")
@click.option("--dry-run", is_flag=True, help="Only count what would be imported (new vs present); change nothing.")
@click.option("--skip-invalid", is_flag=True, help="Import what is valid and list the entries left out, instead of refusing the archive.")
@click.option("--no-objects", is_flag=True, help="Do not copy the file contents (repository objects) into the object store.")
@json_option
@common_options
def archive_import(file: Path, group_label: str | None, dry_run: bool, skip_invalid: bool, no_objects: bool, as_json: bool) -> None:
    """Import the archive FILE (zip formats main_0000/main_0001, JSON formats 0.4 to 0.13) in one transaction.

    Entities already present (same UUID; users by email) are left as they are, so importing twice changes
    nothing the second time. Repairs of old archives are listed; any refused entry leaves the profile as it was.

    \b
    Example:
      aiida-sqla archive import data.aiida --dry-run
      aiida-sqla -p big archive import data.aiida --group imported --json
    """
    state = get_state()
    backend = state.backend()
    with state.progress() as progress:
        result = import_archive(file, backend, group_label=group_label, progress=progress, dry_run=dry_run,
                                skip_invalid=skip_invalid, objects=not no_objects)
    if as_json:
        emit_json(result.as_dict())
        return
    verb = "Would import" if dry_run else "Imported"
    click.echo(f"{verb} {file} (archive version {result.version}) in {result.seconds:.2f} s:")
    for entity, count in result.counts.items():
        if any(count.values()):
            skipped = f", {count['skipped']} skipped" if count["skipped"] else ""
            click.echo(f"  {entity:<12} {count['new']} new, {count['present']} already present{skipped}")
    if not result.changed:
        click.echo("Nothing new: everything in the archive is already in the profile.")
    for repair in result.repairs if state.verbose else result.repairs[:20]:
        click.echo(f"repaired {repair.entity} {repair.identifier}: {repair.detail}")
    if len(result.repairs) > 20 and not state.verbose:
        click.echo(f"... {len(result.repairs) - 20} more repairs (-v lists all)")
    for entry in result.skipped:
        click.echo(f"skipped {entry}", err=True)


@archive_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--nodes", "nodes", metavar="PK", type=int, multiple=True, help="A node to export (repeat the option); its provenance comes along.")
@click.option("--groups", "groups", metavar="LABEL", multiple=True, help="A group whose nodes to export (repeat the option).")
@click.option("--all", "everything", is_flag=True, help="Every node and every group, empty groups included.")
@json_option
@common_options
def archive_export(file: Path, nodes: tuple[int, ...], groups: tuple[str, ...], everything: bool, as_json: bool) -> None:
    """Write FILE, a main_0001 archive aiida-core 2.x imports, of the selected nodes (AiiDA's export rules).

    \b
    Example:
      aiida-sqla archive export all.aiida --all
      aiida-sqla archive export some.aiida --nodes 12 --nodes 40 --groups mine
    """
    state = get_state()
    backend = state.backend()
    with state.progress() as progress:
        result = export_archive(file, nodes=list(nodes) or None, groups=list(groups) or None, all=everything,
                                backend=backend, progress=progress)
    if as_json:
        emit_json(result.as_dict())
        return
    counts = result.counts
    click.echo(f"Wrote {result.path} ({result.size_bytes} bytes) in {result.seconds:.2f} s: {counts.get('db_dbnode', 0)} nodes, "
               f"{counts.get('db_dblink', 0)} links, {counts.get('db_dbgroup', 0)} groups, {result.objects} objects.")
