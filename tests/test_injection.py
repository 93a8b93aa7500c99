"""SQL injection: quotes, semicolons and comment markers through every way in reach SQL only as bound parameters.

Each hostile string goes through settings, ORM nodes, ``bulk_insert`` (COPY on PostgreSQL: its end marker and
escapes too), group labels and types, link labels and types, ancestry queries, profile names and CLI arguments.
It is stored and read back equal, or refused with :class:`ValidationError`; afterwards the database holds the same
tables as before and only the rows the test stored.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from aiida_sqla_plugin import Profile
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.config import CONFIG_DIR_ENV, DATA_DIR_ENV, ConfigFile
from aiida_sqla_plugin.exceptions import ValidationError
from aiida_sqla_plugin.graph import get_ancestors
from aiida_sqla_plugin.manager import SchemaState, SqlaBackendManager
from aiida_sqla_plugin.models import DbGroup, DbLink, DbNode, DbSetting, DbUser
from helpers import database_fingerprint, user_pk
from test_cli import invoke, one_error_line

HOSTILE = (
    "'; DROP TABLE db_dbnode; --",
    '"); DELETE FROM db_dbsetting; --',
    "x' OR '1'='1",
    "/* an open comment",
    "-- a trailing comment",
    "a;b;c",
    "\\.\n\\N\t\\",  # COPY's end-of-data and NULL markers, a tab and backslashes
    "$$; DROP TABLE db_dbuser; $$",
    "`back` [bracket] %s %(name)s ?",  # other quoting styles and every DBAPI paramstyle
)
DATA = "data.core.str.Str."
CALC = "process.calculation.calcfunction.CalcFunctionNode."


def url_of(backend: SqlaBackend) -> str:
    return backend.engine.url.render_as_string(hide_password=False)


def grown(before: dict[str, int], **added: int) -> dict[str, int]:
    return {table: count + added.get(table, 0) for table, count in before.items()}


def test_hostile_strings_round_trip_through_the_library(backend: SqlaBackend, user: DbUser) -> None:
    owner = user_pk(backend)
    before = database_fingerprint(url_of(backend))
    stored_settings = 0
    for index, hostile in enumerate(HOSTILE):
        key = f"k{index}{hostile}"
        if "." in key:
            with pytest.raises(ValidationError, match="must not contain '.'"):
                backend.settings.set(key, hostile)
        else:
            backend.settings.set(key, {hostile: hostile}, description=hostile)
            assert backend.settings.get(key).value == {hostile: hostile}
            stored_settings += 1
        with backend.transaction() as session:
            node = DbNode(node_type=CALC, user_id=owner, label=hostile, description=hostile,
                          attributes={hostile: hostile}, extras={hostile: [hostile]})
            session.add(node)
        orm_pk = node.id
        [bulk_pk] = backend.bulk_insert(DbNode, [{"node_type": DATA, "user_id": owner, "label": hostile,
                                                  "attributes": {hostile: hostile}}])
        backend.bulk_insert(DbGroup, [{"label": hostile, "type_string": hostile, "user_id": owner, "description": hostile}])
        backend.bulk_insert(DbLink, [{"input_id": orm_pk, "output_id": bulk_pk, "type": "create", "label": hostile}])
        with pytest.raises(ValidationError, match="unknown link type"):
            get_ancestors([bulk_pk], link_types=[hostile])
        with backend.engine.connect() as connection:
            rows = connection.execute(select(DbNode.label, DbNode.description, DbNode.attributes, DbNode.extras)
                                      .where(DbNode.id.in_([orm_pk, bulk_pk])).order_by(DbNode.id)).all()
            group = connection.execute(select(DbGroup.label, DbGroup.type_string).where(DbGroup.label == hostile)).one()
            link = connection.execute(select(DbLink.label).where(DbLink.output_id == bulk_pk)).scalar_one()
        assert rows[0] == (hostile, hostile, {hostile: hostile}, {hostile: [hostile]})
        assert rows[1][0] == hostile and rows[1][2] == {hostile: hostile}
        assert tuple(group) == (hostile, hostile) and link == hostile
        assert get_ancestors([bulk_pk], link_types=["create"]) == {orm_pk}
    n = len(HOSTILE)
    assert database_fingerprint(url_of(backend)) == grown(
        before, db_dbnode=2 * n, db_dbgroup=n, db_dblink=n, db_dbsetting=stored_settings,
        db_dbpath=database_fingerprint(url_of(backend))["db_dbpath"] - before["db_dbpath"],  # closure rows, if installed
    )


def test_hostile_link_type_is_refused_before_anything_is_written(backend: SqlaBackend, user: DbUser) -> None:
    owner = user_pk(backend)
    pks = backend.bulk_insert(DbNode, [{"node_type": DATA, "user_id": owner}] * 2)
    before = database_fingerprint(url_of(backend))
    for hostile in HOSTILE:  # a link type is one of LINK_TYPES: no hostile text reaches SQL as a type at all
        with pytest.raises(ValidationError, match="link type|type"):
            backend.bulk_insert(DbLink, [{"input_id": pks[0], "output_id": pks[1], "type": hostile, "label": "x"}])
    assert database_fingerprint(url_of(backend)) == before


def test_hostile_profile_names_are_only_text(backend: SqlaBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    before = database_fingerprint(url_of(backend))
    for hostile in HOSTILE:
        report = SqlaBackendManager(Profile(hostile, "sqlalchemy", {"url": url_of(backend)})).schema_report()
        assert report.state == SchemaState.COMPATIBLE and repr(hostile) in report.message
        with pytest.raises(ValidationError, match="invalid profile name"):
            ConfigFile().add_profile(Profile(hostile, "sqlalchemy", {"url": url_of(backend)}))
    assert database_fingerprint(url_of(backend)) == before
    assert not ConfigFile().path.exists()


def test_hostile_cli_arguments(backend: SqlaBackend, user: DbUser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    ConfigFile().add_profile(Profile("inj", "sqlalchemy", {"url": url_of(backend)}))
    [pk] = backend.bulk_insert(DbNode, [{"node_type": DATA, "user_id": user_pk(backend)}])
    before = database_fingerprint(url_of(backend))
    stored = 0
    for index, hostile in enumerate(HOSTILE):
        assert "invalid profile name" in one_error_line(invoke("profile", "create", "--", hostile, code=1).stderr)
        assert repr(hostile) in one_error_line(invoke(f"--profile={hostile}", "storage", "version", code=1).stderr)
        key = f"k{index}{hostile}".replace(".", "_")
        invoke("setting", "set", f"--description={hostile}", "--", key, json.dumps(hostile))
        assert json.loads(invoke("setting", "get", "--", key).stdout) == hostile
        stored += 1
        assert "unknown link type" in one_error_line(
            invoke("graph", "ancestors", f"--link-types={hostile}", str(pk), code=1).stderr)
        invoke("node", "delete", "--force", "--", hostile, code=2)  # not a pk: click refuses it before the library runs
    assert database_fingerprint(url_of(backend)) == grown(before, db_dbsetting=stored)
    with backend.engine.connect() as connection:
        assert set(connection.execute(select(DbSetting.key)).scalars()) >= {f"k{i}{h}".replace(".", "_") for i, h in enumerate(HOSTILE)}
    assert list(ConfigFile().read().profiles) == ["inj"]
