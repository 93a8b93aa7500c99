"""Delete a profile's whole database: the SQLite file or the PostgreSQL database."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from .. import session as session_module
from ..exceptions import ConfigurationError, ReadOnlyStorage, UnreachableStorage, error_line
from ..profile import ProfileLike, database_url, describe_url, sqlite_file

__all__ = ("drop_database",)


def drop_database(profile: ProfileLike) -> str:
    """Delete the profile's database (SQLite: the file and its WAL; PostgreSQL: ``DROP DATABASE``); returns what went.

    The profile's engines in this process are disposed first. :class:`ConfigurationError` for in-memory SQLite, a
    URL without database or a PostgreSQL user who may not drop it; :class:`UnreachableStorage` when the server does
    not answer; :class:`ReadOnlyStorage` when a SQLite file cannot be deleted.
    """
    url = database_url(profile)
    location = describe_url(url)
    session_module.dispose_engines()
    if url.get_backend_name() == "sqlite":
        path = sqlite_file(profile)
        if path is None:
            raise ConfigurationError(f"Profile {profile.name!r}: an in-memory database cannot be dropped")
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
            try:
                candidate.unlink(missing_ok=True)
            except OSError as error:
                raise ReadOnlyStorage(
                    f"Profile {profile.name!r}: cannot delete {candidate} ({error.strerror}); make its folder "
                    "writable, or delete the file by hand"
                ) from error
        return location
    name = url.database
    if not name:
        raise ConfigurationError(f"Profile {profile.name!r}: the URL names no database to drop")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10})
    quoted = admin.dialect.identifier_preparer.quote(name)
    try:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    except sa_exc.OperationalError as error:
        reason = error_line(error)
        raise UnreachableStorage(f"cannot drop the {location} ({reason}); drop it by hand with dropdb") from error
    except sa_exc.ProgrammingError as error:
        reason = error_line(error)
        raise ConfigurationError(f"cannot drop the {location} ({reason}); drop it by hand with dropdb") from error
    finally:
        admin.dispose()
    return location
