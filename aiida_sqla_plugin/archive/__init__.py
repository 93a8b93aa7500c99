"""AiiDA archives in and out of a profile, and copying a profile's storage to another profile."""
from __future__ import annotations

from ._copy import CopyReport, StorageNotEmpty, copy_storage
from ._export import EXPORT_TRAVERSAL, ArchiveExportError, ExportReport, export_archive
from ._import import ImportReport, import_archive, import_source
from ._open import SUPPORTED_VERSIONS, open_archive
from ._source import ArchiveImportError, ArchiveSource, InvalidArchiveEntry, Repair, UnsupportedArchive

__all__ = (
    "EXPORT_TRAVERSAL",
    "SUPPORTED_VERSIONS",
    "ArchiveExportError",
    "ArchiveImportError",
    "ArchiveSource",
    "CopyReport",
    "ExportReport",
    "ImportReport",
    "InvalidArchiveEntry",
    "Repair",
    "StorageNotEmpty",
    "UnsupportedArchive",
    "copy_storage",
    "export_archive",
    "import_archive",
    "import_source",
    "open_archive",
)
