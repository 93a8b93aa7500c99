"""The ``aiida-sqla`` command line: a thin click layer over the library.

The backend of a profile is loaded the way a host loads it (:mod:`aiida_sqla_plugin.plugins`); every command
turns library errors into one line on stderr and an exit code (see :data:`EXIT_CODES`).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from . import __version__
from . import session as session_module
from .config import ConfigFile, default_sqlite_path, prepare_sqlite_storage, validate_profile_name
from .exceptions import (
    AiidaSqlaError,
    ConfigurationError,
    IncompatibleDatabaseSchema,
    NotExistent,
    UnreachableStorage,
    ValidationError,
)
from .maintenance import backup, check_integrity, maintain, restore, verify_backup
from .plugins import LoadedBackend, installed_backends, load_backend
from .profile import Profile, database_url, describe_url
from .progress import ProgressCallback
from .storage import (
    CorruptStorage,
    SchemaAhead,
    SchemaBehind,
    SchemaReport,
    SchemaState,
    count_entities,
    database_size,
    drop_database,
    list_settings,
    migration_sql,
    missing_nodes,
    pending_revisions,
    reset_storage,
    schema_report,
)

__all__ = ("EXIT_CODES", "cli", "main")

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_MIGRATION_NEEDED = 4
EXIT_AHEAD = 5
#: Exit codes of every command, as documented in ``--help`` and the README.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success (storage version: the database schema matches the code)",
    EXIT_ERROR: "error: unknown profile, pk or setting, bad JSON value, refused confirmation, ...",
    EXIT_USAGE: "usage error: unknown command, option or missing argument",
    EXIT_UNREACHABLE: "the database is unreachable or corrupt",
    EXIT_MIGRATION_NEEDED: "the database needs a migration (also when it was never initialised)",
    EXIT_AHEAD: "the database schema is ahead of this code",
}
STATE_EXIT_CODES: dict[SchemaState, int] = {
    SchemaState.COMPATIBLE: EXIT_OK,
    SchemaState.NOT_INITIALISED: EXIT_MIGRATION_NEEDED,
    SchemaState.BEHIND: EXIT_MIGRATION_NEEDED,
    SchemaState.AHEAD: EXIT_AHEAD,
    SchemaState.UNREACHABLE: EXIT_UNREACHABLE,
    SchemaState.CORRUPT: EXIT_UNREACHABLE,
}


def _exit_codes_help() -> str:
    lines = ["\b", "Exit codes:"]
    lines += [f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\n".join(lines)


# -- state, progress and output --------------------------------------------------------------------------


def _stderr_columns() -> int:
    """Width of the terminal on stderr (0 when it reports none, as a fresh pseudo-terminal does)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return 0
    return size.columns if size.lines else 0


class TqdmProgress:
    """A :class:`ProgressCallback` drawing one tqdm bar per description on stderr."""

    def __init__(self) -> None:
        self._bars: dict[str, Any] = {}

    def __call__(self, description: str, done: int, total: int | None) -> None:
        from tqdm import tqdm  # noqa: PLC0415 - only needed on a terminal

        bar = self._bars.get(description)
        if bar is None:
            # A terminal that reports no size (a fresh pseudo-terminal) would get an empty or disabled bar.
            sized = _stderr_columns() > 0
            bar = self._bars[description] = tqdm(
                desc=description, total=total, file=sys.stderr, leave=True,
                ncols=None if sized else 80, nrows=None if sized else 24,
            )
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(max(done - bar.n, 0))

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


