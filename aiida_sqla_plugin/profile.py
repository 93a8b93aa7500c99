"""Profiles: which storage backend to load and how to reach its database."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .exceptions import ConfigurationError, UnsupportedEngine

__all__ = (
    "BACKEND_NAME",
    "Profile",
    "ProfileLike",
    "database_url",
    "describe_url",
    "engine_kwargs",
    "is_read_only",
    "masked_storage_config",
    "sqlite_file",
    "sqlite_path",
)

#: The ``storage_backend`` name of this plugin's profiles (its entry point name).
BACKEND_NAME = "sqlalchemy"

#: AiiDA's ``database_engine`` values mapped to SQLAlchemy driver names.
ENGINE_DRIVERS: dict[str, str] = {
    "postgresql_psycopg2": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "postgresql+psycopg2": "postgresql+psycopg2",
    "sqlite": "sqlite",
}
SUPPORTED_DIALECTS = ("sqlite", "postgresql")


class ProfileLike(Protocol):
    """What the backend needs of a host's profile object (read-only attributes suffice)."""

    @property
    def name(self) -> str: ...

    @property
    def storage_backend(self) -> str: ...

    @property
    def storage_config(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Profile:
    """A minimal profile: a name, the entry point of its backend and the storage configuration.

    ``storage_config`` holds either ``url`` (any SQLAlchemy URL; libpq options such as ``sslmode`` go in its
    query) or AiiDA-style keys (``database_engine``, ``database_hostname``, ``database_port``,
    ``database_username``, ``database_password`` or ``database_password_file``, ``database_name``, and
    ``database_options``: libpq keywords such as ``sslmode``, ``sslrootcert``, ``passfile``,
    ``target_session_attrs``), plus optional ``engine_kwargs`` (pool settings) and ``read_only``. Without a
    password libpq reads ``PGPASSFILE`` (default ``~/.pgpass``).
    """

    name: str
    storage_backend: str = BACKEND_NAME
    storage_config: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        """The password of the storage URL or ``database_password`` is shown as ``***``."""
        return (
            f"Profile(name={self.name!r}, storage_backend={self.storage_backend!r}, "
            f"storage_config={masked_storage_config(self)!r})"
        )


def database_url(profile: ProfileLike) -> URL:
    """Return the SQLAlchemy URL of the profile's database, or raise :class:`ConfigurationError`."""
    config = profile.storage_config or {}
    if not isinstance(config, Mapping):
        raise ConfigurationError(f"Profile {profile.name!r}: storage_config must be a mapping, got {type(config).__name__}.")
    if config.get("url"):
        try:
            url = make_url(str(config["url"]))
        except ArgumentError as exc:
            raise ConfigurationError(
                f"Profile {profile.name!r}: cannot parse the storage URL ({exc}); use e.g. "
                "'sqlite:////path/to/file.sqlite' or 'postgresql+psycopg2://user:password@host:5432/dbname'."
            ) from exc
        if url.get_backend_name() not in SUPPORTED_DIALECTS:
            raise UnsupportedEngine(
                f"Profile {profile.name!r}: the database engine {url.get_backend_name()!r} is not supported; "
                f"use one of {', '.join(SUPPORTED_DIALECTS)}."
            )
        if url.get_backend_name() == "postgresql" and url.get_driver_name() not in ("psycopg2",):
            url = url.set(drivername="postgresql+psycopg2")
        return url
    return _url_from_aiida_keys(profile.name, config)


def _url_from_aiida_keys(name: str, config: Mapping[str, Any]) -> URL:
    engine = config.get("database_engine")
    if engine is None:
        raise ConfigurationError(
            f"Profile {name!r}: storage_config needs either 'url' or 'database_engine' "
            f"(one of {', '.join(sorted(ENGINE_DRIVERS))}) with the other database_* keys."
        )
    driver = ENGINE_DRIVERS.get(str(engine))
    if driver is None:
        raise UnsupportedEngine(
            f"Profile {name!r}: unknown database_engine {engine!r}; use one of {', '.join(sorted(ENGINE_DRIVERS))}."
        )
    database = config.get("database_name")
    if not database:
        raise ConfigurationError(f"Profile {name!r}: storage_config is missing 'database_name'.")
    if driver == "sqlite":
        return URL.create("sqlite", database=str(database))
    port = config.get("database_port")
    try:
        port = int(port) if port not in (None, "") else None
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"Profile {name!r}: database_port must be an integer, got {port!r}.") from exc
    options = config.get("database_options") or {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"Profile {name!r}: database_options must be a mapping of libpq keywords, e.g. {{\"sslmode\": \"require\"}}."
        )
    # URL.create quotes the password and user name itself; a None host means the local socket.
    return URL.create(
        driver,
        username=config.get("database_username") or None,
        password=config.get("database_password") or _password_from_file(name, config.get("database_password_file")),
        host=config.get("database_hostname") or None,
        port=port,
        database=str(database),
        query={str(key): str(value) for key, value in options.items()},
    )


def _password_from_file(name: str, path: Any) -> str | None:
    """The password stored alone in ``path`` (its first line), or None without a path."""
    if not path:
        return None
    try:
        lines = Path(str(path)).expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigurationError(
            f"Profile {name!r}: cannot read database_password_file {str(path)!r} ({error.strerror}); "
            "create it (owner-readable only) with the password on its first line."
        ) from error
    return lines[0] if lines else None


def is_read_only(profile: ProfileLike) -> bool:
    """Whether the profile's storage config says ``"read_only": true`` (every transaction is then read-only)."""
    flag = (profile.storage_config or {}).get("read_only", False)
    if not isinstance(flag, bool):
        raise ConfigurationError(f"Profile {profile.name!r}: read_only must be true or false, got {flag!r}.")
    return flag


def engine_kwargs(profile: ProfileLike) -> dict[str, Any]:
    """Extra keyword arguments for :func:`sqlalchemy.create_engine` from ``storage_config['engine_kwargs']``."""
    extra = (profile.storage_config or {}).get("engine_kwargs") or {}
    if not isinstance(extra, Mapping):
        raise ConfigurationError(f"Profile {profile.name!r}: engine_kwargs must be a mapping, got {type(extra).__name__}.")
    return dict(extra)


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL, or None for PostgreSQL and in-memory SQLite."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def sqlite_file(profile: ProfileLike) -> Path | None:
    """The SQLite file of a profile, or None for PostgreSQL and in-memory SQLite."""
    return sqlite_path(database_url(profile))


def describe_url(url: URL) -> str:
    """The URL for messages: password hidden, host and port spelled out."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database or ':memory:'}"
    host = url.host or "the local socket"
    port = f":{url.port}" if url.port else (":5432" if url.host else "")
    return f"PostgreSQL database {url.database!r} on {host}{port} as {url.username or 'the current user'}"


def masked_storage_config(profile: ProfileLike) -> dict[str, Any]:
    """The profile's storage config for display: the URL's password and ``database_password`` hidden."""
    config = dict(profile.storage_config)
    if config.get("url"):
        try:
            config["url"] = make_url(str(config["url"])).render_as_string(hide_password=True)
        except ArgumentError:
            pass  # not a URL: shown as stored, it holds no recognisable password
    if config.get("database_password"):
        config["database_password"] = "***"
    options = config.get("database_options")
    if isinstance(options, Mapping) and "password" in options:
        config["database_options"] = {**options, "password": "***"}
    return config
