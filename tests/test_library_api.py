"""What the CLI does, driven without click: profile building, migrate-if-needed, storage info, masking, demo."""
from __future__ import annotations

from pathlib import Path

import pytest

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.config import ConfigFile, build_profile
from aiida_sqla_plugin.demo import run_demo
from aiida_sqla_plugin.exceptions import ConfigurationError, OptionConflict, SchemaAhead, SchemaBehind
from aiida_sqla_plugin.manager import SchemaState, SqlaBackendManager
from aiida_sqla_plugin.migration import migrate_if_needed, plan_migration
from aiida_sqla_plugin.profile import masked_storage_config
from aiida_sqla_plugin.reports import storage_info
from aiida_sqla_plugin.synthetic import build_graph


def test_build_profile_from_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIIDA_SQLA_DATA_DIR", str(tmp_path / "data"))
    default = build_profile("local")
    assert default.storage_config == {"url": f"sqlite:///{tmp_path / 'data' / 'local.sqlite'}"}
    assert (tmp_path / "data").is_dir()
    pg = build_profile("pg", engine="postgresql", host="h", port=5433, user="u", password="pw", database="db")
    assert pg.storage_config["database_name"] == "db" and pg.storage_config["database_port"] == 5433
    relative = build_profile("rel", engine="sqlite", database="rel.sqlite")
    assert Path(str(relative.storage_config["url"]).removeprefix("sqlite:///")).is_absolute()
    assert build_profile("u", url="sqlite://").storage_config == {"url": "sqlite://"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "sqlite://", "host": "h"}, "not both"),
        ({"engine": "postgresql"}, "needs --database"),
        ({"user": "u"}, "need --engine"),
        ({"engine": "oracle"}, "unknown engine"),
    ],
)
def test_build_profile_refuses_contradicting_parts(kwargs: dict, message: str) -> None:
    with pytest.raises(OptionConflict, match=message):
        build_profile("x", **kwargs)


def test_build_profile_checks_the_backend_is_installed() -> None:
    with pytest.raises(ConfigurationError, match="installed: sqlalchemy"):
        build_profile("x", url="sqlite://", storage_backend="nosuch")


def test_masked_storage_config_hides_passwords() -> None:
    url = aiida_sqla_plugin.Profile("p", "sqlalchemy", {"url": "postgresql+psycopg2://u:secret@h/db"})
    parts = aiida_sqla_plugin.Profile("q", "sqlalchemy", {"database_password": "secret", "database_name": "db"})
    assert "secret" not in str(masked_storage_config(url)) and "***" in masked_storage_config(url)["url"]
    assert masked_storage_config(parts) == {"database_password": "***", "database_name": "db"}


def test_migrate_if_needed_migrates_once(empty_backend: SqlaBackend) -> None:
    manager = SqlaBackendManager(empty_backend.profile)
    first = migrate_if_needed(manager)
    assert first.report.state == SchemaState.NOT_INITIALISED and first.applied == first.pending != []
    second = migrate_if_needed(manager)
    assert second.report.state == SchemaState.COMPATIBLE and second.applied == [] and not second.needed
    assert manager.schema_report().state == SchemaState.COMPATIBLE


def test_plan_migration_refuses_a_database_ahead(backend: SqlaBackend) -> None:
    with backend.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'future_9999'")
    with pytest.raises(SchemaAhead):
        plan_migration(SqlaBackendManager(backend.profile))


def test_storage_info_reports_counts_and_statistics(backend: SqlaBackend, dialect: str) -> None:
    graph = build_graph(backend, 40, seed=1)
    info = storage_info(backend)
    assert info["dialect"] == dialect and info["profile"] == backend.profile.name
    assert info["counts"]["nodes"] == len(graph.node_ids) and info["counts"]["links"] == graph.link_count
    assert info["creation_statistics"]["total"] == len(graph.node_ids)
    assert info["schema_revision"] == SqlaBackendManager(backend.profile).get_schema_version_code()
    assert info["database_size_bytes"] > 0


def test_storage_info_refuses_an_unmigrated_database(empty_backend: SqlaBackend) -> None:
    with pytest.raises(SchemaBehind, match="not initialised"):
        storage_info(empty_backend)


def test_run_demo_on_both_dialects(profile: aiida_sqla_plugin.Profile, tmp_path: Path) -> None:
    config_file = ConfigFile(tmp_path / "config.json")
    config_file.add_profile(aiida_sqla_plugin.Profile(profile.name, "sqlalchemy", dict(profile.storage_config)))
    notes: list[str] = []
    result = run_demo(config_file, profile.name, nodes=60, note=notes.append)
    assert any("Migrated" in note for note in notes)
    assert result.counts["nodes"] == len(result.graph.node_ids) == 60
    assert result.workflow is not None and result.workflow in result.doomed
    again = run_demo(config_file, profile.name, nodes=60)
    assert again.counts["nodes"] == 120
    data = again.as_dict()
    assert data["ancestors"]["count"] == len(again.ancestors) and data["stored"]["nodes"] == 60


def test_run_demo_creates_a_sqlite_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIIDA_SQLA_DATA_DIR", str(tmp_path / "data"))
    config_file = ConfigFile(tmp_path / "config.json")
    result = run_demo(config_file, "fresh", nodes=20)
    assert "fresh" in config_file.read().profiles and (tmp_path / "data" / "fresh.sqlite").is_file()
    assert result.counts["nodes"] == 20