@dataclass
class CliState:
    """Options shared by every command, and the backend loaded for the selected profile."""

    profile_name: str | None = None
    verbose: bool = False
    debug: bool = False
    quiet: bool = False
    config_file: ConfigFile = field(default_factory=ConfigFile)
    report: SchemaReport | None = None
    _loaded: LoadedBackend | None = None

    def profile(self) -> Profile:
        """The selected profile (``-p``), else the default one."""
        return self.config_file.get_profile(self.profile_name)

    def loaded(self) -> LoadedBackend:
        """The profile with its backend's plugin manager (loaded once)."""
        if self._loaded is None:
            self._loaded = load_backend(self.profile())
        return self._loaded

    def schema(self) -> SchemaReport:
        """The schema state of the profile's database (inspected anew at each call)."""
        loaded = self.loaded()
        return schema_report(loaded.profile, loaded.backend_manager)

    def backend(self) -> Any:
        """The backend of a database whose schema fits the code; raises the matching error otherwise.

        The report that was checked is kept in :attr:`report`.
        """
        self.report = self.schema()
        error = self.report.error()
        if error is not None:
            raise error
        return self.loaded().backend

    @contextlib.contextmanager
    def progress(self) -> Iterator[ProgressCallback | None]:
        """A progress bar callback when stderr is a terminal and not ``--quiet``, else None."""
        if self.quiet or not sys.stderr.isatty():
            yield None
            return
        bars = TqdmProgress()
        try:
            yield bars
        finally:
            bars.close()

    def info(self, message: str) -> None:
        """A message on stderr (suppressed by ``--quiet``)."""
        if not self.quiet:
            click.echo(message, err=True)


def get_state() -> CliState:
    return click.get_current_context().ensure_object(CliState)


def emit_json(data: Any) -> None:
    """JSON on stdout alone, keys sorted."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


# -- common options --------------------------------------------------------------------------------------


def _set_profile(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(CliState).profile_name = value


def _set_flag(name: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            setattr(ctx.ensure_object(CliState), name, True)

    return callback


def common_options(function: F) -> F:
    """``-p/--profile``, ``-v/--verbose``, ``--debug`` and ``-q/--quiet``, accepted by every command."""
    options = [
        click.option("-p", "--profile", metavar="NAME", expose_value=False, callback=_set_profile,
                     help="Profile to use (default: the default profile)."),
        click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_flag("verbose"),
                     help="More detail; tracebacks on errors."),
        click.option("--debug", is_flag=True, expose_value=False, callback=_set_flag("debug"),
                     help="Tracebacks on errors."),
        click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_flag("quiet"),
                     help="No progress bars or notes on stderr."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (stable keys) on stdout alone.")(function)


# -- errors ----------------------------------------------------------------------------------------------


class CliError(click.ClickException):
    """One line on stderr and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(" ".join(message.split()))
        # click declares exit_code a ClassVar but only ever reads it through the instance, so a per-instance code
        # works; mypy cannot express that override.
        self.exit_code = exit_code  # type: ignore[misc]


def exit_code_for(error: BaseException) -> int:
    """The documented exit code of a library error."""
    if isinstance(error, SchemaAhead):
        return EXIT_AHEAD
    if isinstance(error, (CorruptStorage, UnreachableStorage, sa_exc.OperationalError, sa_exc.DatabaseError)):
        return EXIT_UNREACHABLE
    if isinstance(error, SchemaBehind):
        return EXIT_MIGRATION_NEEDED
    if isinstance(error, IncompatibleDatabaseSchema):
        message = str(error)
        if "ahead" in message:
            return EXIT_AHEAD
        return EXIT_UNREACHABLE if "generation" in message else EXIT_MIGRATION_NEEDED
    return EXIT_ERROR


def _one_line(error: BaseException) -> str:
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        reason = str(error.orig).strip().splitlines()[0]
        return f"database error: {reason}; check that the database is reachable and run 'aiida-sqla storage status'"
    return str(error)


class RootGroup(click.Group):
    """The top-level group: turns library errors into :class:`CliError` and closes engines at exit."""

    def invoke(self, ctx: click.Context) -> Any:
        ctx.ensure_object(CliState)  # one state, shared by every sub-context
        ctx.call_on_close(session_module.dispose_engines)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except (AiidaSqlaError, sa_exc.DBAPIError) as error:
            state = ctx.ensure_object(CliState)
            if state.debug or state.verbose:
                traceback.print_exc(file=sys.stderr)
            raise CliError(_one_line(error), exit_code_for(error)) from error
        except Exception as error:  # noqa: BLE001 - a bug: one line unless asked for the traceback
            state = ctx.ensure_object(CliState)
            if state.debug or state.verbose:
                raise
            raise CliError(
                f"unexpected {type(error).__name__}: {error} (run again with --debug for the traceback and report it)"
            ) from error


