"""Run alembic commands against the current profile's database."""
from __future__ import annotations

import inspect
from typing import Any

from alembic import command

from .exceptions import ValidationError
from .manager import SqlaBackendManager
from .profile import ProfileLike

__all__ = ("alembic_command_names", "execute_alembic_command")


def alembic_command_names() -> list[str]:
    """Names of the functions of :mod:`alembic.command` that take a Config first."""
    names = []
    for name, function in inspect.getmembers(command, inspect.isfunction):
        parameters = list(inspect.signature(function).parameters)
        if function.__module__ == command.__name__ and not name.startswith("_") and parameters[:1] == ["config"]:
            names.append(name)
    return sorted(names)


def execute_alembic_command(command_name: str, profile: ProfileLike | None = None, **kwargs: Any) -> Any:
    """Run ``alembic.command.<command_name>(config, **kwargs)`` on the profile's (default: current) database.

    The command runs in one transaction that commits when it succeeds.
    """
    if command_name not in alembic_command_names():
        raise ValidationError(
            f"unknown alembic command {command_name!r}; choose one of {', '.join(alembic_command_names())}"
        )
    with SqlaBackendManager(profile).alembic_config() as config:
        return getattr(command, command_name)(config, **kwargs)
