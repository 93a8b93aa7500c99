"""The backend object a host gets for a profile: sessions, managers and transactions in one place."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session

from . import session as session_module
from .bulk import bulk_insert
from .manager import SqlaBackendManager
from .models import Base
from .progress import ProgressCallback
from .profile import ProfileLike
from .queries import SqlaQueryManager
from .settings import SqlaSettingsManager

__all__ = ("SqlaBackend", "get_backend")


class SqlaBackend:
    """Storage backend of one profile."""

    def __init__(self, profile: ProfileLike) -> None:
        self.profile = profile

    def __repr__(self) -> str:
        return f"<SqlaBackend profile={self.profile.name!r}>"

    @property
    def engine(self) -> Engine:
        """The profile's engine."""
        return session_module.get_engine(self.profile)

    @property
    def session_factory(self) -> scoped_session[Session]:
        """The profile's scoped session registry (looked up anew, so it follows :func:`reset_session`)."""
        return session_module.get_session_factory(self.profile)

    def get_session(self) -> Session:
        """The current thread's session."""
        return self.session_factory()

    @property
    def backend_manager(self) -> SqlaBackendManager:
        return SqlaBackendManager(self.profile)

    @property
    def settings(self) -> SqlaSettingsManager:
        return SqlaSettingsManager(self.profile)

    @property
    def query_manager(self) -> SqlaQueryManager:
        return SqlaQueryManager(self)

    def transaction(self, write: bool = False) -> contextlib.AbstractContextManager[Session]:
        """A block in the caller's transaction if there is one (then a savepoint), else one that commits.

        The outermost block commits, also when the session had already begun a transaction on its own (by
        loading an object); an error then rolls back only the block's work. ``write=True`` begins a new SQLite
        transaction ``IMMEDIATE``, so that it cannot meet another process's commit between its reads and its
        writes. See :func:`aiida_sqla_plugin.session.transaction`.
        """
        return session_module.transaction(self.get_session(), write=write)

    def bulk_insert(
        self,
        entity: type[Base] | str,
        rows: Iterable[Mapping[str, Any]],
        progress: ProgressCallback | None = None,
        *,
        ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Store plain-dict ``rows`` of ``entity`` (a model class or table name) in the session's transaction.

        Defaults are filled and required fields checked; returns the new primary keys in input order. Any invalid
        row raises an error and nothing of the call is stored. ``ids`` stores the rows under these primary keys.
        See :func:`aiida_sqla_plugin.bulk.bulk_insert`.
        """
        return bulk_insert(self, entity, rows, progress=progress, ids=ids)

    def close(self) -> None:
        """Close this thread's session (the engine stays, for other threads)."""
        self.session_factory.remove()


def get_backend(backend: SqlaBackend | None = None) -> SqlaBackend:
    """``backend``, or the backend of the current profile."""
    return backend if backend is not None else SqlaBackend(session_module.get_current_profile())
