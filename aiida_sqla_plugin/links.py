"""Link types of the provenance graph: the one list, the closure's default selection and their validator."""
from __future__ import annotations

from collections.abc import Iterable

from .exceptions import ValidationError

__all__ = ("DEFAULT_CLOSURE_LINK_TYPES", "LINK_TYPES", "validate_link_types")

#: Every link type AiiDA stores in ``db_dblink.type``.
LINK_TYPES: tuple[str, ...] = ("create", "return", "input_calc", "input_work", "call_calc", "call_work")
#: The link types of data provenance: followed by ancestry queries and covered by the closure unless told otherwise.
DEFAULT_CLOSURE_LINK_TYPES: tuple[str, ...] = ("create", "input_calc")


def validate_link_types(link_types: Iterable[str] | str) -> tuple[str, ...]:
    """The distinct link types, sorted; a bare string names one type. :class:`ValidationError` if none or unknown."""
    if isinstance(link_types, str):
        link_types = (link_types,)
    if not isinstance(link_types, Iterable):
        raise ValidationError(f"link_types must be link type names, not {link_types!r}")
    types = tuple(link_types)
    if not types:
        raise ValidationError("link_types must name at least one link type")
    for link_type in types:
        if not isinstance(link_type, str) or link_type not in LINK_TYPES:
            raise ValidationError(f"unknown link type {link_type!r}; known: {', '.join(LINK_TYPES)}")
    return tuple(sorted(set(types)))