def fail(message: str, exit_code: int = EXIT_ERROR) -> NoReturn:
    raise CliError(message, exit_code)


# -- root ------------------------------------------------------------------------------------------------


@click.group(
    cls=RootGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=_exit_codes_help(),
)
@click.version_option(__version__, prog_name="aiida-sqla")
@common_options
def cli() -> None:
    """Manage aiida-sqla storage profiles: set up, migrate, inspect, query and clean up.

    \b
    Example:
      aiida-sqla demo                               # everything on a SQLite file
      aiida-sqla profile create work --url postgresql+psycopg2://aiida@localhost/aiida
      aiida-sqla -p work storage migrate --force

    Profiles live in one config file (AIIDA_SQLA_CONFIG_DIR overrides its directory); new SQLite databases go to
    the user data directory (AIIDA_SQLA_DATA_DIR overrides it).
    """


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="aiida-sqla")


# -- profile ---------------------------------------------------------------------------------------------


def _masked_config(profile: Profile) -> dict[str, Any]:
    config = dict(profile.storage_config)
    if config.get("url"):
        with contextlib.suppress(Exception):
            config["url"] = make_url(str(config["url"])).render_as_string(hide_password=True)
    if config.get("database_password"):
        config["database_password"] = "***"
    return config


def _location(profile: Profile) -> str:
    try:
        return describe_url(database_url(profile))
    except ConfigurationError as error:
        return f"invalid storage config ({error})"


@cli.group("profile")
@common_options
def profile_group() -> None:
    """Create, list, show, select and delete profiles.

    \b
    Example:
      aiida-sqla profile create work --url postgresql+psycopg2://aiida@localhost:5432/aiida --default
    """


@profile_group.command("create")
@click.argument("name")
@click.option("--url", help="SQLAlchemy URL of the database (postgresql+psycopg2://... or sqlite:///...).")
@click.option("--engine", type=click.Choice(["postgresql", "sqlite"]), help="Database engine, instead of --url.")
@click.option("--host", help="PostgreSQL host (default: the local socket).")
@click.option("--port", type=int, help="PostgreSQL port (default 5432).")
@click.option("--user", help="Database user.")
@click.option("--password", help="Database password (stored in the config file, which only you can read).")
@click.option("--database", help="Database name (PostgreSQL) or file path (SQLite).")
@click.option("--backend", "storage_backend", default="sqlalchemy", show_default=True,
              help="Entry-point name of the storage backend.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default profile.")
@common_options
def profile_create(name: str, url: str | None, engine: str | None, host: str | None, port: int | None,
                   user: str | None, password: str | None, database: str | None, storage_backend: str,
                   make_default: bool) -> None:
    """Create the profile NAME. Without --url or --engine it gets a SQLite file in the user data directory.

    The first profile becomes the default.

    \b
    Example:
      aiida-sqla profile create work --url postgresql+psycopg2://aiida:secret@db.example.org:5432/aiida
      aiida-sqla profile create local            # SQLite file in the user data directory
    """
    state = get_state()
    validate_profile_name(name)
    parts = {"--host": host, "--port": port, "--user": user, "--password": password, "--database": database}
    if url and (engine or any(value is not None for value in parts.values())):
        raise click.UsageError("give either --url or --engine with --host/--port/--user/--password/--database, not both")
    if url:
        storage_config: dict[str, Any] = {"url": url}
    elif engine == "postgresql":
        if not database:
            raise click.UsageError("--engine postgresql needs --database NAME")
        storage_config = {
            "database_engine": "postgresql_psycopg2", "database_hostname": host, "database_port": port,
            "database_username": user, "database_password": password, "database_name": database,
        }
    else:
        if engine is None and any(value is not None for value in parts.values()):
            raise click.UsageError("--host/--port/--user/--password/--database need --engine (or use --url)")
        path = click.format_filename(database) if database else str(default_sqlite_path(name))
        storage_config = {"url": f"sqlite:///{path}"}
    if storage_backend not in installed_backends():
        raise ConfigurationError(
            f"no storage backend {storage_backend!r} is installed; installed: {', '.join(installed_backends()) or 'none'}"
        )
    profile = prepare_sqlite_storage(Profile(name, storage_backend, storage_config))
    location = describe_url(database_url(profile))
    state.config_file.add_profile(profile, make_default=make_default)
    default = state.config_file.read().default_profile == name
    click.echo(f"Created profile {name!r}: {location}{' (default profile)' if default else ''}.")
    state.info(f"Next: aiida-sqla -p {name} storage migrate")


