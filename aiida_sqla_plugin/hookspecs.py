"""The hook contract between a host framework and storage backends.

A host creates ``pluggy.PluginManager(PROJECT_NAME)``, adds these specs, loads the backend named by a
profile's ``storage_backend`` from the entry-point group :data:`ENTRY_POINT_GROUP`, and registers
:func:`aiida_after_fork_in_child` once with ``os.register_at_fork(after_in_child=...)``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, scoped_session

    from .backend import SqlaBackend
    from .manager import SqlaBackendManager
    from .settings import SqlaSettingsManager
    from .profile import ProfileLike
    from .queries import SqlaQueryManager

PROJECT_NAME = "aiida"
ENTRY_POINT_GROUP = "aiida.backends"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(firstresult=True)
def aiida_get_backend(profile: ProfileLike) -> SqlaBackend | Any:
    """Return the backend object serving ``profile``."""


@hookspec(firstresult=True)
def aiida_get_session_factory(profile: ProfileLike) -> scoped_session[Session] | Any:
    """Return the ``scoped_session`` registry of ``profile``'s database."""


@hookspec(firstresult=True)
def aiida_get_backend_manager(profile: ProfileLike) -> SqlaBackendManager | Any:
    """Return the manager of ``profile``'s schema versions and migrations."""


@hookspec(firstresult=True)
def aiida_get_settings_manager(profile: ProfileLike) -> SqlaSettingsManager | Any:
    """Return the manager of ``profile``'s settings."""


@hookspec(firstresult=True)
def aiida_get_query_manager(backend: Any) -> SqlaQueryManager | Any:
    """Return the query manager for ``backend`` (creation statistics and similar reports)."""


@hookspec
def aiida_after_fork_in_child() -> None:
    """Make every engine and session of a freshly forked child process safe to use."""
