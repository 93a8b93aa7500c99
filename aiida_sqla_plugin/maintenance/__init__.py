"""Maintenance operations on a profile's storage: reset (empty) and drop (delete the database).

This package is the public face; each operation lives in a private module (``_reset.py``, ``_drop.py``) and a new
one (backup, integrity, maintain) is one more private module plus one import line here.
"""
from __future__ import annotations

from ._drop import drop_database
from ._reset import KEPT_TABLES, reset_storage

__all__ = ("KEPT_TABLES", "drop_database", "reset_storage")
