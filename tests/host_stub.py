"""A small host framework that loads storage backends the way a real one (AiiDA) does.

It knows nothing about aiida-sqla-plugin beyond the published contract in ``aiida_sqla_plugin.hookspecs``: it
reads profiles from a configuration (a dict or a JSON file), loads only the entry point named by a profile's
``storage_backend`` from the installed package metadata, registers it with a ``pluggy.PluginManager``, calls
``check_pending()``, and registers one fork callback per process with ``os.register_at_fork``.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from importlib_metadata import EntryPoint, entry_points

from aiida_sqla_plugin import hookspecs

__all__ = ("Host", "HostProfile", "UnknownBackendError", "ensure_fork_callback", "fork_hooks_suspended")


class UnknownBackendError(LookupError):
    """A profile names a storage backend that no installed package provides."""


@dataclass(frozen=True)
class HostProfile:
    """The host's own profile type: the backend only relies on these three attributes."""

    name: str
    storage_backend: str
    storage_config: Mapping[str, Any] = field(default_factory=dict)


_hosts: weakref.WeakSet[Host] = weakref.WeakSet()
_registration_lock = threading.Lock()
#: How many times this process called ``os.register_at_fork`` (must stay at most 1).
fork_callback_registrations = 0
#: Switched off by :func:`fork_hooks_suspended`, to simulate a fork that bypasses the hooks.
fork_hooks_enabled = True


def _after_fork_in_child() -> None:
    if fork_hooks_enabled:
        for host in list(_hosts):
            host.pm.hook.aiida_after_fork_in_child()


def ensure_fork_callback() -> None:
    """Register the process's fork callback, once per process whatever the number of hosts."""
    global fork_callback_registrations
    with _registration_lock:
        if fork_callback_registrations == 0:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            fork_callback_registrations += 1


@contextlib.contextmanager
def fork_hooks_suspended() -> Iterator[None]:
    """Forks inside the block run no backend hook in the child (as a fork from C code would)."""
    global fork_hooks_enabled
    fork_hooks_enabled = False
    try:
        yield
    finally:
        fork_hooks_enabled = True


def installed_backends() -> dict[str, EntryPoint]:
    """The storage backends the installed packages declare, by entry-point name."""
    return {entry_point.name: entry_point for entry_point in entry_points(group=hookspecs.ENTRY_POINT_GROUP)}


class Host:
    """Holds a configuration of profiles and the plugin manager of the backend in use.

    ``config`` is ``{"default_profile": name, "profiles": {name: {"storage_backend": ..., "storage_config": ...}}}``.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config: dict[str, Any] = json.loads(json.dumps(config))
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.backend_name: str | None = None
        self.plugin: ModuleType | None = None
        self.loaded_entry_points: list[str] = []
        _hosts.add(self)
        ensure_fork_callback()

    @classmethod
    def from_json(cls, path: Path) -> Host:
        """A host configured by a JSON file."""
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def profile(self, name: str | None = None) -> HostProfile:
        """The profile ``name`` (default: the default profile) as configured."""
        name = name or self.config["default_profile"]
        try:
            entry = self.config["profiles"][name]
        except KeyError:
            raise LookupError(f"no profile {name!r}; configured: {', '.join(self.config['profiles'])}") from None
        return HostProfile(name, entry["storage_backend"], entry.get("storage_config", {}))

    def load_profile(self, name: str | None = None) -> HostProfile:
        """Load the profile's backend (swapping out another one) and return the profile."""
        profile = self.profile(name)
        self.use_backend(profile.storage_backend)
        return profile

    def use_backend(self, backend_name: str) -> None:
        """Make the entry point ``backend_name`` the one registered plugin."""
        if backend_name == self.backend_name:
            return
        available = installed_backends()
        if backend_name not in available:
            raise UnknownBackendError(
                f"no storage backend {backend_name!r} is installed; installed backends: "
                f"{', '.join(sorted(available)) or 'none'}"
            )
        plugin = available[backend_name].load()
        self.loaded_entry_points.append(backend_name)
        if self.plugin is not None:
            self.pm.unregister(self.plugin)
        self.pm.register(plugin, name=backend_name)
        self.pm.check_pending()
        self.plugin, self.backend_name = plugin, backend_name

    def get_backend(self, name: str | None = None) -> Any:
        """The backend object of profile ``name``, through the ``aiida_get_backend`` hook."""
        return self.pm.hook.aiida_get_backend(profile=self.load_profile(name))
