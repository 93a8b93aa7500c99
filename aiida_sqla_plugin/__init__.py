"""aiida-sqla-plugin: a SQLAlchemy storage backend for provenance graphs, loaded through pluggy hooks."""
from __future__ import annotations

from .profile import Profile
from .session import (
    dispose_engines,
    get_current_profile,
    get_engine,
    get_scoped_session,
    get_session_factory,
    recreate_after_fork,
    reset_session,
    set_current_profile,
)

__version__ = "0.1.0"

__all__ = (
    "Profile",
    "__version__",
    "dispose_engines",
    "get_current_profile",
    "get_engine",
    "get_scoped_session",
    "get_session_factory",
    "recreate_after_fork",
    "reset_session",
    "set_current_profile",
)
