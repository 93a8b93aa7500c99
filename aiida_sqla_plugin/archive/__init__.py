"""AiiDA archives in and out of a profile, and copying a profile's storage to another profile."""
from __future__ import annotations

from ._copy import CopyReport, StorageNotEmpty, copy_storage
from ._export import EXPORT_TRAVERSAL, ArchiveExportError, ExportReport, export_archive

__all__ = (
    "EXPORT_TRAVERSAL",
    "ArchiveExportError",
    "CopyReport",
    "ExportReport",
    "StorageNotEmpty",
    "copy_storage",
    "export_archive",
)
