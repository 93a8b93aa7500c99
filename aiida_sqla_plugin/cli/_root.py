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
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy import exc as sa_exc

from .. import __version__
from .. import session as session_module
from ..config import ConfigFile
from ..exceptions import (
    AiidaSqlaError,
    AuthenticationFailed,
    ConfigurationError,
    CorruptStorage,
    DatabaseNotFound,
    DrawingTooLarge,
    ForeignDatabase,
    OptionConflict,
    PoolExhausted,
    ReadOnlyStorage,
    SchemaAhead,
    SchemaBehind,
    StorageFull,
    UnreachableStorage,
    error_line,
)
from ..archive import ArchiveImportError
from ..manager import SchemaReport
from ..plugins import LoadedBackend, load_backend
from ..profile import Profile
from ..progress import ProgressCallback

__all__ = ("EXIT_CODES", "CliState", "cli", "common_options", "emit_json", "exit_code_for", "fail", "get_state", "json_option",
           "report_exit_code")

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_MIGRATION_NEEDED = 4
EXIT_AHEAD = 5
EXIT_TOO_LARGE = 6
EXIT_CONFIGURATION = 7
EXIT_AUTHENTICATION = 8
EXIT_NO_DATABASE = 9
EXIT_CORRUPT = 10
EXIT_FOREIGN = 11
EXIT_READ_ONLY = 12
EXIT_STORAGE_FULL = 13
EXIT_POOL_EXHAUSTED = 14
EXIT_BAD_ARCHIVE = 15
#: Exit codes of every command, as documented in ``--help`` and the README.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success (storage version: the database schema matches the code)",
    EXIT_ERROR: "error: unknown profile, pk or setting, bad JSON value, refused confirmation, ...",
    EXIT_USAGE: "usage error: unknown command, option or missing argument",
    EXIT_UNREACHABLE: "the database is unreachable (no server on that host and port, no such directory)",
    EXIT_MIGRATION_NEEDED: "the database needs a migration (also when it was never initialised)",
    EXIT_AHEAD: "the database schema is ahead of this code",
    EXIT_TOO_LARGE: "graph draw: the picture would exceed --max-nodes (nothing drawn)",
    EXIT_CONFIGURATION: "the profile's storage configuration is wrong (unsupported engine, bad URL or keys)",
    EXIT_AUTHENTICATION: "the database server rejected the user name or password",
    EXIT_NO_DATABASE: "the server answers but the profile's database does not exist",
    EXIT_CORRUPT: "the database is corrupt (not a database, truncated, tables without revision, wrong generation)",
    EXIT_FOREIGN: "the database belongs to another application (its tables, none of this plugin)",
    EXIT_READ_ONLY: "the storage is read-only (the profile's \"read_only\" flag, or a read-only SQLite file or directory)",
    EXIT_STORAGE_FULL: "the disk holding the database is full (the failed write was rolled back)",
    EXIT_POOL_EXHAUSTED: "no free connection in the process's pool within pool_timeout (raise pool_size/max_overflow)",
    EXIT_BAD_ARCHIVE: "archive import refused (unsupported version, unreadable file or invalid entry): nothing imported",
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
            self.close()  # each bar is finished before the next starts, so none is redrawn above a newer one
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
        return self.loaded().backend_manager.schema_report()

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


#: Exception type -> exit code; the first entry the error is an instance of wins (most specific first).
ERROR_EXIT_CODES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (
    (PoolExhausted, EXIT_POOL_EXHAUSTED),
    (SchemaAhead, EXIT_AHEAD),
    (ForeignDatabase, EXIT_FOREIGN),
    (CorruptStorage, EXIT_CORRUPT),
    (AuthenticationFailed, EXIT_AUTHENTICATION),
    (DatabaseNotFound, EXIT_NO_DATABASE),
    (ReadOnlyStorage, EXIT_READ_ONLY),
    ((UnreachableStorage, sa_exc.OperationalError, sa_exc.DatabaseError), EXIT_UNREACHABLE),
    (StorageFull, EXIT_STORAGE_FULL),
    (SchemaBehind, EXIT_MIGRATION_NEEDED),
    (OptionConflict, EXIT_USAGE),
    (ConfigurationError, EXIT_CONFIGURATION),
    (DrawingTooLarge, EXIT_TOO_LARGE),
    (ArchiveImportError, EXIT_BAD_ARCHIVE),
)


def report_exit_code(report: SchemaReport) -> int:
    """The exit code of a schema report: 0 when compatible, else the one of its error."""
    error = report.error()
    return EXIT_OK if error is None else exit_code_for(error)


def exit_code_for(error: BaseException) -> int:
    """The documented exit code of a library error, from its type alone."""
    for kinds, code in ERROR_EXIT_CODES:
        if isinstance(error, kinds):
            return code
    return EXIT_ERROR


def _one_line(error: BaseException) -> str:
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        return f"database error: {error_line(error)}; check that the database is reachable and run 'aiida-sqla storage status'"
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
