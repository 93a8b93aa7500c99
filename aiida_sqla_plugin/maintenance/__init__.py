"""Keeping a storage safe over years: online backup and restore, integrity checks, database maintenance."""
from __future__ import annotations

from ._backup import LAST_BACKUP_LINK, MANIFEST_NAME, backup, list_backups, restore, verify_backup
from ._integrity import Finding, check_integrity
from ._maintain import MaintenanceReport, maintain

__all__ = (
    "LAST_BACKUP_LINK",
    "MANIFEST_NAME",
    "Finding",
    "MaintenanceReport",
    "backup",
    "check_integrity",
    "list_backups",
    "maintain",
    "restore",
    "verify_backup",
)
