"""Migration decisions a host or the CLI share: what a migration would apply, migrate-if-needed, offline SQL.

:class:`~aiida_sqla_plugin.manager.SqlaBackendManager` (the AiiDA 1.x face) inspects and migrates one database;
the functions here decide *whether* to migrate and report what a migration does.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

from alembic import command
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from .exceptions import ValidationError
from .manager import RevisionCallback, SchemaReport, SchemaState, SqlaBackendManager, new_alembic_config
from .profile import ProfileLike, database_url

__all__ = ("MigrationPlan", "migrate_if_needed", "migration_sql", "pending_revisions", "plan_migration")

#: Schema states a migration fixes.
MIGRATABLE_STATES = frozenset({SchemaState.NOT_INITIALISED, SchemaState.BEHIND})


@dataclass(frozen=True)
class MigrationPlan:
    """The schema report of a database, the revisions a migration would apply and (once run) those applied."""

    report: SchemaReport
    pending: list[str]
    applied: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return bool(self.pending)


def pending_revisions(database_revision: str | None) -> list[str]:
    """Revisions a migration from ``database_revision`` applies, oldest first (a new database: just the head)."""
    script = ScriptDirectory.from_config(new_alembic_config())
    head = script.get_current_head()
    if database_revision is None:
        return [head] if head else []
    if database_revision == head:
        return []
    return [rev.revision for rev in reversed(list(script.iterate_revisions(head, database_revision)))]


def plan_migration(manager: SqlaBackendManager) -> MigrationPlan:
    """What migrating the manager's database would do; raises the report's error unless it is compatible or behind.

    :class:`SchemaAhead`, :class:`CorruptStorage` or :class:`UnreachableStorage` (nothing a migration fixes).
    """
    report = manager.schema_report()
    if report.state == SchemaState.COMPATIBLE:
        return MigrationPlan(report, [])
    if report.state not in MIGRATABLE_STATES:
        error = report.error()
        assert error is not None
        raise error
    return MigrationPlan(report, pending_revisions(report.database_revision))


def migrate_if_needed(manager: SqlaBackendManager, on_revision: RevisionCallback | None = None) -> MigrationPlan:
    """Migrate the database when it is new or behind; a compatible one is left alone. Returns the plan carried out."""
    plan = plan_migration(manager)
    if not plan.needed:
        return plan
    return MigrationPlan(plan.report, plan.pending, manager.migrate(on_revision=on_revision))


def migration_sql(profile: ProfileLike, from_revision: str | None = None, to_revision: str = "head") -> str:
    """The SQL that migrates the profile's kind of database from ``from_revision`` (default: empty) to ``to_revision``.

    Alembic's offline mode: nothing connects to the database. Meant for PostgreSQL, where DBAs review it.
    """
    url = database_url(profile)
    if url.get_backend_name() != "postgresql":
        raise ValidationError(
            f"Profile {profile.name!r} uses {url.get_backend_name()}; offline migration SQL is produced for PostgreSQL "
            "profiles only (run 'aiida-sqla storage migrate' for SQLite)"
        )
    buffer = io.StringIO()
    config = new_alembic_config()
    config.output_buffer = buffer
    config.set_main_option("sqlalchemy.url", f"{url.drivername}://")
    target = f"{from_revision}:{to_revision}" if from_revision else to_revision
    try:
        command.upgrade(config, target, sql=True)
    except CommandError as error:
        raise ValidationError(f"cannot produce the migration SQL for {target!r}: {error}") from error
    return buffer.getvalue()
