"""Alembic migrations of the aiida-sqla-plugin schema (installed as ``aiida_sqla_plugin.migrations``)."""
