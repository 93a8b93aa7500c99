"""Load a profile's storage backend the way a host does: its entry point, a pluggy manager, then the hooks.

Only the entry point named by ``profile.storage_backend`` in the group :data:`hookspecs.ENTRY_POINT_GROUP` is
loaded; everything else goes through ``pm.hook``, so the command line uses the plugin exactly as a host would.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import pluggy
from importlib_metadata import entry_points

from . import hookspecs
from .exceptions import ConfigurationError
from .profile import ProfileLike

__all__ = ("LoadedBackend", "installed_backends", "load_backend", "plugin_manager", "require_installed")

_fork_hooks_registered: set[str] = set()
_fork_lock = threading.Lock()


def installed_backends() -> list[str]:
    """Names of the storage backends installed in the entry-point group."""
    return sorted({ep.name for ep in entry_points(group=hookspecs.ENTRY_POINT_GROUP)})


def require_installed(backend_name: str) -> Any:
    """The entry point of the storage backend ``backend_name``; :class:`ConfigurationError` listing the installed ones."""
    found = list(entry_points(group=hookspecs.ENTRY_POINT_GROUP, name=backend_name))
    if not found:
        raise ConfigurationError(
            f"no storage backend {backend_name!r} is installed (entry-point group {hookspecs.ENTRY_POINT_GROUP!r}); "
            f"installed: {', '.join(installed_backends()) or 'none'}; set the profile's storage_backend to one of them"
        )
    return found[0]


def plugin_manager(backend_name: str) -> pluggy.PluginManager:
    """A plugin manager holding the hook specs and the one backend ``backend_name``, checked.

    Raises :class:`ConfigurationError` listing the installed backends when there is no such entry point, or when
    it cannot be loaded.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    entry_point = require_installed(backend_name)
    try:
        plugin = entry_point.load()
    except Exception as error:  # noqa: BLE001 - any import failure of a third-party plugin
        raise ConfigurationError(
            f"cannot load the storage backend {backend_name!r} ({entry_point.value}): {error}"
        ) from error
    try:
        pm.register(plugin, name=backend_name)  # checks the signatures of the hooks the plugin implements
        pm.check_pending()  # and that it implements no hook the specs do not know
    except pluggy.PluginValidationError as error:
        raise ConfigurationError(f"the storage backend {backend_name!r} does not fit the hook specs: {error}") from error
    with _fork_lock:
        if backend_name not in _fork_hooks_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=pm.hook.aiida_after_fork_in_child)
            _fork_hooks_registered.add(backend_name)
    return pm


@dataclass
class LoadedBackend:
    """A profile with the plugin manager of its backend; each accessor is one hook call."""

    profile: ProfileLike
    pm: pluggy.PluginManager

    def _first(self, result: Any, hook: str) -> Any:
        if result is None:
            raise ConfigurationError(
                f"the storage backend {self.profile.storage_backend!r} does not answer {hook} for profile "
                f"{self.profile.name!r}"
            )
        return result

    @property
    def backend(self) -> Any:
        """``aiida_get_backend(profile)``: the backend object (it makes the profile current)."""
        return self._first(self.pm.hook.aiida_get_backend(profile=self.profile), "aiida_get_backend")

    @property
    def backend_manager(self) -> Any:
        """``aiida_get_backend_manager(profile)``: schema versions and migrations."""
        return self._first(self.pm.hook.aiida_get_backend_manager(profile=self.profile), "aiida_get_backend_manager")

    @property
    def settings_manager(self) -> Any:
        """``aiida_get_settings_manager(profile)``: key/value settings."""
        return self._first(self.pm.hook.aiida_get_settings_manager(profile=self.profile), "aiida_get_settings_manager")

    def query_manager(self, backend: Any) -> Any:
        """``aiida_get_query_manager(backend)``: aggregate reports."""
        return self._first(self.pm.hook.aiida_get_query_manager(backend=backend), "aiida_get_query_manager")


def load_backend(profile: ProfileLike) -> LoadedBackend:
    """Load the backend named by ``profile.storage_backend`` and bind it to the profile."""
    return LoadedBackend(profile, plugin_manager(profile.storage_backend))
