"""The transitive closure of provenance links in ``db_dbpath``, kept exact by database triggers.

One row per (ancestor, descendant) pair with the number of distinct link paths between them.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Connection

from .models import DbSetting

__all__ = ("CLOSURE_SETTING_KEY", "DEFAULT_LINK_TYPES", "installed_link_types")

#: Link types the closure covers unless told otherwise: the acyclic provenance links.
DEFAULT_LINK_TYPES: tuple[str, ...] = ("create", "input_calc")
#: Setting recording the link types of the installed closure (absent when it is not installed).
CLOSURE_SETTING_KEY = "closure_link_types"


def installed_link_types(connection: Connection) -> frozenset[str] | None:
    """The link types covered by the installed closure, or None when no closure is installed."""
    value = connection.execute(select(DbSetting.val).where(DbSetting.key == CLOSURE_SETTING_KEY)).scalar_one_or_none()
    return None if value is None else frozenset(value)