@profile_group.command("list")
@json_option
@common_options
def profile_list(as_json: bool) -> None:
    """List the profiles; the default one is marked with '*'.

    \b
    Example:
      aiida-sqla profile list --json
    """
    state = get_state()
    config = state.config_file.read()
    rows = [
        {"name": name, "storage_backend": profile.storage_backend, "location": _location(profile),
         "default": name == config.default_profile}
        for name, profile in sorted(config.profiles.items())
    ]
    if as_json:
        emit_json({"config_file": str(state.config_file.path), "default_profile": config.default_profile, "profiles": rows})
        return
    if not rows:
        state.info(f"No profiles in {state.config_file.path}; create one with 'aiida-sqla profile create NAME'.")
    for row in rows:
        click.echo(f"{'*' if row['default'] else ' '} {row['name']}  {row['location']}")


@profile_group.command("show")
@click.argument("name", required=False)
@json_option
@common_options
def profile_show(name: str | None, as_json: bool) -> None:
    """Show the profile NAME (default: -p or the default profile), passwords hidden.

    \b
    Example:
      aiida-sqla profile show work
    """
    state = get_state()
    config = state.config_file.read()
    profile = config.get(name or state.profile_name)
    data: dict[str, Any] = {
        "name": profile.name,
        "storage_backend": profile.storage_backend,
        "default": profile.name == config.default_profile,
        "location": _location(profile),
        "storage_config": _masked_config(profile),
    }
    if as_json:
        emit_json(data)
        return
    click.echo(f"name: {data['name']}{' (default)' if data['default'] else ''}")
    click.echo(f"storage_backend: {data['storage_backend']}")
    click.echo(f"location: {data['location']}")
    for key, value in sorted(data["storage_config"].items()):
        click.echo(f"storage_config.{key}: {json.dumps(value)}")


@profile_group.command("set-default")
@click.argument("name")
@common_options
def profile_set_default(name: str) -> None:
    """Make NAME the default profile.

    \b
    Example:
      aiida-sqla profile set-default work
    """
    get_state().config_file.set_default(name)
    click.echo(f"Default profile: {name}")


@profile_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--drop-database", "drop_db", is_flag=True, help="Also delete the database (SQLite file or PostgreSQL database).")
@common_options
def profile_delete(name: str, yes: bool, drop_db: bool) -> None:
    """Delete the profile NAME from the config file; the database is kept unless --drop-database.

    \b
    Example:
      aiida-sqla profile delete scratch --yes --drop-database
    """
    drop = drop_db
    state = get_state()
    profile = state.config_file.get_profile(name)
    what = f"profile {name!r}" + (f" AND its database ({_location(profile)})" if drop else " (the database is kept)")
    if not yes:
        click.confirm(f"Delete {what}?", abort=True, err=True)
    if drop:
        dropped = drop_database(profile)
        click.echo(f"Dropped the {dropped}.")
    state.config_file.remove_profile(name)
    click.echo(f"Deleted profile {name!r}.")


# -- storage ---------------------------------------------------------------------------------------------


@cli.group("storage")
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
    report = schema_report(loaded.profile, manager)
    if report.state == SchemaState.COMPATIBLE:
        click.echo(f"Profile {loaded.profile.name!r} is at the code's head revision {report.code_revision}; nothing to do.")
        return
    if report.state not in (SchemaState.NOT_INITIALISED, SchemaState.BEHIND):
        error = report.error()
        assert error is not None
        raise error
    pending = pending_revisions(report.database_revision)
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
    code = STATE_EXIT_CODES[report.state]
    if code != EXIT_OK:
        click.get_current_context().exit(code)


