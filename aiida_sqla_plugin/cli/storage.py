"""``aiida-sqla storage ...``: migrate, version, status, info, reset, offline SQL and copy of a profile's database."""
from __future__ import annotations

from pathlib import Path

import click

from ..archive import copy_storage
from ..maintenance import reset_storage
from ..manager import SchemaReport, SchemaState
from ..migration import migration_sql, plan_migration
from .. import reports
from ._root import EXIT_OK, common_options, emit_json, get_state, json_option, report_exit_code

__all__ = ("storage_copy", "storage_group")


@click.group("storage")
@common_options
def storage_group() -> None:
    """Schema migrations, status, statistics and maintenance of a profile's database.

    \b
    Example:
      aiida-sqla storage version; echo "exit code $?"
    """


@storage_group.command("migrate")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@common_options
def storage_migrate(force: bool) -> None:
    """Create or upgrade the database schema to the code's head revision (never downgrades).

    Each revision applied is printed. Back up the database first.

    \b
    Example:
      aiida-sqla -p work storage migrate --force
    """
    state = get_state()
    loaded = state.loaded()
    manager = loaded.backend_manager
    plan = plan_migration(manager)
    report, pending = plan.report, plan.pending
    if not plan.needed:
        click.echo(f"Profile {loaded.profile.name!r} is at the code's head revision {report.code_revision}; nothing to do.")
        return
    source = report.database_revision or "an empty database"
    if not force:
        click.confirm(
            f"Migrate profile {loaded.profile.name!r} ({report.location}) from {source} to {report.code_revision}? "
            "Back up the database first.",
            abort=True,
            err=True,
        )
    with state.progress() as progress:
        done = 0

        def on_revision(down: str | None, up: str) -> None:
            nonlocal done
            done += 1
            click.echo(f"Applied {down or 'empty'} -> {up}")
            if progress is not None:
                progress("migrating", done, len(pending))

        applied = manager.migrate(on_revision=on_revision)
    click.echo(f"Profile {loaded.profile.name!r} migrated to {report.code_revision} ({len(applied)} step(s)).")


def _report_exit(report: SchemaReport) -> None:
    code = report_exit_code(report)
    if code != EXIT_OK:
        click.get_current_context().exit(code)


@storage_group.command("version")
@json_option
@common_options
def storage_version(as_json: bool) -> None:
    """Print the code's schema revision, the database's revision and generation; the exit code tells the state.

    \b
    Exit codes: 0 compatible, 4 migration needed (also never initialised), 5 database ahead of the code, else
    the code of the failure (3 unreachable, 7-14: see aiida-sqla --help).

    \b
    Example:
      aiida-sqla -p work storage version --json
    """
    state = get_state()
    report = state.schema()
    if as_json:
        emit_json({**report.as_dict(), "exit_code": report_exit_code(report)})
    else:
        click.echo(f"code schema revision: {report.code_revision} (generation {report.code_generation})")
        click.echo(f"database schema revision: {report.database_revision or 'none'}"
                   f" (generation {report.database_generation or 'none'})")
        click.echo(f"state: {report.state.value}")
    if report.state != SchemaState.COMPATIBLE:
        click.echo(f"Error: {report.message}", err=True)
    _report_exit(report)


@storage_group.command("status")
@common_options
def storage_status() -> None:
    """Print where the profile's database is, whether it answers, and whether its schema fits (exit codes as version).

    \b
    Example:
      aiida-sqla -p work storage status
    """
    state = get_state()
    loaded = state.loaded()
    report = state.schema()
    click.echo(f"profile: {loaded.profile.name} (backend {loaded.profile.storage_backend})")
    click.echo(f"config file: {state.config_file.path}")
    click.echo(f"database: {report.location}")
    click.echo(f"schema: {report.state.value} (database {report.database_revision or 'none'}, code {report.code_revision})")
    if report.state == SchemaState.COMPATIBLE:
        counts = reports.count_entities(loaded.backend.engine)
        click.echo(f"nodes: {counts['nodes']}, links: {counts['links']}")
    else:
        click.echo(f"Error: {report.message}", err=True)
    _report_exit(report)


