"""``aiida-sqla setting ...``: read and write the storage's key/value settings."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import click

from ..exceptions import NotExistent, ValidationError
from ..settings import list_settings
from ._root import common_options, emit_json, get_state, json_option

__all__ = ("setting_group",)


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


@click.group("setting")
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