@storage_group.command("version")
@json_option
@common_options
def storage_version(as_json: bool) -> None:
    """Print the code's schema revision, the database's revision and generation; the exit code tells the state.

    \b
    Exit codes: 0 compatible, 3 unreachable or corrupt, 4 migration needed (also never initialised),
    5 database ahead of the code.

    \b
    Example:
      aiida-sqla -p work storage version --json
    """
    state = get_state()
    report = state.schema()
    if as_json:
        emit_json({**report.as_dict(), "exit_code": STATE_EXIT_CODES[report.state]})
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
    report = schema_report(loaded.profile, loaded.backend_manager)
    click.echo(f"profile: {loaded.profile.name} (backend {loaded.profile.storage_backend})")
    click.echo(f"config file: {state.config_file.path}")
    click.echo(f"database: {report.location}")
    click.echo(f"schema: {report.state.value} (database {report.database_revision or 'none'}, code {report.code_revision})")
    if report.state == SchemaState.COMPATIBLE:
        counts = count_entities(loaded.backend.engine)
        click.echo(f"nodes: {counts['nodes']}, links: {counts['links']}")
    else:
        click.echo(f"Error: {report.message}", err=True)
    _report_exit(report)


@storage_group.command("info")
@json_option
@common_options
def storage_info(as_json: bool) -> None:
    """Print counts of every entity, creation statistics, schema revision and database size.

    \b
    Example:
      aiida-sqla -p work storage info --json
    """
    state = get_state()
    backend = state.backend()
    loaded = state.loaded()
    report = state.report
    assert report is not None
    engine = backend.engine
    data = {
        "profile": loaded.profile.name,
        "location": report.location,
        "dialect": engine.dialect.name,
        "schema_revision": report.database_revision,
        "schema_generation": report.database_generation,
        "database_size_bytes": database_size(engine),
        "counts": count_entities(engine),
        "creation_statistics": loaded.query_manager(backend).get_creation_statistics(),
    }
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


# -- storage: backup, restore, integrity, maintain ------------------------------------------------------


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


# -- alembic ---------------------------------------------------------------------------------------------

ALEMBIC_COMMANDS = ("current", "heads", "history", "upgrade", "downgrade", "stamp")


@cli.command("alembic", short_help="Run an alembic command on the profile's database (developers).")
@click.argument("command_name", metavar="COMMAND", type=click.Choice(ALEMBIC_COMMANDS))
@click.argument("args", nargs=-1)
@click.option("--force", is_flag=True, help="Do not ask before downgrade or stamp.")
@common_options
def alembic_command(command_name: str, args: tuple[str, ...], force: bool) -> None:
    """Run an alembic COMMAND on the profile's database (developers): current, heads, history [RANGE],
    upgrade REV, downgrade REV, stamp REV.

    \b
    Example:
      aiida-sqla -p work alembic history
      aiida-sqla -p work alembic downgrade main_0001 --force
    """
    from .manage import execute_alembic_command  # noqa: PLC0415

    state = get_state()
    loaded = state.loaded()
    kwargs: dict[str, Any] = {}
    if command_name in ("upgrade", "downgrade", "stamp"):
        if len(args) != 1:
            raise click.UsageError(f"alembic {command_name} takes exactly one REVISION")
        kwargs["revision"] = args[0]
    elif command_name == "history":
        if len(args) > 1:
            raise click.UsageError("alembic history takes at most one RANGE (e.g. main_0001:head)")
        kwargs["rev_range"] = args[0] if args else None
        kwargs["verbose"] = state.verbose
    else:
        if args:
            raise click.UsageError(f"alembic {command_name} takes no arguments")
        kwargs["verbose"] = state.verbose
    if command_name in ("downgrade", "stamp") and not force:
        click.confirm(f"Run alembic {command_name} {args[0]} on profile {loaded.profile.name!r}?", abort=True, err=True)
    session_module.check_connection(loaded.profile)
    from alembic.util import CommandError  # noqa: PLC0415

    try:
        execute_alembic_command(command_name, loaded.profile, **kwargs)
    except CommandError as error:
        raise ValidationError(f"alembic {command_name}: {error}") from error
    if command_name in ("upgrade", "downgrade", "stamp"):
        revision = loaded.backend_manager.get_schema_version_database()
        click.echo(f"Database revision now: {revision or 'none'}")


