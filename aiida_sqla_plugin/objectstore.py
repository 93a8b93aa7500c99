"""A content-addressed object store: the file contents of nodes (an archive's ``repo/`` objects), by sha256.

An object lives at ``<root>/<first two hex digits>/<remaining 62 hex digits>``. :meth:`ObjectStore.put` writes it
to a temporary file in the store, hashes what it writes, fsyncs and renames it into place only when the hash is
right, so a reader never sees half an object and a wrong one is never stored. Where the store is: the profile's
``storage_config["repository"]`` when set; otherwise beside a SQLite database file (``<file>.objects/``), or for
PostgreSQL under this package's data directory (:func:`config.data_dir`: ``$AIIDA_SQLA_DATA_DIR`` or the user
data directory), ``<data dir>/objects/<profile name>``.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .config import data_dir
from .exceptions import AiidaSqlaError, ConfigurationError, NotExistent, ValidationError
from .profile import ProfileLike, database_url, sqlite_path

if TYPE_CHECKING:
    from .backend import SqlaBackend

__all__ = ("REPOSITORY_KEY", "ObjectHashMismatch", "ObjectStore", "default_root", "object_store_for")

#: The storage config key naming the object store's folder.
REPOSITORY_KEY = "repository"
_KEY = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class ObjectHashMismatch(AiidaSqlaError):
    """The bytes given for an object do not hash to the key they were announced with; nothing was stored."""


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValidationError(f"{key!r} is not an object key; keys are 64 lowercase hex digits (a sha256)")
    return key


class ObjectStore:
    """Objects by sha256 hex key under :attr:`root` (created on the first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"<ObjectStore {self.root}>"

    def path(self, key: str) -> Path:
        """Where the object ``key`` is (or would be) stored."""
        _check_key(key)
        return self.root / key[:2] / key[2:]

    def has(self, key: str) -> bool:
        """Whether the object ``key`` is stored."""
        return self.path(key).is_file()

    def open(self, key: str) -> IO[bytes]:
        """The object ``key`` opened for binary reading; :class:`NotExistent` when it is not stored."""
        try:
            return self.path(key).open("rb")
        except FileNotFoundError:
            raise NotExistent(f"object {key} is not in the object store {self.root}") from None

    def put(self, stream: IO[bytes], expected_key: str | None = None) -> str:
        """Store the bytes of ``stream`` and return their key.

        With ``expected_key``, bytes hashing to anything else raise :class:`ObjectHashMismatch` and leave nothing.
        An object already stored is left as it is (same key, same bytes).
        """
        if expected_key is not None:
            _check_key(expected_key)
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        handle, temporary = tempfile.mkstemp(prefix=".put-", dir=self.root)
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            key = digest.hexdigest()
            if expected_key is not None and key != expected_key:
                raise ObjectHashMismatch(
                    f"object announced as {expected_key} has sha256 {key}: its content is corrupt; "
                    "get an intact copy of the archive or file"
                )
            target = self.path(key)
            if target.is_file():
                return key
            target.parent.mkdir(exist_ok=True)
            os.replace(temporary, target)
            _fsync_directory(target.parent)
            return key
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

    def keys(self) -> Iterator[str]:
        """The keys of every stored object (in no particular order)."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if len(folder.name) != 2 or not folder.is_dir():
                continue
            for entry in folder.iterdir():
                key = folder.name + entry.name
                if _KEY.fullmatch(key) and entry.is_file():
                    yield key

    def remove(self, key: str) -> None:
        """Delete the object ``key``; :class:`NotExistent` when it is not stored."""
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            raise NotExistent(f"object {key} is not in the object store {self.root}") from None


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not possible, and not needed, on Windows)."""
    if os.name != "posix":  # pragma: no cover
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def default_root(profile: ProfileLike) -> Path:
    """The object store folder of ``profile``: its ``repository`` setting, or the default of its dialect."""
    configured = (profile.storage_config or {}).get(REPOSITORY_KEY)
    if configured:
        return Path(str(configured)).expanduser()
    url = database_url(profile)
    database = sqlite_path(url)
    if database is not None:
        return database.with_name(database.name + ".objects")
    if url.get_backend_name() == "sqlite":
        raise ConfigurationError(
            f"Profile {profile.name!r}: an in-memory SQLite database has no place for files; set "
            f"storage_config[{REPOSITORY_KEY!r}] to a folder"
        )
    return data_dir() / "objects" / profile.name


def object_store_for(backend: SqlaBackend | ProfileLike) -> ObjectStore:
    """The object store of a backend (or of a profile)."""
    from .backend import SqlaBackend  # noqa: PLC0415 - the backend module does not need the store at import

    profile = backend.profile if isinstance(backend, SqlaBackend) else backend
    return ObjectStore(default_root(profile))
