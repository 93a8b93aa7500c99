"""The backend object a host gets for a profile: sessions, managers and transactions in one place."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session

from . import session as session_module
from .manager import SqlaBackendManager
from .models import Base
from .progress import ProgressCallback
from .profile import ProfileLike
from .queries import SqlaQueryManager
from .settings import SqlaSettingsManager

__all__ = ("SqlaBackend", "get_backend")

#: Key in ``Session.info`` counting the :meth:`SqlaBackend.transaction` blocks open on that session.
_TRANSACTION_DEPTH = "aiida_sqla_transaction_depth"


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

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit the block's work on success, roll it back on error; nested blocks make savepoints.

        The outermost block commits, also when the session had already begun a transaction on its own (by
        loading an object); an error then rolls back only the block's work, in a savepoint.
        """
        session = self.get_session()
        depth = session.info.get(_TRANSACTION_DEPTH, 0)
        session.info[_TRANSACTION_DEPTH] = depth + 1
        try:
            if depth == 0 and not session.in_transaction():
                with session.begin():
                    yield session
            else:
                with session.begin_nested():
                    yield session
                if depth == 0:
                    session.commit()
        finally:
            session.info[_TRANSACTION_DEPTH] = depth

    def bulk_insert(
        self, entity: type[Base] | str, rows: Iterable[Mapping[str, Any]], progress: ProgressCallback | None = None
    ) -> list[int]:
        """Store plain-dict ``rows`` of ``entity`` (a model class or table name) in one transaction.

        Defaults are filled and required fields checked; returns the new primary keys in input order. Any invalid
        row raises an error and nothing of the call is stored.
        """
        from .bulk import bulk_insert  # noqa: PLC0415 - bulk imports this module

        return bulk_insert(self, entity, rows, progress=progress)

    def close(self) -> None:
        """Close this thread's session (the engine stays, for other threads)."""
        self.session_factory.remove()


def get_backend(backend: SqlaBackend | None = None) -> SqlaBackend:
    """``backend``, or the backend of the current profile."""
    return backend if backend is not None else SqlaBackend(session_module.get_current_profile())
