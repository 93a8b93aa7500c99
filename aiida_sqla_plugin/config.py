"""The profile configuration file of the command line: one JSON file in the user config directory.

The file holds every profile and the name of the default one::

    {"version": 1, "default_profile": "work",
     "profiles": {"work": {"storage_backend": "sqlalchemy", "storage_config": {"url": "..."}}}}

``AIIDA_SQLA_CONFIG_DIR`` overrides the directory (platformdirs' user config directory otherwise) and
``AIIDA_SQLA_DATA_DIR`` the directory of new SQLite files (platformdirs' user data directory otherwise).
Every change is a read-modify-write under an exclusive lock file, and the new content replaces the old one
atomically (temporary file, ``fsync``, ``os.replace``), so two processes writing at once both keep their change
and a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

from .exceptions import ConfigurationError, NotExistent, OptionConflict, ValidationError
from .plugins import require_installed
from .profile import BACKEND_NAME, Profile, database_url, sqlite_path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: atomic replace still holds, concurrent updates are not merged
    fcntl = None  # type: ignore[assignment]

__all__ = (
    "build_profile",
    "CONFIG_DIR_ENV",
    "CONFIG_FILENAME",
    "DATA_DIR_ENV",
    "ConfigFile",
    "ProfileConfig",
    "config_dir",
    "data_dir",
    "default_sqlite_path",
    "prepare_sqlite_storage",
    "validate_profile_name",
)

APP_NAME = "aiida-sqla"
CONFIG_DIR_ENV = "AIIDA_SQLA_CONFIG_DIR"
DATA_DIR_ENV = "AIIDA_SQLA_DATA_DIR"
CONFIG_FILENAME = "config.json"
CONFIG_VERSION = 1
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

T = TypeVar("T")


def config_dir() -> Path:
    """The directory of the config file: ``$AIIDA_SQLA_CONFIG_DIR`` or the user config directory."""
    override = os.environ.get(CONFIG_DIR_ENV)
    return Path(override).expanduser() if override else Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    """The directory of new SQLite databases: ``$AIIDA_SQLA_DATA_DIR`` or the user data directory."""
    override = os.environ.get(DATA_DIR_ENV)
    return Path(override).expanduser() if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_sqlite_path(profile_name: str) -> Path:
    """Where a profile created without a URL keeps its SQLite database (the directory is not created)."""
    return data_dir() / f"{validate_profile_name(profile_name)}.sqlite"


def prepare_sqlite_storage(profile: Profile) -> Profile:
    """For a SQLite profile: make its file path absolute and create the file's directory; others are returned as is.

    A relative path would otherwise name a different file from every working directory.
    """
    url = database_url(profile)
    database = sqlite_path(url)
    if database is None:
        return profile
    path = database.expanduser().absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            f"Profile {profile.name!r}: cannot create the directory {path.parent} ({error.strerror}); choose another path"
        ) from error
    config = dict(profile.storage_config)
    if config.get("url"):
        config["url"] = url.set(database=str(path)).render_as_string(hide_password=False)
    else:
        config["database_name"] = str(path)
    return Profile(profile.name, profile.storage_backend, config)


def build_profile(
    name: str,
    *,
    url: str | None = None,
    engine: str | None = None,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    password_file: str | None = None,
    database: str | None = None,
    options: Mapping[str, str] | None = None,
    read_only: bool = False,
    storage_backend: str = BACKEND_NAME,
) -> Profile:
    """A new profile from a URL, or from an engine (``postgresql``/``sqlite``) and its parts; not yet saved.

    Without ``url`` and ``engine`` it gets a SQLite file in the user data directory. ``password_file`` names a file
    holding the password (read at each connection, never copied into the config); ``options`` are libpq keywords
    (``sslmode``, ``sslrootcert``, ``passfile``, ...); without a password libpq also reads ``PGPASSFILE``.
    ``read_only`` makes every transaction read-only. :class:`OptionConflict` when the parts contradict each other,
    :class:`ConfigurationError` when ``storage_backend`` is not installed. A SQLite file path is made absolute and
    its directory created.
    """
    validate_profile_name(name)
    if password is not None and password_file is not None:
        raise OptionConflict("give either --password or --password-file, not both")
    parts = {
        "--host": host, "--port": port, "--user": user, "--password": password, "--password-file": password_file,
        "--database": database, "--option": dict(options) if options else None,
    }
    if url and (engine or any(value is not None for value in parts.values())):
        raise OptionConflict(
            "give either --url or --engine with --host/--port/--user/--password[-file]/--database/--option, not both"
        )
    if url:
        storage_config: dict[str, Any] = {"url": url}
    elif engine == "postgresql":
        if not database:
            raise OptionConflict("--engine postgresql needs --database NAME")
        storage_config = {
            "database_engine": "postgresql_psycopg2", "database_hostname": host, "database_port": port,
            "database_username": user, "database_password": password, "database_name": database,
        }
        if password_file is not None:
            storage_config["database_password_file"] = str(Path(password_file).expanduser().absolute())
        if options:
            storage_config["database_options"] = dict(options)
    elif engine in (None, "sqlite"):
        if engine is None and any(value is not None for value in parts.values()):
            raise OptionConflict("--host/--port/--user/--password[-file]/--database/--option need --engine (or use --url)")
        storage_config = {"url": f"sqlite:///{database or default_sqlite_path(name)}"}
    else:
        raise OptionConflict(f"unknown engine {engine!r}; choose postgresql or sqlite")
    if read_only:
        storage_config["read_only"] = True
    require_installed(storage_backend)
    return prepare_sqlite_storage(Profile(name, storage_backend, storage_config))


def validate_profile_name(name: str) -> str:
    """Return ``name`` if it can name a profile (letters, digits, ``_.-``), else raise :class:`ValidationError`."""
    if not isinstance(name, str) or not _PROFILE_NAME.match(name):
        raise ValidationError(
            f"invalid profile name {name!r}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )
    return name


@dataclass
class ProfileConfig:
    """The content of the config file."""

    default_profile: str | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path) -> ProfileConfig:
        """Parse the file's JSON content; :class:`ConfigurationError` names the file when it is malformed."""
        if not isinstance(data, Mapping) or not isinstance(data.get("profiles", {}), Mapping):
            raise ConfigurationError(f"the config file {path} is malformed (no 'profiles' mapping); fix or remove it")
        version = data.get("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigurationError(
                f"the config file {path} has version {version!r}, this code reads version {CONFIG_VERSION}; "
                "use the aiida-sqla-plugin release that wrote it"
            )
        profiles: dict[str, Profile] = {}
        for name, entry in data.get("profiles", {}).items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("storage_config", {}), Mapping):
                raise ConfigurationError(f"the config file {path} has a malformed entry for profile {name!r}")
            profiles[name] = Profile(
                name=name,
                storage_backend=str(entry.get("storage_backend", BACKEND_NAME)),
                storage_config=dict(entry.get("storage_config", {})),
            )
        default = data.get("default_profile")
        return cls(default_profile=default if default in profiles else None, profiles=profiles)

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of the file."""
        return {
            "version": CONFIG_VERSION,
            "default_profile": self.default_profile,
            "profiles": {
                name: {"storage_backend": profile.storage_backend, "storage_config": dict(profile.storage_config)}
                for name, profile in sorted(self.profiles.items())
            },
        }

    def get(self, name: str | None = None) -> Profile:
        """The profile ``name`` (default: the default profile), or :class:`NotExistent` listing the known ones."""
        if name is None:
            if self.default_profile is None:
                if not self.profiles:
                    raise NotExistent(
                        "no profile is configured; create one with 'aiida-sqla profile create NAME' "
                        "(or run 'aiida-sqla demo')"
                    )
                raise NotExistent(
                    f"no default profile is set; pass -p NAME (known profiles: {', '.join(sorted(self.profiles))}) "
                    "or run 'aiida-sqla profile set-default NAME'"
                )
            name = self.default_profile
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise NotExistent(
                f"unknown profile {name!r} (known profiles: {known}); create it with 'aiida-sqla profile create {name}'"
            ) from None


class ConfigFile:
    """Reads and updates the profile config file at ``path`` (default: ``config_dir() / config.json``)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else config_dir() / CONFIG_FILENAME

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def read(self) -> ProfileConfig:
        """The current content; an absent file is an empty configuration."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ProfileConfig()
        except OSError as error:
            raise ConfigurationError(f"cannot read the config file {self.path} ({error.strerror})") from error
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigurationError(
                f"the config file {self.path} is not valid JSON ({error}); fix or remove it"
            ) from error
        return ProfileConfig.from_dict(data, self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+b")  # noqa: SIM115 - closed below
        except OSError as error:
            raise ConfigurationError(
                f"cannot write the config directory {self.path.parent} ({error.strerror}); "
                f"set {CONFIG_DIR_ENV} to a writable directory"
            ) from error
        with handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _write(self, config: ProfileConfig) -> None:
        """Replace the file atomically with ``config`` (owner-only permissions: it may hold passwords)."""
        text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
        descriptor, temporary = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def update(self, change: Callable[[ProfileConfig], T]) -> T:
        """Apply ``change`` to the current content under the lock and write the result; returns its result.

        If ``change`` raises, the file is left as it was.
        """
        with self._locked():
            config = self.read()
            result = change(config)
            self._write(config)
            return result

    # -- profile operations ------------------------------------------------------------------------------

    def get_profile(self, name: str | None = None) -> Profile:
        """The profile ``name`` (default: the default profile)."""
        return self.read().get(name)

    def add_profile(self, profile: Profile, make_default: bool = False) -> Profile:
        """Store a new profile; the first profile, or one added with ``make_default``, becomes the default."""
        validate_profile_name(profile.name)

        def change(config: ProfileConfig) -> Profile:
            if profile.name in config.profiles:
                raise ValidationError(
                    f"profile {profile.name!r} already exists; choose another name or delete it first "
                    f"('aiida-sqla profile delete {profile.name}')"
                )
            config.profiles[profile.name] = profile
            if make_default or config.default_profile is None:
                config.default_profile = profile.name
            return profile

        return self.update(change)

    def set_default(self, name: str) -> None:
        """Make ``name`` the default profile."""

        def change(config: ProfileConfig) -> None:
            config.get(name)
            config.default_profile = name

        self.update(change)

    def remove_profile(self, name: str) -> Profile:
        """Remove the profile ``name`` and return it; if it was the default, no profile is the default."""

        def change(config: ProfileConfig) -> Profile:
            profile = config.get(name)
            del config.profiles[name]
            if config.default_profile == name:
                config.default_profile = None
            return profile

        return self.update(change)
