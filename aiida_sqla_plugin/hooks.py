"""Hook implementations of the ``sqlalchemy`` backend (entry point ``aiida.backends: sqlalchemy``).

Each hook answers only for profiles whose ``storage_backend`` names this backend, so several backends can be
registered with one host at a time.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, scoped_session

from . import session as session_module
from .backend import SqlaBackend
from .hookspecs import hookimpl
from .manager import SqlaBackendManager
from .profile import BACKEND_NAME, ProfileLike
from .queries import SqlaQueryManager
from .settings import SqlaSettingsManager

#: The entry-point name under which this backend is registered.


def _serves(profile: ProfileLike) -> bool:
    return getattr(profile, "storage_backend", None) == BACKEND_NAME


@hookimpl
def aiida_get_backend(profile: ProfileLike) -> SqlaBackend | None:
    """The backend object for ``profile``; it becomes the current profile."""
    if not _serves(profile):
        return None
    session_module.set_current_profile(profile)
    return SqlaBackend(profile)


@hookimpl
def aiida_get_session_factory(profile: ProfileLike) -> scoped_session[Session] | None:
    """The profile's scoped session registry."""
    return session_module.get_session_factory(profile) if _serves(profile) else None


@hookimpl
def aiida_get_backend_manager(profile: ProfileLike) -> SqlaBackendManager | None:
    """The profile's schema manager."""
    return SqlaBackendManager(profile) if _serves(profile) else None


@hookimpl
def aiida_get_settings_manager(profile: ProfileLike) -> SqlaSettingsManager | None:
    """The profile's settings manager."""
    return SqlaSettingsManager(profile) if _serves(profile) else None


@hookimpl
def aiida_get_query_manager(backend: Any) -> SqlaQueryManager | None:
    """The query manager of a backend built by this plugin."""
    return SqlaQueryManager(backend) if isinstance(backend, SqlaBackend) else None


@hookimpl
def aiida_after_fork_in_child() -> None:
    """Swap every inherited engine pool and session registry for new ones."""
    session_module.after_fork_in_child()
