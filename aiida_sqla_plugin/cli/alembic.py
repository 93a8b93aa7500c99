"""``aiida-sqla alembic COMMAND``: alembic on the profile's database, for developers."""
from __future__ import annotations

from typing import Any

import click
from alembic.util import CommandError

from ..exceptions import ValidationError
from ..manage import execute_alembic_command
from ..session import check_connection
from ._root import common_options, get_state

__all__ = ("alembic_command",)


ALEMBIC_COMMANDS = ("current", "heads", "history", "upgrade", "downgrade", "stamp")


@click.command("alembic", short_help="Run an alembic command on the profile's database (developers).")
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
    check_connection(loaded.profile)
    try:
        execute_alembic_command(command_name, loaded.profile, **kwargs)
    except CommandError as error:
        raise ValidationError(f"alembic {command_name}: {error}") from error
    if command_name in ("upgrade", "downgrade", "stamp"):
        revision = loaded.backend_manager.get_schema_version_database()
        click.echo(f"Database revision now: {revision or 'none'}")