# -- settings --------------------------------------------------------------------------------------------


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValidationError(
            f"the value {text!r} is not valid JSON ({error.msg} at character {error.pos}); "
            "quote strings, e.g. '\"text\"', or give a number, true/false/null, a list or an object"
        ) from None


@contextlib.contextmanager
def _setting_hint() -> Iterator[None]:
    """Add the fix to an unknown-setting error."""
    try:
        yield
    except NotExistent as error:
        raise NotExistent(f"{error}; list the stored settings with 'aiida-sqla setting list'") from error


@cli.group("setting")
@common_options
def setting_group() -> None:
    """Read and write the storage's key/value settings (values as JSON).

    \b
    Example:
      aiida-sqla setting set max_workers 8
    """


@setting_group.command("get")
@click.argument("key")
@common_options
def setting_get(key: str) -> None:
    """Print the JSON value of the setting KEY.

    \b
    Example:
      aiida-sqla setting get schema_generation
    """
    state = get_state()
    state.backend()
    with _setting_hint():
        setting = state.loaded().settings_manager.get(key)
    click.echo(json.dumps(setting.value, sort_keys=True))
    if state.verbose:
        click.echo(f"description: {setting.description}", err=True)
        click.echo(f"time: {setting.time.isoformat()}", err=True)


@setting_group.command("set")
@click.argument("key")
@click.argument("value", metavar="JSON")
@click.option("--description", help="Description to store with it (default: keep the stored one).")
@common_options
def setting_set(key: str, value: str, description: str | None) -> None:
    """Set KEY to the JSON value given (strings need JSON quotes).

    \b
    Example:
      aiida-sqla setting set greeting '"hello"'
      aiida-sqla setting set limits '{"cpu": 4, "memory": "8G"}' --description "job limits"
    """
    state = get_state()
    parsed = _parse_json(value)
    state.backend()
    state.loaded().settings_manager.set(key, parsed, description)
    click.echo(f"{key} = {json.dumps(parsed, sort_keys=True)}")


@setting_group.command("delete")
@click.argument("key")
@common_options
def setting_delete(key: str) -> None:
    """Delete the setting KEY.

    \b
    Example:
      aiida-sqla setting delete greeting
    """
    state = get_state()
    state.backend()
    with _setting_hint():
        state.loaded().settings_manager.delete(key)
    click.echo(f"Deleted setting {key!r}.")


@setting_group.command("list")
@json_option
@common_options
def setting_list(as_json: bool) -> None:
    """List every setting with its JSON value.

    \b
    Example:
      aiida-sqla setting list --json
    """
    state = get_state()
    backend = state.backend()
    settings = list_settings(backend.engine)
    if as_json:
        emit_json({s.key: {"value": s.value, "description": s.description, "time": s.time.isoformat()} for s in settings})
        return
    for setting in settings:
        click.echo(f"{setting.key} = {json.dumps(setting.value, sort_keys=True)}")
        if state.verbose and setting.description:
            click.echo(f"    {setting.description}")


# -- nodes and graph -------------------------------------------------------------------------------------


def _require_nodes(backend: Any, pks: tuple[int, ...] | list[int]) -> None:
    missing = missing_nodes(backend.engine, pks)
    if missing:
        shown = ", ".join(map(str, sorted(missing)[:20])) + (", ..." if len(missing) > 20 else "")
        raise NotExistent(
            f"no node with pk {shown} in profile {backend.profile.name!r}; check the pks "
            "(aiida-sqla storage info shows how many nodes there are)"
        )


def _format_pks(pks: set[int] | list[int], limit: int | None = None) -> str:
    ordered = sorted(pks)
    if limit is not None and len(ordered) > limit:
        return " ".join(map(str, ordered[:limit])) + f" ... ({len(ordered) - limit} more)"
    return " ".join(map(str, ordered))


