"""Alembic environment: runs against the connection the backend manager hands over.

``config.attributes['connection']`` is set by :meth:`SqlaBackendManager.alembic_config`; without it (offline
``--sql`` mode) the URL comes from the ``sqlalchemy.url`` option. SQLite uses batch mode, and every revision runs
in its own transaction unless the caller already opened one (the manager does on SQLite).
"""
from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from aiida_sqla_plugin.models import Base

config = context.config


def _options(dialect_name: str) -> dict[str, object]:
    return {
        "target_metadata": Base.metadata,
        "render_as_batch": dialect_name == "sqlite",
        "transaction_per_migration": True,
        "transactional_ddl": True,
        "compare_type": True,
        "on_version_apply": config.attributes.get("on_version_apply", ()),
    }


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    dialect_name = (url or "postgresql").split(":", 1)[0].split("+", 1)[0]
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_options(dialect_name))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online(connection: Connection) -> None:
    context.configure(connection=connection, **_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "aiida_sqla_plugin migrations need a live connection: run them through "
            "aiida_sqla_plugin.manage.execute_alembic_command or SqlaBackendManager.migrate()."
        )
    run_migrations_online(connection)