@storage_group.command("info")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw nodes created per UTC day, stacked by type, into this file (e.g. created.png; matplotlib).")
@json_option
@common_options
def storage_info(plot_path: Path | None, as_json: bool) -> None:
    """Print counts of every entity, creation statistics, schema revision and database size.

    \b
    Example:
      aiida-sqla -p work storage info --json
      aiida-sqla -p work storage info --plot created.png
    """
    state = get_state()
    backend = state.backend()
    data = reports.storage_info(backend, state.loaded().query_manager(backend))
    if plot_path is not None:
        from ..plot import plot_creation_statistics  # noqa: PLC0415 - matplotlib is optional and slow to import

        plot_creation_statistics(data["creation_statistics"], plot_path)
        click.echo(f"Wrote the creation plot to {plot_path}", err=True)
    if as_json:
        emit_json(data)
        return
    click.echo(f"profile: {data['profile']}")
    click.echo(f"database: {data['location']}")
    click.echo(f"schema revision: {data['schema_revision']} (generation {data['schema_generation']})")
    size = data["database_size_bytes"]
    click.echo(f"database size: {'unknown' if size is None else f'{size / 1e6:.2f} MB ({size} bytes)'}")
    for key, value in data["counts"].items():
        click.echo(f"{key}: {value}")
    statistics = data["creation_statistics"]
    for node_type, count in sorted(statistics["types"].items()):
        click.echo(f"  {node_type}: {count}")
    if statistics["ctime_by_day"]:
        days = sorted(statistics["ctime_by_day"])
        click.echo(f"created between {days[0]} and {days[-1]} (UTC days)")


@storage_group.command("connections")
@json_option
@common_options
def storage_connections(as_json: bool) -> None:
    """List the server connections to the profile's PostgreSQL database: application name, pid, state, age.

    Processes of this package name themselves aiida-sqla@HOST:PID, so the connection budget in use can be
    counted per host and process (see docs/deployment.md).

    \b
    Example:
      aiida-sqla -p work storage connections --json
    """
    rows = reports.connections(get_state().backend().engine)
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(
            f"{row['application_name'] or '-'}  pid {row['pid']}  {row['state'] or 'unknown'}  "
            f"connected {row['age_seconds']:.0f} s ago  ({row['user']}@{row['client_address'] or 'socket'})"
        )
    click.echo(f"{len(rows)} other connection(s) to this database", err=True)


@storage_group.command("reset")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@common_options
def storage_reset(yes: bool) -> None:
    """Delete every node, link, group, user, computer, comment and log; settings and schema stay.

    \b
    Example:
      aiida-sqla -p scratch storage reset --yes
    """
    state = get_state()
    backend = state.backend()
    if not yes:
        click.confirm(f"Delete ALL data of profile {state.loaded().profile.name!r} (settings are kept)?", abort=True, err=True)
    deleted = reset_storage(backend.engine)
    click.echo(f"Deleted {sum(deleted.values())} row(s) from {len(deleted)} table(s); settings kept.")
    if state.verbose:
        for table, count in deleted.items():
            click.echo(f"  {table}: {count}")


@storage_group.command("sql")
@click.option("--from", "from_revision", metavar="REV", help="Revision the database is at (default: empty).")
@click.option("--to", "to_revision", metavar="REV", default="head", show_default=True, help="Revision to reach.")
@common_options
def storage_sql(from_revision: str | None, to_revision: str) -> None:
    """Print the SQL of the migrations without running them (alembic offline mode; PostgreSQL profiles).

    \b
    Example:
      aiida-sqla -p work storage sql --from main_0001 --to head > upgrade.sql
    """
    state = get_state()
    click.echo(migration_sql(state.profile(), from_revision, to_revision), nl=False)


@storage_group.command("copy")
@click.option("--to", "target", required=True, metavar="PROFILE", help="The profile to copy into (empty unless --merge).")
@click.option("--merge", is_flag=True, help="Merge into a non-empty profile with the import rules (same UUID: present).")
@json_option
@common_options
def storage_copy(target: str, merge: bool, as_json: bool) -> None:
    """Copy every entity, the closure, the settings and the objects of the profile (-p) into another profile.

    The target is migrated first and must be empty unless --merge; everything is written in one transaction.

    \b
    Example:
      aiida-sqla -p laptop storage copy --to server
    """
    state = get_state()
    state.backend()  # the source's schema must fit the code
    profile = state.config_file.get_profile(target)
    with state.progress() as progress:
        result = copy_storage(state.loaded().profile, profile, merge=merge, progress=progress)
    if as_json:
        emit_json(result.as_dict())
        return
    written = ", ".join(f"{count} {table}" for table, count in result.rows.items())
    how = "merged into" if result.merged else "copied to"
    click.echo(f"Profile {result.source!r} {how} {result.target!r}: {written}; {result.objects} objects.")
