"""Core provenance tables: users, computers, auth infos, nodes, links, groups, comments, logs, settings.

Revision ID: main_0001
Revises:
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aiida_sqla_plugin.models import JsonType as JSON  # JSONB on PostgreSQL, TEXT on SQLite

revision = "main_0001"
down_revision = None
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def _fk(column: str, table: str, ondelete: str | None = None) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{table}.id"], ondelete=ondelete, deferrable=True, initially="DEFERRED"
    )


def _indexes(table: str, *columns: str) -> None:
    for column in columns:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column])


def upgrade() -> None:
    op.create_table(
        "db_dbuser",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("first_name", sa.String(254), nullable=False),
        sa.Column("last_name", sa.String(254), nullable=False),
        sa.Column("institution", sa.String(254), nullable=False),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "db_dbcomputer",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uuid", sa.Uuid(), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("scheduler_type", sa.String(255), nullable=False),
        sa.Column("transport_type", sa.String(255), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.UniqueConstraint("uuid"),
        sa.UniqueConstraint("label"),
    )
    op.create_table(
        "db_dbauthinfo",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("aiidauser_id", sa.Integer(), nullable=False),
        sa.Column("dbcomputer_id", sa.Integer(), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("auth_params", JSON, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _fk("aiidauser_id", "db_dbuser", "CASCADE"),
        _fk("dbcomputer_id", "db_dbcomputer", "CASCADE"),
        sa.UniqueConstraint("aiidauser_id", "dbcomputer_id"),
    )
    _indexes("db_dbauthinfo", "aiidauser_id", "dbcomputer_id")
    op.create_table(
        "db_dbnode",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uuid", sa.Uuid(), nullable=False),
        sa.Column("node_type", sa.String(255), nullable=False),
        sa.Column("process_type", sa.String(255), nullable=True),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("ctime", TIME, nullable=False),
        sa.Column("mtime", TIME, nullable=False),
        sa.Column("attributes", JSON, nullable=True),
        sa.Column("extras", JSON, nullable=True),
        sa.Column("repository_metadata", JSON, nullable=False),
        sa.Column("dbcomputer_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        _fk("dbcomputer_id", "db_dbcomputer", "RESTRICT"),
        _fk("user_id", "db_dbuser", "RESTRICT"),
        sa.UniqueConstraint("uuid"),
    )
    _indexes("db_dbnode", "node_type", "process_type", "label", "ctime", "mtime", "dbcomputer_id", "user_id")
    op.create_table(
        "db_dblink",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("input_id", sa.Integer(), nullable=False),
        sa.Column("output_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        _fk("input_id", "db_dbnode"),
        _fk("output_id", "db_dbnode", "CASCADE"),
    )
    _indexes("db_dblink", "input_id", "output_id", "label", "type")
    op.create_table(
        "db_dbgroup",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uuid", sa.Uuid(), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("type_string", sa.String(255), nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("extras", JSON, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        _fk("user_id", "db_dbuser", "CASCADE"),
        sa.UniqueConstraint("uuid"),
        sa.UniqueConstraint("label", "type_string"),
    )
    _indexes("db_dbgroup", "label", "type_string", "user_id")
    op.create_table(
        "db_dbgroup_dbnodes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dbnode_id", sa.Integer(), nullable=False),
        sa.Column("dbgroup_id", sa.Integer(), nullable=False),
        _fk("dbnode_id", "db_dbnode"),
        _fk("dbgroup_id", "db_dbgroup"),
        sa.UniqueConstraint("dbgroup_id", "dbnode_id"),
    )
    _indexes("db_dbgroup_dbnodes", "dbnode_id", "dbgroup_id")
    op.create_table(
        "db_dbcomment",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uuid", sa.Uuid(), nullable=False),
        sa.Column("dbnode_id", sa.Integer(), nullable=False),
        sa.Column("ctime", TIME, nullable=False),
        sa.Column("mtime", TIME, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        _fk("dbnode_id", "db_dbnode", "CASCADE"),
        _fk("user_id", "db_dbuser", "CASCADE"),
        sa.UniqueConstraint("uuid"),
    )
    _indexes("db_dbcomment", "dbnode_id", "user_id")
    op.create_table(
        "db_dblog",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uuid", sa.Uuid(), nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("loggername", sa.String(255), nullable=False),
        sa.Column("levelname", sa.String(50), nullable=False),
        sa.Column("dbnode_id", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        _fk("dbnode_id", "db_dbnode", "CASCADE"),
        sa.UniqueConstraint("uuid"),
    )
    _indexes("db_dblog", "loggername", "levelname", "dbnode_id")
    op.create_table(
        "db_dbsetting",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("val", JSON, nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.UniqueConstraint("key"),
    )


def downgrade() -> None:
    for table in (
        "db_dbsetting",
        "db_dblog",
        "db_dbcomment",
        "db_dbgroup_dbnodes",
        "db_dbgroup",
        "db_dblink",
        "db_dbnode",
        "db_dbauthinfo",
        "db_dbcomputer",
        "db_dbuser",
    ):
        op.drop_table(table)
