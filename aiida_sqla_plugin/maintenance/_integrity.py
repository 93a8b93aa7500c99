"""Integrity checks of a storage: AiiDA's provenance rules, dangling references, the schema and the closure table.

Every check is one set-based query. Read-only unless ``fix`` is given (which rebuilds a wrong closure).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SAWarning

from ..backend import SqlaBackend, get_backend
from ..closure import _backfill, installed_link_types, rebuild_tc
from ..models import CREATION_DAY_NAME, Base

__all__ = ("Finding", "check_integrity", "RULES")

EXAMPLES = 5

_CALC = "process.calculation.%"
_WORK = "process.workflow.%"
_DATA = "data.%"
#: Link type -> (source kind, target kind) as LIKE patterns of ``node_type``.
VALID_LINKS: dict[str, tuple[str, str]] = {
    "create": (_CALC, _DATA),
    "return": (_WORK, _DATA),
    "input_calc": (_DATA, _CALC),
    "input_work": (_DATA, _WORK),
    "call_calc": (_WORK, _CALC),
    "call_work": (_WORK, _WORK),
}


@dataclass
class Finding:
    """One kind of violation: how many offending nodes (or rows) there are and a few of their pks."""

    kind: str
    count: int
    examples: list[int] = field(default_factory=list)
    description: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "count": self.count, "examples": self.examples, "description": self.description}


def _valid_link_condition() -> str:
    return " OR ".join(
        f"(l.type = '{kind}' AND i.node_type LIKE '{source}' AND o.node_type LIKE '{target}')"
        for kind, (source, target) in VALID_LINKS.items()
    )


#: kind -> (description, query selecting the offending pks as ``pk``).
RULES: dict[str, tuple[str, str]] = {
    "calculation_with_outgoing_call_or_return": (
        "calculations with outgoing CALL or RETURN links",
        "SELECT DISTINCT n.id AS pk FROM db_dbnode n JOIN db_dblink l ON l.input_id = n.id "
        f"WHERE n.node_type LIKE '{_CALC}' AND l.type IN ('call_calc', 'call_work', 'return')",
    ),
    "workflow_with_outgoing_create": (
        "workflows with outgoing CREATE links",
        "SELECT DISTINCT n.id AS pk FROM db_dbnode n JOIN db_dblink l ON l.input_id = n.id "
        f"WHERE n.node_type LIKE '{_WORK}' AND l.type = 'create'",
    ),
    "data_with_multiple_creators": (
        "data nodes with more than one incoming CREATE link",
        "SELECT l.output_id AS pk FROM db_dblink l WHERE l.type = 'create' GROUP BY l.output_id HAVING count(*) > 1",
    ),
    "process_with_multiple_callers": (
        "processes with more than one incoming CALL link",
        "SELECT l.output_id AS pk FROM db_dblink l WHERE l.type IN ('call_calc', 'call_work') "
        "GROUP BY l.output_id HAVING count(*) > 1",
    ),
    "invalid_link_type": (
        "links (pks) whose type is unknown or not valid between the node types they join",
        "SELECT l.id AS pk FROM db_dblink l JOIN db_dbnode i ON i.id = l.input_id JOIN db_dbnode o ON o.id = l.output_id "
        f"WHERE NOT ({_valid_link_condition()})",
    ),
    "unknown_node_type": (
        "nodes whose node_type is neither data nor a calculation or workflow process",
        f"SELECT n.id AS pk FROM db_dbnode n WHERE NOT (n.node_type LIKE '{_DATA}' OR n.node_type LIKE '{_CALC}' "
        f"OR n.node_type LIKE '{_WORK}')",
    ),
    "duplicate_uuid": (
        "nodes sharing their uuid with another node",
        # compared as lower-case text: SQLite's unique constraint lets the same uuid in upper and lower case through
        "SELECT n.id AS pk FROM db_dbnode n WHERE lower(CAST(n.uuid AS TEXT)) IN "
        "(SELECT lower(CAST(d.uuid AS TEXT)) FROM db_dbnode d GROUP BY lower(CAST(d.uuid AS TEXT)) HAVING count(*) > 1)",
    ),
    "dangling_link": (
        "links (pks) whose input or output node does not exist",
        "SELECT l.id AS pk FROM db_dblink l WHERE NOT EXISTS (SELECT 1 FROM db_dbnode n WHERE n.id = l.input_id) "
        "OR NOT EXISTS (SELECT 1 FROM db_dbnode n WHERE n.id = l.output_id)",
    ),
    "dangling_group_member": (
        "group memberships (pks) naming a missing node or group",
        "SELECT g.id AS pk FROM db_dbgroup_dbnodes g WHERE NOT EXISTS (SELECT 1 FROM db_dbnode n WHERE n.id = g.dbnode_id) "
        "OR NOT EXISTS (SELECT 1 FROM db_dbgroup r WHERE r.id = g.dbgroup_id)",
    ),
    "dangling_comment": (
        "comments (pks) on a missing node",
        "SELECT c.id AS pk FROM db_dbcomment c WHERE NOT EXISTS (SELECT 1 FROM db_dbnode n WHERE n.id = c.dbnode_id)",
    ),
    "dangling_log": (
        "logs (pks) of a missing node",
        "SELECT g.id AS pk FROM db_dblog g WHERE NOT EXISTS (SELECT 1 FROM db_dbnode n WHERE n.id = g.dbnode_id)",
    ),
}


def _rule_finding(connection: Connection, kind: str, description: str, query: str) -> Finding | None:
    row = connection.execute(text(f"SELECT count(*), min(pk) FROM ({query}) AS offending")).one()
    if not row[0]:
        return None
    examples = connection.execute(text(f"SELECT pk FROM ({query}) AS offending ORDER BY pk LIMIT {EXAMPLES}")).scalars()
    return Finding(kind, int(row[0]), [int(pk) for pk in examples], description)


def _layout_differences(connection: Connection) -> list[str]:
    """What alembic's comparison does not see: primary-key column order, SQLite ``WITHOUT ROWID`` tables and the
    creation-day index or statistics (``models.CREATION_DAY_DDL``)."""
    dialect = connection.dialect.name
    schema = inspect(connection)
    tables = set(schema.get_table_names())
    differences = []
    for table in Base.metadata.sorted_tables:
        if table.name not in tables:
            continue  # reported by compare_metadata
        key, expected = schema.get_pk_constraint(table.name)["constrained_columns"], [c.name for c in table.primary_key]
        if key != expected:
            differences.append(f"primary key of {table.name} is {key}, not {expected}")
        if dialect == "sqlite" and table.dialect_options["sqlite"]["with_rowid"] is False:
            sql = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table.name,)).scalar_one()
            if "WITHOUT ROWID" not in sql.upper():
                differences.append(f"{table.name} is not a WITHOUT ROWID table")
    name = CREATION_DAY_NAME[dialect]
    query = (
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?"
        if dialect == "sqlite"
        else "SELECT count(*) FROM pg_statistic_ext WHERE stxname = %s AND stxnamespace = current_schema()::regnamespace"
    )
    if not connection.exec_driver_sql(query, (name,)).scalar_one():
        differences.append(f"the creation-day {'index' if dialect == 'sqlite' else 'statistics'} {name} is missing")
    return differences


def _schema_finding(connection: Connection) -> Finding | None:
    """Differences between the database's tables, columns, keys, indexes and constraints and the models'."""
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    with warnings.catch_warnings():  # the SQLite creation-day index is an expression index, outside the metadata too
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index", SAWarning)
        differences: list[object] = [*compare_metadata(context, Base.metadata), *_layout_differences(connection)]
    if not differences:
        return None
    shown = "; ".join((d if isinstance(d, str) else repr(d))[:120] for d in differences[:EXAMPLES])
    return Finding("schema_differs", len(differences), [], f"schema differs from what the migrations create: {shown}")


def _closure_finding(connection: Connection) -> Finding | None:
    """Recompute the closure (in a savepoint that is rolled back) and count the pairs that differ from ``db_dbpath``."""
    types = installed_link_types(connection)
    if types is None:
        return None
    dialect = connection.dialect.name
    savepoint = connection.begin_nested()
    try:
        connection.exec_driver_sql("CREATE TEMPORARY TABLE tc_audit AS SELECT parent_id, child_id, path_count FROM db_dbpath")
        connection.exec_driver_sql("DELETE FROM db_dbpath")
        _backfill(connection, dialect, tuple(sorted(types)), None)
        columns = "parent_id, child_id, path_count"
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE tc_audit_diff AS SELECT * FROM (SELECT {columns} FROM tc_audit "
            f"EXCEPT SELECT {columns} FROM db_dbpath) AS d"
        )
        connection.exec_driver_sql(f"INSERT INTO tc_audit_diff SELECT {columns} FROM db_dbpath EXCEPT SELECT {columns} FROM tc_audit")
        count = int(connection.exec_driver_sql("SELECT count(*) FROM tc_audit_diff").scalar_one())
        examples = connection.exec_driver_sql(
            f"SELECT DISTINCT parent_id FROM tc_audit_diff ORDER BY parent_id LIMIT {EXAMPLES}"
        ).scalars().all()
    finally:
        savepoint.rollback()
    if dialect == "sqlite":  # SQLite's rollback leaves nothing; make sure no temporary table outlives the audit
        for name in ("tc_audit", "tc_audit_diff"):
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{name}")
    if not count:
        return None
    return Finding("closure_mismatch", count, [int(pk) for pk in examples],
                   "closure pairs (ancestor, descendant, path count) missing, extra or with a wrong path count; --fix rebuilds it")


def check_integrity(backend: SqlaBackend | None = None, *, fix: bool = False) -> list[Finding]:
    """Check the storage; an empty list means clean. ``fix`` rebuilds a closure table that does not match the links.

    Runs in the caller's transaction when there is one, otherwise in its own; the checks themselves change nothing.
    """
    backend = get_backend(backend)
    findings: list[Finding] = []
    with backend.transaction() as session:
        connection = session.connection()
        for kind, (description, query) in RULES.items():
            finding = _rule_finding(connection, kind, description, query)
            if finding is not None:
                findings.append(finding)
        for check in (_schema_finding, _closure_finding):
            finding = check(connection)
            if finding is not None:
                findings.append(finding)
    if fix and any(finding.kind == "closure_mismatch" for finding in findings):
        rebuild_tc(backend.get_session())
    return findings
