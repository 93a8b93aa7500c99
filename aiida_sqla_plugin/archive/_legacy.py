"""Reader of AiiDA's legacy JSON archives (export versions 0.4 to 0.13) as today's records.

The layout is ``metadata.json`` + ``data.json`` + ``nodes/<uuid[:2]>/<uuid[2:4]>/<uuid[4:]>/{path,raw_input}/...``.
``data.json`` holds ``export_data`` (entity name -> pk -> fields), ``links_uuid``, ``groups_uuid`` and the
``node_attributes`` / ``node_extras`` maps (pk -> dict), plus ``node_*_conversion`` maps up to 0.5. It is streamed
with ``ijson``, once per entity; only the pk -> uuid/email maps of users, computers and nodes are kept in memory.

Each version's differences are translated as aiida-core 2.x's legacy migrations do when they bring an archive to
``main_0001``: the step of each migration applies to every archive older than the version that introduced it.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import uuid as uuid_module
import zipfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import ijson

from ..links import LINK_TYPES
from ._source import (
    ArchiveSource,
    AuthInfoRecord,
    CommentRecord,
    ComputerRecord,
    GroupNodeRecord,
    GroupRecord,
    InvalidArchiveEntry,
    LinkRecord,
    LogRecord,
    NodeRecord,
    ObjectOpener,
    UnsupportedArchive,
    UserRecord,
)

__all__ = ("LEGACY_VERSIONS", "open_legacy")

#: The legacy JSON export versions this reader translates.
LEGACY_VERSIONS: tuple[str, ...] = tuple(f"0.{minor}" for minor in range(4, 14))

_DATA_FILE = "data.json"
_CHUNK = 1 << 20
#: Marks a node that ``node_attributes`` or ``node_extras`` does not list.
_MISSING: Any = object()

# 0.5 -> 0.6: a legacy JobCalculation ``state`` attribute becomes process attributes (process_state, exit_status,
# process_status); values from aiida-core's ``calc_state.STATE_MAPPING``.
_CALC_JOB_NODE_TYPE = "process.calculation.calcjob.CalcJobNode."
_JOB_STATES: dict[str, tuple[str, int | None]] = {
    **{state: ("killed", None) for state in (
        "NEW", "TOSUBMIT", "SUBMITTING", "WITHSCHEDULER", "COMPUTED", "RETRIEVING", "PARSING")},
    **{state: ("excepted", None) for state in ("SUBMISSIONFAILED", "RETRIEVALFAILED", "PARSINGFAILED")},
    "FAILED": ("finished", 2),
    "FINISHED": ("finished", 0),
}
# 0.6 -> 0.7: process attributes dropped; a process node in one of these states should never have been exported.
_DROPPED_PROCESS_ATTRIBUTES = ("_sealed", "_finished", "_failed", "_aborted", "_do_abort")
_ACTIVE_PROCESS_STATES = frozenset({"created", "running", "waiting"})
# 0.8 -> 0.9: group type strings.
_GROUP_TYPES = {"user": "core", "data.upf": "core.upf", "auto.import": "core.import", "auto.run": "core.auto"}
# 0.11 -> 0.12: the ``core.`` prefix of the entry points shipped with aiida-core.
_CORE_DATA_TYPES = (
    "array.ArrayData", "array.bands.BandsData", "array.kpoints.KpointsData", "array.projection.ProjectionData",
    "array.trajectory.TrajectoryData", "array.xy.XyData", "base.BaseData", "bool.Bool", "cif.CifData", "code.Code",
    "dict.Dict", "float.Float", "folder.FolderData", "int.Int", "list.List", "numeric.NumericData",
    "orbital.OrbitalData", "remote.RemoteData", "remote.stash.RemoteStashData",
    "remote.stash.folder.RemoteStashFolderData", "singlefile.SinglefileData", "str.Str",
    "structure.StructureData", "upf.UpfData",
)
_NODE_TYPES = {f"data.{name}.": f"data.core.{name}." for name in _CORE_DATA_TYPES}
_PROCESS_TYPES = {
    "aiida.calculations:arithmetic.add": "aiida.calculations:core.arithmetic.add",
    "aiida.calculations:templatereplacer": "aiida.calculations:core.templatereplacer",
    "aiida.workflows:arithmetic.add_multiply": "aiida.workflows:core.arithmetic.add_multiply",
    "aiida.workflows:arithmetic.multiply_add": "aiida.workflows:core.arithmetic.multiply_add",
}
# aiida-core's 0.11 -> 0.12 migration also means to rename the ``parser_name`` attribute, but it looks for the
# attributes under ``export_data`` where they never are, so aiida-core leaves them unchanged; so does this reader.
_SCHEDULERS = {name: f"core.{name}" for name in ("direct", "lsf", "pbspro", "sge", "slurm", "torque")}
# 0.12 -> 0.13: the same prefix for the transports.
_TRANSPORTS = {"local": "core.local", "ssh": "core.ssh"}
# The node folders whose files form a node's repository (merged into one tree, as aiida-core does).
_REPOSITORY_FOLDERS = ("path", "raw_input")


def open_legacy(archive: zipfile.ZipFile, metadata: dict[str, Any]) -> ArchiveSource:
    """The records of a legacy JSON archive; :class:`UnsupportedArchive` for a version outside ``LEGACY_VERSIONS``."""
    version = metadata.get("export_version")
    if version not in LEGACY_VERSIONS:
        raise UnsupportedArchive(
            f"legacy archive version {version!r} is not supported; this reader reads {', '.join(LEGACY_VERSIONS)}."
            " Migrate an older archive with aiida-core 1.x (`verdi archive migrate`) first"
        )
    try:
        archive.getinfo(_DATA_FILE)
    except KeyError:
        raise UnsupportedArchive(
            f"the legacy archive (version {version}) has no {_DATA_FILE}; the file is incomplete: export it again"
        ) from None
    return LegacySource(archive, str(version))


class LegacySource:
    """An opened legacy archive; every iterator streams ``data.json`` anew. :meth:`close` closes the zip file."""

    def __init__(self, archive: zipfile.ZipFile, version: str) -> None:
        self.version = version
        self._minor = int(version.split(".")[1])
        self._archive = archive
        self._maps: dict[str, dict[str, str]] = {}
        self._folders: dict[str, list[tuple[tuple[str, ...], zipfile.ZipInfo]]] | None = None
        #: sha256 key -> one zip member holding it, for the nodes whose files are hashed already.
        self._objects: dict[str, str] = {}
        self._hashed: set[str] = set()

    def _older(self, minor: int) -> bool:
        """Whether the archive predates version ``0.<minor>`` (so that version's migration step applies)."""
        return self._minor < minor

    # -- streaming data.json ---------------------------------------------------------------------------------

    def _stream(self, prefix: str, pairs: bool) -> Iterator[Any]:
        """The items (``pairs``: key/value pairs) under ``prefix`` of data.json; corrupt JSON is InvalidArchiveEntry."""
        try:
            with self._archive.open(_DATA_FILE) as handle:
                parse = ijson.kvitems if pairs else ijson.items
                yield from parse(handle, prefix, use_float=True)
        except (ijson.JSONError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise InvalidArchiveEntry(
                "archive file", _DATA_FILE, f"cannot be read ({exc}); the archive is corrupt: export it again"
            ) from exc

    def _entities(self, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(pk, fields)`` of one entity of ``export_data``."""
        for pk, fields in self._stream(f"export_data.{name}", pairs=True):
            if not isinstance(fields, dict):
                raise InvalidArchiveEntry(name.lower(), f"pk {pk}", f"is {type(fields).__name__}, not an object")
            yield pk, fields

    def _keyed(self, entity: str, field: str) -> Iterator[tuple[str, dict[str, Any], str]]:
        """``(pk, fields, key)`` of one entity, ``key`` its ``field`` (uuid or email); a full pass keeps pk -> key."""
        keys: dict[str, str] = {}
        for pk, fields in self._entities(entity):
            value = fields.get(field)
            keys[pk] = key = _uuid(value, entity, pk) if field == "uuid" else _text(value, entity, pk)
            yield pk, fields, key
        self._maps.setdefault(entity, keys)

    def _map(self, entity: str, field: str) -> dict[str, str]:
        """pk -> ``field`` of one entity: from an earlier full pass, else read now."""
        if entity not in self._maps:
            for _ in self._keyed(entity, field):
                pass
        return self._maps[entity]

    def _reference(self, pk: Any, entity: str) -> str | None:
        """The uuid/email of the ``entity`` with ``pk``; None if null or not in the archive (the importer decides)."""
        if pk is None:
            return None
        return self._map(entity, "email" if entity == "User" else "uuid").get(str(pk))

    # -- records ---------------------------------------------------------------------------------------------

    def users(self) -> Iterator[UserRecord]:
        for _, fields, email in self._keyed("User", "email"):
            yield UserRecord(
                email=email,
                first_name=fields.get("first_name"),
                last_name=fields.get("last_name"),
                institution=fields.get("institution"),
            )

    def computers(self) -> Iterator[ComputerRecord]:
        for _, fields, computer_uuid in self._keyed("Computer", "uuid"):
            scheduler, transport = fields.get("scheduler_type"), fields.get("transport_type")
            if self._older(12):
                scheduler = _renamed(_SCHEDULERS, scheduler)
            if self._older(13):
                transport = _renamed(_TRANSPORTS, transport)
            yield ComputerRecord(
                uuid=computer_uuid,
                label=fields.get("name" if self._older(11) else "label"),
                hostname=fields.get("hostname"),
                description=fields.get("description"),
                scheduler_type=scheduler,
                transport_type=transport,
                metadata=fields.get("metadata"),
            )

    def authinfos(self) -> Iterator[AuthInfoRecord]:
        """Legacy archives hold no authinfos."""
        return iter(())

    def nodes(self) -> Iterator[NodeRecord]:
        attributes = _Lookahead(self._stream("node_attributes", pairs=True))
        extras = _Lookahead(self._stream("node_extras", pairs=True))
        converted = self._older(6)
        attribute_dates = _Lookahead(self._stream("node_attributes_conversion", pairs=True)) if converted else None
        extra_dates = _Lookahead(self._stream("node_extras_conversion", pairs=True)) if converted else None
        for pk, fields, node_uuid in self._keyed("Node", "uuid"):
            node_type, process_type = fields.get("node_type"), fields.get("process_type")
            if not isinstance(node_type, str):
                raise InvalidArchiveEntry("node", node_uuid, f"node_type is {node_type!r}, not a type string")
            node_attributes = _object(attributes.take(pk, _MISSING), "node", node_uuid, "attributes")
            node_extras = _object(extras.take(pk, _MISSING), "node", node_uuid, "extras")
            if attribute_dates is not None and extra_dates is not None:
                node_attributes = _dates(node_attributes, attribute_dates.take(pk, {}), node_uuid)
                node_extras = _dates(node_extras, extra_dates.take(pk, {}), node_uuid)
            if self._older(6) and node_type == _CALC_JOB_NODE_TYPE:
                _migrate_job_state(node_attributes)
            if self._older(7) and node_type.startswith("process."):
                _seal_process(node_attributes, node_uuid)
            if self._older(12):
                node_type = _renamed(_NODE_TYPES, node_type)
                process_type = _renamed(_PROCESS_TYPES, process_type)
            yield NodeRecord(
                uuid=node_uuid,
                node_type=node_type,
                process_type=process_type,
                label=fields.get("label"),
                description=fields.get("description"),
                ctime=_time(fields.get("ctime"), "node", node_uuid),
                mtime=_time(fields.get("mtime"), "node", node_uuid),
                attributes=node_attributes,
                extras=node_extras,
                repository_metadata=_serialize(self._tree(node_uuid)),
                user_email=self._reference(fields.get("user"), "User"),
                computer_uuid=self._reference(fields.get("dbcomputer"), "Computer"),
            )

    def links(self) -> Iterator[LinkRecord]:
        for position, link in enumerate(self._stream("links_uuid.item", pairs=False)):
            if not isinstance(link, dict):
                raise InvalidArchiveEntry("link", f"#{position}", f"is {type(link).__name__}, not an object")
            identifier = f"#{position} ({link.get('input')} -> {link.get('output')})"
            link_type, label = link.get("type"), link.get("label")
            if link_type not in LINK_TYPES:
                raise InvalidArchiveEntry(
                    "link", identifier, f"has type {link_type!r}, not one of {', '.join(LINK_TYPES)}"
                )
            if not isinstance(label, str):
                raise InvalidArchiveEntry("link", identifier, f"has label {label!r}, not a string")
            if self._older(8) and label == "_return":
                label = "result"
            yield LinkRecord(
                input_uuid=_as_written_uuid(link.get("input")),
                output_uuid=_as_written_uuid(link.get("output")),
                type=link_type,
                label=label,
            )

    def groups(self) -> Iterator[GroupRecord]:
        for pk, fields in self._entities("Group"):
            group_uuid = _uuid(fields.get("uuid"), "Group", pk)
            type_string = fields.get("type_string")
            if self._older(9):
                type_string = _renamed(_GROUP_TYPES, type_string)
            yield GroupRecord(
                uuid=group_uuid,
                label=_text(fields.get("label"), "group", group_uuid),
                type_string=type_string,
                description=fields.get("description"),
                time=_time(fields.get("time"), "group", group_uuid),
                extras=fields.get("extras"),
                user_email=self._reference(fields.get("user"), "User"),
            )

    def group_nodes(self) -> Iterator[GroupNodeRecord]:
        """Every membership as listed: members that are not nodes of the archive, even ones that are not uuids
        (``None``, ``"unknown"``), are passed through unchanged for the importer to drop."""
        for group, members in self._stream("groups_uuid", pairs=True):
            group_uuid = _uuid(group, "group", group)
            if not isinstance(members, list):
                raise InvalidArchiveEntry("group", group_uuid, "its member list is not a list")
            for member in members:
                yield GroupNodeRecord(group_uuid=group_uuid, node_uuid=_as_written_uuid(member))

    def comments(self) -> Iterator[CommentRecord]:
        for pk, fields in self._entities("Comment"):
            comment_uuid = _uuid(fields.get("uuid"), "Comment", pk)
            yield CommentRecord(
                uuid=comment_uuid,
                node_uuid=self._reference(fields.get("dbnode"), "Node"),
                user_email=self._reference(fields.get("user"), "User"),
                content=fields.get("content"),
                ctime=_time(fields.get("ctime"), "comment", comment_uuid),
                mtime=_time(fields.get("mtime"), "comment", comment_uuid),
            )

    def logs(self) -> Iterator[LogRecord]:
        for pk, fields in self._entities("Log"):
            log_uuid = _uuid(fields.get("uuid"), "Log", pk)
            yield LogRecord(
                uuid=log_uuid,
                node_uuid=self._reference(fields.get("dbnode"), "Node"),
                time=_time(fields.get("time"), "log", log_uuid),
                loggername=fields.get("loggername"),
                levelname=fields.get("levelname"),
                message=fields.get("message"),
                metadata=fields.get("metadata"),
            )

    # -- repository ------------------------------------------------------------------------------------------

    def objects(self) -> Iterator[tuple[str, ObjectOpener]]:
        for node_uuid in self._map("Node", "uuid").values():
            if node_uuid not in self._hashed:
                self._tree(node_uuid)
        for key, member in sorted(self._objects.items()):
            yield key, functools.partial(self._archive.open, member)

    def _node_folders(self) -> dict[str, list[tuple[tuple[str, ...], zipfile.ZipInfo]]]:
        """Node uuid -> its repository entries (path inside the repository, zip entry), from the zip's directory."""
        if self._folders is None:
            self._folders = {}
            for info in self._archive.infolist():
                parts = PurePosixPath(info.filename).parts
                if len(parts) >= 6 and parts[0] == "nodes" and parts[4] in _REPOSITORY_FOLDERS:
                    node_uuid = _uuid("".join(parts[1:4]), "repository folder", info.filename)
                    self._folders.setdefault(node_uuid, []).append((parts[5:], info))
        return self._folders

    def _tree(self, node_uuid: str) -> dict[str, Any]:
        """One node's folder tree (name -> sha256 key or subtree), its files hashed now (one node at a time)."""
        tree: dict[str, Any] = {}
        for path, info in self._node_folders().get(node_uuid, ()):
            folder = tree
            *parents, name = path
            for part in parents:
                folder = _subfolder(folder, part, info.filename)
            if info.is_dir():
                _subfolder(folder, name, info.filename)
                continue
            if isinstance(folder.get(name), dict):
                raise InvalidArchiveEntry("repository file", info.filename, "has the name of a folder")
            folder[name] = key = self._hash(info.filename)
            self._objects.setdefault(key, info.filename)
        self._hashed.add(node_uuid)
        return tree

    def _hash(self, member: str) -> str:
        """The sha256 hex digest of one zip member, read in chunks."""
        digest = hashlib.sha256()
        try:
            with self._archive.open(member) as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise InvalidArchiveEntry("repository file", member, f"cannot be read ({exc})") from exc
        return digest.hexdigest()

    def close(self) -> None:
        self._archive.close()


class _Lookahead:
    """Finds values by key in a ``(key, value)`` stream read once, keeping only the pairs skipped so far.

    aiida-core writes ``node_attributes``/``node_extras`` in the order of ``export_data.Node``, so the buffer stays
    empty; another order costs memory but gives the same answer.
    """

    def __init__(self, pairs: Iterator[tuple[str, Any]]) -> None:
        self._pairs = pairs
        self._skipped: dict[str, Any] = {}

    def take(self, key: str, default: Any) -> Any:
        """The value of ``key``, ``default`` if the stream lacks it."""
        if key in self._skipped:
            return self._skipped.pop(key)
        for found, value in self._pairs:
            if found == key:
                return value
            self._skipped[found] = value
        return default


# -- field translation ---------------------------------------------------------------------------------------


def _uuid(value: Any, entity: str, identifier: Any) -> str:
    """A uuid as a lowercase dashed string; InvalidArchiveEntry if it is not one."""
    try:
        return str(uuid_module.UUID(value))
    except (TypeError, ValueError, AttributeError):
        raise InvalidArchiveEntry(entity.lower(), str(identifier), f"has uuid {value!r}, not a uuid") from None


def _renamed(names: dict[str, str], value: Any) -> Any:
    """A plugin or type name as renamed by a migration step; other values (None included) unchanged."""
    return names.get(value, value) if isinstance(value, str) else value


def _as_written_uuid(value: Any) -> Any:
    """A reference (link end, group member) as a lowercase dashed uuid when it is one, else as written: the
    importer refuses or drops what the archive does not hold."""
    try:
        return str(uuid_module.UUID(value))
    except (TypeError, ValueError, AttributeError):
        return value


def _text(value: Any, entity: str, identifier: Any) -> str:
    """A field that identifies an entry (an email, a group label): a string or InvalidArchiveEntry."""
    if not isinstance(value, str):
        raise InvalidArchiveEntry(entity.lower(), str(identifier), f"has {value!r} where a string is required")
    return value


def _time(value: Any, entity: str, identifier: str) -> datetime.datetime | None:
    """A stored time (written in UTC without offset) as an aware datetime; None stays None."""
    if value is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidArchiveEntry(entity, identifier, f"has time {value!r}, not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.timezone.utc)


def _object(value: Any, entity: str, identifier: str, what: str) -> dict[str, Any] | None:
    """Attributes or extras: an object, or None (the importer's default applies)."""
    if value is _MISSING:
        raise InvalidArchiveEntry(entity, identifier, f"has no {what} in {_DATA_FILE} (as aiida-core, refused)")
    if value is not None and not isinstance(value, dict):
        raise InvalidArchiveEntry(entity, identifier, f"has {what} of type {type(value).__name__}, not an object")
    return value


def _dates(value: Any, conversion: Any, identifier: str) -> Any:
    """Up to 0.5: attribute/extra values marked ``date`` were UTC times written without offset; add ``+00:00``."""
    if conversion is None:
        return value
    if isinstance(value, dict) and isinstance(conversion, dict):
        return {key: _dates(item, conversion.get(key), identifier) for key, item in value.items()}
    if isinstance(value, list) and isinstance(conversion, list):
        return [_dates(item, sub, identifier) for item, sub in zip(value, conversion)]
    if conversion == "date" and isinstance(value, str):
        return f"{value}+00:00"
    raise InvalidArchiveEntry("node", identifier, f"has value conversion {conversion!r} for {value!r}")


def _migrate_job_state(attributes: dict[str, Any] | None) -> None:
    """Up to 0.5: a legacy JobCalculation's ``state`` becomes today's process attributes (in place)."""
    if attributes is None or attributes.get("state") not in _JOB_STATES:
        return
    state = attributes.pop("state")
    process_state, exit_status = _JOB_STATES[state]
    attributes["process_state"] = process_state
    if exit_status is None:
        attributes["process_status"] = f"Legacy `JobCalculation` with state `{state}`"
    else:
        attributes["exit_status"] = exit_status
    attributes["process_label"] = "Legacy JobCalculation"


def _seal_process(attributes: dict[str, Any] | None, identifier: str) -> None:
    """Up to 0.6: a terminated process node is sealed and loses its old flags; an active one is refused."""
    if attributes is None:
        return
    state = attributes.get("process_state", "")
    if state in _ACTIVE_PROCESS_STATES:
        raise InvalidArchiveEntry(
            "node", identifier, f"is a process in the active state {state!r}, which can never be imported"
        )
    attributes["sealed"] = True
    for name in _DROPPED_PROCESS_ATTRIBUTES:
        attributes.pop(name, None)


def _subfolder(folder: dict[str, Any], name: str, member: str) -> dict[str, Any]:
    """The subfolder ``name`` of a folder tree, created if new; InvalidArchiveEntry if a file has that name."""
    child = folder.setdefault(name, {})
    if not isinstance(child, dict):
        raise InvalidArchiveEntry("repository file", member, f"lies under {name!r}, which is a file")
    return child


def _serialize(tree: dict[str, Any]) -> dict[str, Any]:
    """Today's repository_metadata of a folder tree: ``{"o": {name: {"k": key} | folder}}``, ``{}`` when empty."""
    if not tree:
        return {}
    return {"o": {name: {"k": child} if isinstance(child, str) else _serialize(child) for name, child in tree.items()}}