@cli.group("node")
@common_options
def node_group() -> None:
    """Operate on provenance nodes.

    \b
    Example:
      aiida-sqla node delete 42 --dry-run -v
    """


@node_group.command("delete")
@click.argument("pks", metavar="PK...", nargs=-1, type=int, required=True)
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--create-forward/--no-create-forward", default=None,
              help="Also delete the outputs created by deleted calculations (default: yes).")
@click.option("--call-calc-forward/--no-call-calc-forward", default=None,
              help="Also delete the calculations called by deleted workflows (default: yes).")
@click.option("--call-work-forward/--no-call-work-forward", default=None,
              help="Also delete the workflows called by deleted workflows (default: yes).")
@common_options
def node_delete(pks: tuple[int, ...], dry_run: bool, force: bool, create_forward: bool | None,
                call_calc_forward: bool | None, call_work_forward: bool | None) -> None:
    """Delete the nodes PK... and everything AiiDA's deletion rules drag along.

    Prints how many nodes would go (which ones with -v) and asks before deleting, unless --force.

    \b
    Example:
      aiida-sqla node delete 42 43 --dry-run -v
      aiida-sqla node delete 42 --no-create-forward --force
    """
    from .graph import delete_nodes  # noqa: PLC0415

    state = get_state()
    backend = state.backend()
    _require_nodes(backend, pks)
    rules = {
        name: value
        for name, value in (("create_forward", create_forward), ("call_calc_forward", call_calc_forward),
                            ("call_work_forward", call_work_forward))
        if value is not None
    }

    def describe(found: set[int]) -> None:
        click.echo(f"{'Would delete' if dry_run else 'Deleting'} {len(found)} node(s).")
        if state.verbose and found:
            click.echo(f"pks: {_format_pks(found)}")

    def confirm(found: set[int]) -> bool:
        describe(found)
        if not found:
            return True
        return not click.confirm(f"Delete these {len(found)} node(s)?", err=True)

    with state.progress() as progress:
        if dry_run:
            found, _ = delete_nodes(pks, dry_run=True, backend=backend, progress=progress, **rules)
            describe(found)
            return
        found, deleted = delete_nodes(pks, dry_run=False if force else confirm, backend=backend, progress=progress, **rules)
    if force:
        describe(found)
    if not deleted:
        fail("deletion cancelled; nothing was deleted")
    click.echo(f"Deleted {len(found)} node(s).")


@cli.group("graph")
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
    @click.option("--link-types", default="create,input_calc", show_default=True,
                  help="Comma-separated link types to follow (create, return, input_calc, input_work, call_calc, call_work).")
    @click.option("--max-depth", type=click.IntRange(min=0), help="Follow at most this many links (default: no limit).")
    @json_option
    @common_options
    def command(pks: tuple[int, ...], link_types: str, max_depth: int | None, as_json: bool) -> None:
        from . import graph  # noqa: PLC0415

        state = get_state()
        backend = state.backend()
        _require_nodes(backend, pks)
        types = _link_types(link_types)
        function = graph.get_ancestors if upward else graph.get_descendants
        found = function(pks, link_types=types, max_depth=max_depth, backend=backend)
        if as_json:
            emit_json({"pks": sorted(set(pks)), "link_types": types, "max_depth": max_depth, what: sorted(found),
                       "count": len(found)})
            return
        click.echo(f"{len(found)} {what}")
        if found:
            click.echo(_format_pks(found, None if state.verbose else 200))

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
@click.option("--link-types", default="create,input_calc", show_default=True, help="Comma-separated link types it covers.")
@common_options
def closure_install(link_types: str) -> None:
    """Install the closure triggers and fill db_dbpath from the links (replaces an installed closure).

    \b
    Example:
      aiida-sqla graph closure install --link-types create,input_calc
    """
    from .closure import closure_status, install_tc  # noqa: PLC0415

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
    from .closure import uninstall_tc  # noqa: PLC0415

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
    from .closure import closure_status, rebuild_tc  # noqa: PLC0415

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
    from .closure import closure_status  # noqa: PLC0415

    session = _closure_session(get_state())
    _print_closure_status(closure_status(session), as_json)


# -- demo ------------------------------------------------------------------------------------------------

