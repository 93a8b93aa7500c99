"""Online backups of a profile's database, their verification, and restoring them into an empty profile.

SQLite is copied with the online backup API (one read transaction, so writers may go on in WAL mode and the copy
is one committed state); PostgreSQL with ``pg_dump -Fc`` from a snapshot exported by a REPEATABLE READ
transaction, in which the manifest's counts are taken too. A backup is written into a hidden temporary folder
and renamed when complete, so a folder with a ``backup.json`` is always a finished backup. After the database,
the objects its nodes reference (read from the copied state) are copied from the profile's object store into
the backup's ``objects/`` folder (the same content-addressed layout); the manifest records their count and a
sha256 over their sorted keys, and verification re-hashes every object against its key.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, Connection

from .. import __version__
from .. import session as session_module
from ..archive._export import referenced_object_keys
from ..exceptions import BackupError, ConfigurationError, NotExistent, UnreachableStorage
from ..manager import SqlaBackendManager
from ..objectstore import ObjectStore, object_store_for
from ..profile import ProfileLike, database_url, sqlite_file
from ..progress import ProgressCallback, report
from ..reports import count_entities, entity_counts

__all__ = ("MANIFEST_NAME", "LAST_BACKUP_LINK", "backup", "list_backups", "restore", "verify_backup")

MANIFEST_NAME = "backup.json"
LAST_BACKUP_LINK = "last-backup"
SQLITE_FILE = "database.sqlite"
PG_DUMP_FILE = "database.dump"
#: The backup's copy of the object store (the referenced objects only).
OBJECTS_FOLDER = "objects"
#: Name of a finished backup folder: UTC time to the microsecond.
_NAME_FORMAT = "%Y%m%dT%H%M%S%fZ"
_NAME = re.compile(r"\d{8}T\d{12}Z\Z")
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------- PostgreSQL


def _pg_environment(url: URL) -> dict[str, str]:
    """Environment for the PostgreSQL client tools: connection in ``PG*`` variables, never on the command line."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    values = {"PGHOST": url.host, "PGPORT": url.port, "PGUSER": url.username, "PGPASSWORD": url.password,
              "PGDATABASE": url.database}
    env.update({key: str(value) for key, value in values.items() if value is not None})
    return env


def _client_major(tool: str) -> tuple[int, str]:
    """Major version and version text of a PostgreSQL client tool; :class:`BackupError` naming the package if absent."""
    path = shutil.which(tool)
    if path is None:
        raise BackupError(f"{tool} is not installed; install the Debian package postgresql-client-NN of the server's major version")
    output = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    match = re.search(r"\(PostgreSQL\)\s*(\d+)", output) or re.search(r"(\d+)", output)
    if match is None:
        raise BackupError(f"cannot read the version of {path} ({output!r}); install postgresql-client-NN of the server's version")
    return int(match.group(1)), output


def _check_client(tool: str, server_major: int) -> str:
    major, version = _client_major(tool)
    if major < server_major:
        raise BackupError(
            f"{tool} is version {major}, older than the server ({server_major}); install the Debian package "
            f"postgresql-client-{server_major} and put its {tool} first on PATH"
        )
    return version


def _server_major(connection: Connection) -> int:
    return int(connection.exec_driver_sql("SHOW server_version_num").scalar_one()) // 10000


