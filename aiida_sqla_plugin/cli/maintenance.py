"""``aiida-sqla storage backup|restore|integrity|maintain``: keeping a profile's storage safe over years.

The commands join the ``storage`` group; the work is :mod:`aiida_sqla_plugin.maintenance`'s.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..maintenance import backup, check_integrity, maintain, restore, verify_backup
from ._root import EXIT_ERROR, EXIT_USAGE, common_options, emit_json, fail, get_state, json_option
from .storage import storage_group

__all__ = ("storage_backup", "storage_integrity", "storage_maintain", "storage_restore")


@storage_group.command("backup")
@click.argument("dest", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--keep", type=click.IntRange(min=1), metavar="N", help="Keep only the newest N backups in DEST.")
@click.option("--verify", "verify", metavar="BACKUP", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Check a backup's files against its manifest instead of making one.")
@common_options
def storage_backup(dest: Path | None, keep: int | None, verify: Path | None) -> None:
    """Back up the profile's database online into a new folder of DEST (named by UTC time), or --verify one.

    \b
    Examples:
      aiida-sqla -p work storage backup /backups/work --keep 7
      aiida-sqla storage backup --verify /backups/work/last-backup
    """
    state = get_state()
    if verify is not None:
        if dest is not None or keep is not None:
            fail("--verify takes no DEST or --keep", EXIT_USAGE)
        verify_backup(verify)
        click.echo(f"Backup {verify} is complete and matches its manifest.")
        return
    if dest is None:
        fail("give DEST (the folder of backups) or --verify BACKUP", EXIT_USAGE)
    state.backend()  # the schema must fit the code
    with state.progress() as progress:
        folder = backup(state.loaded().profile, dest, keep=keep, progress=progress)
    click.echo(f"Backup written to {folder}")


@storage_group.command("restore")
@click.argument("backup_path", metavar="BACKUP", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--to", "target", required=True, metavar="PROFILE", help="The (empty) profile to restore into.")
@common_options
def storage_restore(backup_path: Path, target: str) -> None:
    """Restore a backup into an empty profile (a new SQLite file or an empty PostgreSQL database).

    \b
    Example:
      aiida-sqla storage restore /backups/work/last-backup --to work-copy
    """
    state = get_state()
    profile = state.config_file.get_profile(target)
    with state.progress() as progress:
        restore(backup_path, profile, progress=progress)
    click.echo(f"Restored {backup_path} into profile {profile.name!r}.")


@storage_group.command("integrity")
@click.option("--fix", is_flag=True, help="Rebuild a closure table that does not match the links.")
@json_option
@common_options
def storage_integrity(fix: bool, as_json: bool) -> None:
    """Check provenance rules, dangling references, the schema and the closure; exit code 1 when anything is found.

    \b
    Example:
      aiida-sqla -p work storage integrity --json
    """
    state = get_state()
    findings = check_integrity(state.backend(), fix=fix)
    if as_json:
        emit_json({"clean": not findings, "findings": [finding.as_dict() for finding in findings]})
    elif not findings:
        click.echo("No integrity problems found.")
    for finding in findings if not as_json else []:
        shown = ", ".join(map(str, finding.examples))
        click.echo(f"{finding.kind}: {finding.count} ({finding.description}){f'; e.g. {shown}' if shown else ''}")
    if findings:
        if fix and not as_json:
            click.echo("The closure was rebuilt; other findings need a manual fix.", err=True)
        sys.exit(EXIT_ERROR)


@storage_group.command("maintain")
@click.option("--full", is_flag=True, help="Also reclaim space (VACUUM / VACUUM FULL); needs the storage alone.")
@click.option("--dry-run", is_flag=True, help="Estimate what would be reclaimed; change nothing.")
@json_option
@common_options
def storage_maintain(full: bool, dry_run: bool, as_json: bool) -> None:
    """Refresh planner statistics, checkpoint the WAL and with --full reclaim the space of deleted rows.

    Objects of the object store no node references are counted; --full removes them.

    \b
    Example:
      aiida-sqla -p work storage maintain --full --dry-run
    """
    state = get_state()
    result = maintain(state.backend(), full=full, dry_run=dry_run)
    if as_json:
        emit_json(result.as_dict())
        return
    for action in result.actions:
        click.echo(f"{'would run' if dry_run else 'ran'}: {action}")
    verb = "would reclaim about" if dry_run else "reclaimed"
    click.echo(f"{verb} {result.bytes_reclaimed} bytes (database {result.size_before} -> {result.size_after} bytes)")
    objects = f"{result.unreferenced_objects} unreferenced objects ({result.unreferenced_bytes} bytes) in the object store"
    click.echo(f"{objects}, {result.objects_removed} removed" + ("" if full else "; --full removes them"))
