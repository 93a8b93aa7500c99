"""AiiDA 1.x ``aiida.backends.sqlalchemy.utils`` counterparts: JSON change flags and graph maintenance."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm.attributes import flag_modified as _sqla_flag_modified

from .closure import closure_status, get_pg_tc, install_tc, rebuild_tc, uninstall_tc  # noqa: F401
from .graph import delete_nodes_and_connections_sqla
from .models import Base

__all__ = (
    "ModelWrapper",
    "closure_status",
    "delete_nodes_and_connections_sqla",
    "flag_modified",
    "get_pg_tc",
    "install_tc",
    "rebuild_tc",
    "uninstall_tc",
)


class ModelWrapper:
    """A thin proxy around a model instance: attribute reads and writes go to the model."""

    def __init__(self, model: Base) -> None:
        object.__setattr__(self, "_model", model)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_model"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_model"), name, value)

    def __repr__(self) -> str:
        return f"ModelWrapper({object.__getattribute__(self, '_model')!r})"


def flag_modified(instance: Base | ModelWrapper, key: str) -> None:
    """Mark ``instance.key`` as changed after an in-place mutation (e.g. of a JSON dict), so flush writes it."""
    model = object.__getattribute__(instance, "_model") if isinstance(instance, ModelWrapper) else instance
    _sqla_flag_modified(model, key)
