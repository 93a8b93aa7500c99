"""``aiida-sqla profile ...``: create, list, show, select and delete profiles."""
from __future__ import annotations

import json
from typing import Any

import click

from ..config import build_profile
from ..exceptions import ConfigurationError
from ..maintenance import drop_database
from ..profile import BACKEND_NAME, Profile, database_url, describe_url, masked_storage_config
from ._root import common_options, emit_json, get_state, json_option

__all__ = ("profile_group",)


def _location(profile: Profile) -> str:
    try:
        return describe_url(database_url(profile))
    except ConfigurationError as error:
        return f"invalid storage config ({error})"


@click.group("profile")
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
@click.option("--password-file", type=click.Path(dir_okay=False),
              help="File holding the password on its first line (read at each connection, not copied).")
@click.option("--database", help="Database name (PostgreSQL) or file path (SQLite).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A libpq connection option such as sslmode=require (repeatable).")
@click.option("--read-only", is_flag=True, help="Open every transaction read-only (analysis hosts, replicas).")
@click.option("--backend", "storage_backend", default=BACKEND_NAME, show_default=True,
              help="Entry-point name of the storage backend.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default profile.")
@common_options
def profile_create(name: str, url: str | None, engine: str | None, host: str | None, port: int | None,
                   user: str | None, password: str | None, password_file: str | None, database: str | None,
                   options: tuple[str, ...], read_only: bool, storage_backend: str, make_default: bool) -> None:
    """Create the profile NAME. Without --url or --engine it gets a SQLite file in the user data directory.

    The first profile becomes the default.

    \b
    Example:
      aiida-sqla profile create work --url postgresql+psycopg2://aiida:secret@db.example.org:5432/aiida
      aiida-sqla profile create local            # SQLite file in the user data directory
      aiida-sqla profile create hpc --engine postgresql --host db.example.org --user aiida \\
          --password-file ~/.aiida-db-password --database aiida --option sslmode=verify-full
    """
    state = get_state()
    pairs = [option.partition("=") for option in options]
    if any(not key or not sep for key, sep, _ in pairs):
        raise click.BadParameter("use KEY=VALUE, e.g. --option sslmode=require", param_hint="--option")
    profile = build_profile(name, url=url, engine=engine, host=host, port=port, user=user, password=password,
                            password_file=password_file, database=click.format_filename(database) if database else None,
                            options={key: value for key, _, value in pairs}, read_only=read_only,
                            storage_backend=storage_backend)
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
        "storage_config": masked_storage_config(profile),
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
