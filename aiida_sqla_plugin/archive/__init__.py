"""AiiDA archives in and out of a profile, and copying a profile's storage to another profile."""
from __future__ import annotations

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
    "ExportReport",
    "ImportReport",
    "InvalidArchiveEntry",
    "Repair",
    "UnsupportedArchive",
    "export_archive",
    "import_archive",
    "import_source",
    "open_archive",
)
