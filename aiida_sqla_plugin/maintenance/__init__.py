"""Keeping a storage safe over years: reset, drop, online backup and restore, integrity checks, maintenance.

This package is the public face; each operation lives in a private module (``_reset.py``, ``_drop.py``,
``_backup.py``, ``_integrity.py``, ``_maintain.py``) and a new one is one more private module plus one import here.
"""
from __future__ import annotations

from ._backup import LAST_BACKUP_LINK, MANIFEST_NAME, backup, list_backups, restore, verify_backup
from ._drop import drop_database
from ._integrity import Finding, check_integrity
from ._maintain import MaintenanceReport, maintain
from ._reset import KEPT_TABLES, reset_storage

__all__ = (
    "KEPT_TABLES",
    "LAST_BACKUP_LINK",
    "MANIFEST_NAME",
    "Finding",
    "MaintenanceReport",
    "backup",
    "check_integrity",
    "drop_database",
    "list_backups",
    "maintain",
    "reset_storage",
    "restore",
    "verify_backup",
)
