"""Open an archive file as an :class:`ArchiveSource`, whatever its format, or refuse it saying why."""
from __future__ import annotations

import importlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from ._source import ArchiveSource, UnsupportedArchive
from ._zip import ZIP_VERSIONS, ZipArchiveSource

__all__ = ("LEGACY_VERSIONS", "SUPPORTED_VERSIONS", "open_archive")

#: The JSON layout versions of AiiDA 1.x and older that aiida-core 2.x still imports.
LEGACY_VERSIONS = tuple(f"0.{minor}" for minor in range(4, 14))
SUPPORTED_VERSIONS = (*LEGACY_VERSIONS, *ZIP_VERSIONS)
METADATA_FILENAME = "metadata.json"


def _refuse(path: Path, found: str, advice: str = "") -> UnsupportedArchive:
    supported = f"{LEGACY_VERSIONS[0]} to {LEGACY_VERSIONS[-1]}, {', '.join(ZIP_VERSIONS)}"
    advice = advice or (
        "migrate it with aiida-core (`verdi archive migrate`) to a supported version, or export it again"
    )
    return UnsupportedArchive(f"{path}: {found}; the supported archive versions are {supported}; {advice}")


def _metadata(path: Path, archive: zipfile.ZipFile) -> dict[str, Any]:
    try:
        raw = archive.read(METADATA_FILENAME)
    except KeyError:
        raise _refuse(path, f"it holds no {METADATA_FILENAME}, so it is not an AiiDA archive") from None
    try:
        metadata = json.loads(raw)
    except ValueError as error:
        raise _refuse(path, f"its {METADATA_FILENAME} is not JSON ({error})") from None
    if not isinstance(metadata, dict) or "export_version" not in metadata:
        raise _refuse(path, f"its {METADATA_FILENAME} names no export_version")
    return metadata


def open_archive(path: str | os.PathLike[str]) -> ArchiveSource:
    """Open the archive at ``path``; :class:`UnsupportedArchive` for anything that is not a supported archive.

    The zip layouts (``main_0000``, ``main_0001``) are read by :mod:`._zip`, the JSON layouts 0.4 to 0.13 by
    :mod:`._legacy`. The caller closes the source.
    """
    path = Path(path)
    if not path.is_file():
        raise UnsupportedArchive(f"{path}: no such file; check the path")
    if not zipfile.is_zipfile(path):
        raise _refuse(path, "it is not a zip file, so not an archive aiida-core 2.x writes (a tar.gz of an old "
                      "archive is not supported either)", "unpack it and zip it, or migrate it with aiida-core")
    archive = zipfile.ZipFile(path)
    try:
        metadata = _metadata(path, archive)
        version = str(metadata["export_version"])
        if version in ZIP_VERSIONS:
            return ZipArchiveSource(archive, metadata)
        if version in LEGACY_VERSIONS:
            try:  # the legacy reader is imported only when needed
                legacy: Any = importlib.import_module(f"{__package__}._legacy")
            except ModuleNotFoundError as error:
                if error.name != f"{__package__}._legacy":
                    raise
                raise _refuse(path, f"it is a JSON archive of version {version}, which this installation "
                              "cannot read yet", "convert it with aiida-core (`verdi archive migrate`) to main_0001") from None
            source: ArchiveSource = legacy.open_legacy(archive, metadata)
            return source
        raise _refuse(path, f"its version is {version!r}")
    except BaseException:
        archive.close()
        raise