def _run_tool(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise BackupError(f"{what} failed ({message})")


def _backup_postgres(url: URL, folder: Path) -> tuple[dict[str, int], str | None, set[str], dict[str, str]]:
    """Dump the database from one exported snapshot; returns that snapshot's counts, revision and object keys, and tool versions."""
    engine = create_engine(url, isolation_level="REPEATABLE READ", connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            pg_dump = _check_client("pg_dump", _server_major(connection))
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
            counts = entity_counts(connection)
            revision = _revision(connection)
            keys = referenced_object_keys(connection)
            server = str(connection.exec_driver_sql("SHOW server_version").scalar_one())
            # the exporting transaction stays open until pg_dump has imported the snapshot and finished
            _run_tool(
                ["pg_dump", "-Fc", "--no-owner", "--no-acl", f"--snapshot={snapshot}", "-f", str(folder / PG_DUMP_FILE)],
                _pg_environment(url), "pg_dump",
            )
    finally:
        engine.dispose()
    return counts, revision, keys, {"pg_dump": pg_dump, "postgresql_server": server}


def _revision(connection: Connection) -> str | None:
    if "alembic_version" not in inspect(connection).get_table_names():
        return None
    value = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one_or_none()
    return None if value is None else str(value)


# ------------------------------------------------------------------------------------------------- SQLite


def _copy_sqlite(source: Path, target: Path) -> None:
    """Copy a SQLite database with the online backup API (one step: a single read transaction, one state)."""
    source_connection = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    target_connection = sqlite3.connect(target)
    try:
        source_connection.backup(target_connection)
        target_connection.execute("PRAGMA journal_mode=DELETE")
    finally:
        target_connection.close()
        source_connection.close()


def _sqlite_state(path: Path) -> tuple[dict[str, int], str | None, set[str]]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            return entity_counts(connection), _revision(connection), referenced_object_keys(connection)
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------------- objects


def _keys_digest(keys: set[str]) -> str:
    """sha256 over the sorted object keys, one per line: what the manifest records of the objects."""
    digest = hashlib.sha256()
    for key in sorted(keys):
        digest.update(f"{key}\n".encode())
    return digest.hexdigest()


def _copy_objects(source: ObjectStore, target: ObjectStore, keys: set[str], profile_name: str) -> None:
    """Put the objects ``keys`` of ``source`` into ``target`` (each re-hashed on the way)."""
    for key in sorted(keys):
        try:
            handle = source.open(key)
        except NotExistent as error:
            raise BackupError(
                f"object {key}, referenced by a node of profile {profile_name!r}, is missing from {source.root}; "
                "restore the object store from an older backup, or run 'aiida-sqla storage integrity'"
            ) from error
        with handle:
            target.put(handle, expected_key=key)


def _verify_objects(folder: Path, manifest: dict[str, Any]) -> None:
    """Every object of the backup hashes to its key, and the keys are the ones the manifest records."""
    recorded = manifest.get("objects", {"count": 0, "keys_sha256": _keys_digest(set())})
    store = ObjectStore(folder / OBJECTS_FOLDER)
    keys = set(store.keys())
    if len(keys) != recorded["count"] or _keys_digest(keys) != recorded["keys_sha256"]:
        raise BackupError(
            f"backup {folder} holds {len(keys)} objects, its manifest lists {recorded['count']} (or other keys); use another backup"
        )
    for key in keys:
        digest = hashlib.sha256()
        with store.open(key) as handle:
            for block in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(block)
        if digest.hexdigest() != key:
            raise BackupError(f"backup {folder}: object {key} does not match its sha256 (damaged or changed); use another backup")


# ------------------------------------------------------------------------------------------------- backups


def _new_name(dest: Path) -> str:
    while True:
        name = datetime.datetime.now(datetime.timezone.utc).strftime(_NAME_FORMAT)
        if not (dest / name).exists():
            return name


def list_backups(dest: Path | str) -> list[Path]:
    """The finished backups in ``dest`` (folders named by UTC time holding a manifest), oldest first."""
    root = Path(dest)
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if _NAME.match(path.name) and (path / MANIFEST_NAME).is_file() and not path.is_symlink())


def _link_last(dest: Path, name: str) -> None:
    temporary = dest / f".{LAST_BACKUP_LINK}.{os.getpid()}"
    if temporary.is_symlink():
        temporary.unlink()
    temporary.symlink_to(name)
    os.replace(temporary, dest / LAST_BACKUP_LINK)


#: A backup being written: ``.tmp-<name>@<host>@<pid>``, renamed to ``<name>`` once complete.
_TEMPORARY = re.compile(r"^\.tmp-.+@(?P<host>[^@]+)@(?P<pid>\d+)$")


def _temporary_name(name: str) -> str:
    return f".tmp-{name}@{socket.gethostname()}@{os.getpid()}"


def _remove_abandoned(dest: Path) -> None:
    """Remove the temporary folders of backups whose process died on this host (killed, or the machine reset).

    A folder of another host, or of a process that still runs, is left alone: it may be a backup in progress.
    """
    host = socket.gethostname()
    for path in dest.iterdir():
        match = _TEMPORARY.match(path.name)
        if match is None or match["host"] != host or not path.is_dir():
            continue
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # the process exists (of another user)


def _prune(dest: Path, keep: int) -> None:
    for old in list_backups(dest)[:-keep]:
        shutil.rmtree(old)


def backup(profile: ProfileLike, dest: Path | str, *, keep: int | None = None, progress: ProgressCallback | None = None) -> Path:
    """Back up the profile's database into a new folder of ``dest``; returns that folder.

    Safe while other processes write: the copy is one committed state. ``keep`` removes all but the newest
    ``keep`` backups afterwards. The folder appears (renamed from a hidden temporary one) only once complete.
    """
    if keep is not None and keep < 1:
        raise BackupError(f"keep must be at least 1, got {keep}")
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    name = _new_name(root)
    temporary = root / _temporary_name(name)
    temporary.mkdir()
    url = database_url(profile)
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        report(progress, "backup", 0, 2)
        tools: dict[str, str] = {"aiida-sqla-plugin": __version__}
        if url.get_backend_name() == "sqlite":
            path = sqlite_file(profile)
            if path is None or not path.exists():
                raise BackupError(f"Profile {profile.name!r} has no SQLite file to back up ({path or 'in-memory database'})")
            _copy_sqlite(path, temporary / SQLITE_FILE)
            counts, revision, keys = _sqlite_state(temporary / SQLITE_FILE)
            tools["sqlite"] = sqlite3.sqlite_version
        else:
            counts, revision, keys, pg_tools = _backup_postgres(url, temporary)
            tools.update(pg_tools)
        report(progress, "backup", 1, 2)
        files = {
            path.name: {"size": path.stat().st_size, "sha256": _sha256(path)}
            for path in sorted(temporary.iterdir())
        }
        _copy_objects(object_store_for(profile), ObjectStore(temporary / OBJECTS_FOLDER), keys, profile.name)
        manifest = {
            "format": 1,
            "profile": profile.name,
            "dialect": url.get_backend_name(),
            "schema_revision": revision,
            "started": started.isoformat(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "counts": counts,
            "files": files,
            "objects": {"count": len(keys), "keys_sha256": _keys_digest(keys)},
            "tools": tools,
        }
        manifest_path = temporary / MANIFEST_NAME
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        with manifest_path.open("rb") as handle:
            os.fsync(handle.fileno())
        os.rename(temporary, root / name)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _link_last(root, name)
    if keep is not None:
        _prune(root, keep)
    report(progress, "backup", 2, 2)
    return root / name


def _manifest(backup_path: Path) -> dict[str, Any]:
    path = backup_path / MANIFEST_NAME
    if not path.is_file():
        raise BackupError(f"{backup_path} is not a finished backup (no {MANIFEST_NAME}); use another backup")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["files"], manifest["counts"], manifest["dialect"]  # noqa: B018 - the keys must be there
    except (ValueError, KeyError, TypeError) as error:
        raise BackupError(f"{path} is damaged ({error}); use another backup") from error
    return manifest


def verify_backup(backup_path: Path | str) -> None:
    """Check that a backup is complete: its manifest is readable, every file has its recorded size and sha256, and
    the objects are the recorded ones, each matching its key."""
    folder = Path(backup_path).resolve()
    manifest = _manifest(folder)
    expected = set(manifest["files"])
    present = {path.name for path in folder.iterdir()} - {MANIFEST_NAME, OBJECTS_FOLDER}
    if present != expected:
        raise BackupError(f"backup {folder} holds files {sorted(present)}, its manifest lists {sorted(expected)}; use another backup")
    for name, recorded in manifest["files"].items():
        path = folder / name
        if path.stat().st_size != recorded["size"] or _sha256(path) != recorded["sha256"]:
            raise BackupError(f"backup {folder}: {name} does not match its sha256 in {MANIFEST_NAME} (damaged or changed); use another backup")
    _verify_objects(folder, manifest)


# ------------------------------------------------------------------------------------------------- restore


def _require_empty_postgres(url: URL, profile: ProfileLike) -> int:
    """The server's major version; :class:`BackupError` unless the database has no tables."""
    engine = create_engine(url, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
            major = _server_major(connection)
    except Exception as error:  # noqa: BLE001 - any failure to connect is reported the same way
        raise UnreachableStorage(f"cannot reach the database of profile {profile.name!r} ({error}); create it first") from error
    finally:
        engine.dispose()
    if tables:
        raise BackupError(f"the database of profile {profile.name!r} is not empty ({len(tables)} tables); restore into a new, empty database")
    return major


def _empty_sqlite_target(profile: ProfileLike) -> Path:
    """The SQLite file to restore into; :class:`BackupError` if it exists already."""
    path = sqlite_file(profile)
    if path is None:
        raise ConfigurationError(f"Profile {profile.name!r}: cannot restore into an in-memory database")
    if path.exists() and path.stat().st_size > 0:
        raise BackupError(f"the SQLite file {path} of profile {profile.name!r} exists; restore into a new file")
    return path


def restore(backup_path: Path | str, target_profile: ProfileLike, *, progress: ProgressCallback | None = None) -> None:
    """Restore a backup into an empty profile (a new SQLite file or an empty PostgreSQL database).

    Checks the backup's hashes and that the target is empty first, puts the backup's objects into the target
    profile's object store, restores the database, migrates a restored schema older than the code and checks the
    counts against the manifest. :class:`BackupError` when the backup is damaged, of another dialect, or the target not empty.
    """
    folder = Path(backup_path).resolve()
    verify_backup(folder)
    manifest = _manifest(folder)
    url = database_url(target_profile)
    dialect = url.get_backend_name()
    if dialect != manifest["dialect"]:
        raise BackupError(f"the backup is of a {manifest['dialect']} database, profile {target_profile.name!r} uses {dialect}; choose a {manifest['dialect']} profile")
    report(progress, "restore", 0, 3)
    sqlite_target = _empty_sqlite_target(target_profile) if dialect == "sqlite" else None
    if sqlite_target is None:
        major = _require_empty_postgres(url, target_profile)
        _check_client("pg_restore", major)
    # Objects first: should this fail (a full disk), the database is still empty and restore can simply be run
    # again; objects already put are kept (content-addressed), and unreferenced ones are what 'maintain' removes.
    backed_up = ObjectStore(folder / OBJECTS_FOLDER)
    _copy_objects(backed_up, object_store_for(target_profile), set(backed_up.keys()), target_profile.name)
    if sqlite_target is not None:
        sqlite_target.parent.mkdir(parents=True, exist_ok=True)
        _copy_sqlite(folder / SQLITE_FILE, sqlite_target)
    else:
        _run_tool(["pg_restore", "--no-owner", "--no-acl", "--single-transaction", "--exit-on-error", "-d", url.database or "",
                   str(folder / PG_DUMP_FILE)], _pg_environment(url), "pg_restore")
    report(progress, "restore", 1, 3)
    manager = SqlaBackendManager(target_profile)
    if manager.get_schema_version_database() != manager.get_schema_version_code():
        manager.migrate()
    report(progress, "restore", 2, 3)
    counts = count_entities(session_module.get_engine(target_profile))
    if counts != manifest["counts"]:
        raise BackupError(f"restored counts {counts} differ from the backup's {manifest['counts']}; the backup is unusable")
    report(progress, "restore", 3, 3)