DEMO_PROFILE = "demo"


@cli.command("demo")
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
    from .graph import delete_nodes, get_ancestors  # noqa: PLC0415
    from .synthetic import build_graph  # noqa: PLC0415

    state = get_state()
    note: Callable[[str], None] = state.info if as_json else click.echo
    name = state.profile_name or DEMO_PROFILE
    state.profile_name = name
    if name not in state.config_file.read().profiles:
        path = default_sqlite_path(name)
        state.config_file.add_profile(prepare_sqlite_storage(Profile(name, "sqlalchemy", {"url": f"sqlite:///{path}"})))
        note(f"Created profile {name!r}: SQLite file {path}")
    loaded = state.loaded()
    manager = loaded.backend_manager
    report = schema_report(loaded.profile, manager)
    if report.state in (SchemaState.NOT_INITIALISED, SchemaState.BEHIND):
        applied = manager.migrate()
        note(f"Migrated profile {name!r} to {report.code_revision} ({len(applied)} step(s))")
    elif report.state != SchemaState.COMPATIBLE:
        error = report.error()
        assert error is not None
        raise error
    backend = loaded.backend
    with state.progress() as progress:
        graph = build_graph(backend, nodes, seed=0, progress=progress)
    counts = count_entities(backend.engine)
    statistics = loaded.query_manager(backend).get_creation_statistics()
    ancestry_types = ["create", "input_calc"]
    output = graph.deepest_node
    ancestors = sorted(get_ancestors([output], link_types=ancestry_types, backend=backend)) if output is not None else []
    workflow = graph.workflow_ids[0] if graph.workflow_ids else None
    doomed: set[int] = set()
    if workflow is not None:
        doomed, _ = delete_nodes([workflow], dry_run=True, backend=backend)
    data: dict[str, Any] = {
        "profile": name,
        "location": report.location,
        "stored": {
            "nodes": len(graph.node_ids), "data": len(graph.data_ids), "calculations": len(graph.calc_ids),
            "workflows": len(graph.workflow_ids), "links": graph.link_count, "link_types": dict(graph.link_counts),
            "seconds": {key: round(value, 3) for key, value in graph.store_seconds.items()},
        },
        "counts": counts,
        "creation_statistics": {"total": statistics["total"], "types": statistics["types"],
                                "days": len(statistics["ctime_by_day"])},
        "ancestors": {"node": output, "depth": graph.depth, "link_types": ancestry_types, "count": len(ancestors),
                      "pks": ancestors},
        "dry_run_delete": {"workflow": workflow, "count": len(doomed), "pks": sorted(doomed)},
    }
    if as_json:
        emit_json(data)
        return
    stored = data["stored"]
    seconds = sum(graph.store_seconds.values())
    click.echo(f"\nStored {stored['nodes']} nodes ({stored['data']} data, {stored['calculations']} calculations, "
               f"{stored['workflows']} workflows) and {stored['links']} links in {seconds:.2f} s.")
    click.echo("Links by type: " + ", ".join(f"{key} {value}" for key, value in sorted(stored["link_types"].items())))
    click.echo(f"\nStorage {report.location} now holds: "
               + ", ".join(f"{value} {key}" for key, value in counts.items()) + ".")
    click.echo("Nodes by type:")
    for node_type, count in sorted(statistics["types"].items()):
        click.echo(f"  {node_type:<50} {count}")
    click.echo(f"Created over {len(statistics['ctime_by_day'])} day(s).")
    limit = None if state.verbose else 30
    click.echo(f"\nAncestors of output {output} (end of the deepest chain, {graph.depth} links; "
               f"link types {', '.join(ancestry_types)}): {len(ancestors)}")
    if ancestors:
        click.echo(f"  {_format_pks(ancestors, limit)}")
    click.echo(f"\nDeleting workflow {workflow} would delete {len(doomed)} node(s) (dry run, nothing deleted)")
    if doomed:
        click.echo(f"  {_format_pks(doomed, limit)}")
    click.echo(f"\nNext: aiida-sqla -p {name} storage info, aiida-sqla -p {name} graph ancestors {output}")
