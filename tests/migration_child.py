"""Run ``SqlaBackendManager.migrate`` in a process of its own, with the test-only revisions of ``slow_migrations``.

``python migration_child.py URL LOCK_TIMEOUT RESULT_FILE``: ``LOCK_TIMEOUT`` is seconds or ``none``. The result
file receives ``ok <revisions applied>`` or ``error <exception class> <message>``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import aiida_sqla_plugin
from aiida_sqla_plugin import manager
from aiida_sqla_plugin.exceptions import AiidaSqlaError

SLOW_VERSIONS = Path(__file__).resolve().parent / "slow_migrations"
_shipped_config = manager.new_alembic_config


def config_with_slow_revisions() -> manager.Config:
    """The shipped alembic config with the test-only revisions added after its head."""
    config = _shipped_config()
    shipped = Path(manager.migrations_directory()) / "versions"
    config.set_main_option("version_locations", f"{shipped} {SLOW_VERSIONS}")
    return config


def main(url: str, lock_timeout: str, result: Path) -> None:
    manager.new_alembic_config = config_with_slow_revisions
    profile = aiida_sqla_plugin.Profile(name="migrator", storage_backend="sqlalchemy", storage_config={"url": url})
    timeout = None if lock_timeout == "none" else float(lock_timeout)
    try:
        applied = manager.SqlaBackendManager(profile).migrate(lock_timeout=timeout)
    except AiidaSqlaError as error:
        result.write_text(f"error {type(error).__name__} {error}")
    else:
        result.write_text(f"ok {' '.join(applied)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
