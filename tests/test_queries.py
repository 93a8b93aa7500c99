"""get_creation_statistics: totals, types, UTC days (whatever the session or process time zone), user filter."""
from __future__ import annotations

import datetime
import json
import random
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.bulk import bulk_insert
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.models import CREATION_DAY_DDL, DbNode, DbUser
from aiida_sqla_plugin.queries import SqlaQueryManager

INT = "data.core.int.Int."
CALC = "process.calculation.calcjob.CalcJobNode."
PLUS_TWO = datetime.timezone(datetime.timedelta(hours=2))
MINUS_FIVE = datetime.timezone(datetime.timedelta(hours=-5))
#: Session time zone of the PostgreSQL connections: far from UTC, so local-day bucketing would show.
SESSION_TIME_ZONE = "Pacific/Kiritimati"


@pytest.fixture
def tz_backend(database_url: URL, dialect: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqlaBackend]:
    """A migrated backend whose PostgreSQL sessions, and this process, run in time zones other than UTC."""
    config: dict = {"url": database_url.render_as_string(hide_password=False)}
    if dialect == "postgresql":
        config["engine_kwargs"] = {"connect_args": {"options": f"-c timezone={SESSION_TIME_ZONE}"}}
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    profile = aiida_sqla_plugin.Profile(f"tz-{dialect}", "sqlalchemy", config)
    aiida_sqla_plugin.reset_session(profile)
    SqlaBackendManager(profile).migrate()
    try:
        yield SqlaBackend(profile)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_empty_database(backend: SqlaBackend):
    assert SqlaQueryManager(backend).get_creation_statistics() == {
        "total": 0, "types": {}, "ctime_by_day": {}, "ctime_by_day_and_type": {}}


def test_utc_days_near_midnight_in_other_time_zones(tz_backend: SqlaBackend, dialect: str):
    backend = tz_backend
    if dialect == "postgresql":
        with backend.engine.connect() as connection:
            assert connection.execute(text("SHOW timezone")).scalar_one() == SESSION_TIME_ZONE
    (first, second) = bulk_insert(backend, DbUser, [{"email": "a@example.org"}, {"email": "b@example.org"}])
    times = [
        (datetime.datetime(2024, 3, 2, 1, 30, tzinfo=PLUS_TWO), first, INT),  # 2024-03-01 23:30 UTC
        (datetime.datetime(2024, 3, 1, 22, 0, tzinfo=MINUS_FIVE), first, INT),  # 2024-03-02 03:00 UTC
        (datetime.datetime(2024, 3, 2, 23, 59, 59, 999999, tzinfo=datetime.timezone.utc), second, CALC),
        (datetime.datetime(2024, 3, 3, 0, 0, tzinfo=datetime.timezone.utc), first, CALC),
        (datetime.datetime(2024, 3, 5, 23, 0, tzinfo=MINUS_FIVE), second, INT),  # 2024-03-06 04:00 UTC
    ]
    bulk_insert(backend, DbNode, [{"node_type": t, "user_id": u, "ctime": c, "mtime": c} for c, u, t in times[:3]])
    with backend.transaction() as session:  # the ORM path must bucket the same way
        session.add_all([DbNode(node_type=t, user_id=u, ctime=c, mtime=c) for c, u, t in times[3:]])

    manager = SqlaQueryManager(backend)
    assert manager.get_creation_statistics() == {
        "total": 5,
        "types": {INT: 3, CALC: 2},
        "ctime_by_day": {"2024-03-01": 1, "2024-03-02": 2, "2024-03-03": 1, "2024-03-06": 1},
        "ctime_by_day_and_type": {"2024-03-01": {INT: 1}, "2024-03-02": {CALC: 1, INT: 1}, "2024-03-03": {CALC: 1},
                                  "2024-03-06": {INT: 1}},
    }
    assert manager.get_creation_statistics(user_pk=first) == {
        "total": 3,
        "types": {INT: 2, CALC: 1},
        "ctime_by_day": {"2024-03-01": 1, "2024-03-02": 1, "2024-03-03": 1},
        "ctime_by_day_and_type": {"2024-03-01": {INT: 1}, "2024-03-02": {INT: 1}, "2024-03-03": {CALC: 1}},
    }
    assert manager.get_creation_statistics(user_pk=second) == {
        "total": 2,
        "types": {INT: 1, CALC: 1},
        "ctime_by_day": {"2024-03-02": 1, "2024-03-06": 1},
        "ctime_by_day_and_type": {"2024-03-02": {CALC: 1}, "2024-03-06": {INT: 1}},
    }
    assert manager.get_creation_statistics(user_pk=second + 100) == {
        "total": 0, "types": {}, "ctime_by_day": {}, "ctime_by_day_and_type": {}}


def test_days_are_ordered_and_match_the_synthetic_spread(backend: SqlaBackend):
    from aiida_sqla_plugin.synthetic import SYNTHETIC_EPOCH, build_graph

    graph = build_graph(backend, 240, seed=4, days=6)
    stats = backend.query_manager.get_creation_statistics(user_pk=graph.user_id)
    days = list(stats["ctime_by_day"])
    assert days == sorted(days) and len(days) == 6 and days[0] == SYNTHETIC_EPOCH.date().isoformat()
    assert stats["total"] == sum(stats["types"].values()) == sum(stats["ctime_by_day"].values()) == 240


ZONES = [datetime.timezone.utc, PLUS_TWO, MINUS_FIVE, datetime.timezone(datetime.timedelta(hours=13, minutes=45))]
TYPES = [INT, CALC, "data.core.float.Float.", "process.workflow.workchain.WorkChainNode.", "data.core.dict.Dict."]


def mixed_rows(users: list[int], count: int, seed: int) -> list[dict]:
    """``count`` nodes over 60 days, five types and the given users, their times given in four time zones."""
    generator = random.Random(seed)
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    rows = []
    for _ in range(count):
        ctime = (start + datetime.timedelta(seconds=generator.randrange(60 * 86400))).astimezone(generator.choice(ZONES))
        rows.append({"node_type": generator.choice(TYPES), "user_id": generator.choice(users), "ctime": ctime, "mtime": ctime})
    return rows


def recount(rows: list[dict], user_pk: int | None) -> dict:
    """The statistics counted in Python, days and types in the order the query returns them."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        if user_pk is None or row["user_id"] == user_pk:
            key = (row["ctime"].astimezone(datetime.timezone.utc).date().isoformat(), row["node_type"])
            counts[key] = counts.get(key, 0) + 1
    types: dict[str, int] = {}
    by_day: dict[str, int] = {}
    by_day_and_type: dict[str, dict[str, int]] = {}
    for (day, node_type), count in sorted(counts.items()):
        types[node_type] = types.get(node_type, 0) + count
        by_day[day] = by_day.get(day, 0) + count
        by_day_and_type.setdefault(day, {})[node_type] = count
    return {"total": sum(types.values()), "types": types, "ctime_by_day": by_day, "ctime_by_day_and_type": by_day_and_type}


def test_many_days_types_and_users_with_and_without_the_creation_day_schema(backend: SqlaBackend, dialect: str):
    users = bulk_insert(backend, DbUser, [{"email": f"u{number}@example.org"} for number in range(3)])
    rows = mixed_rows(users, 3000, seed=11)
    bulk_insert(backend, DbNode, rows)
    manager = SqlaQueryManager(backend)
    expected = {user: recount(rows, user) for user in (None, *users)}
    assert len(expected[None]["ctime_by_day"]) >= 59 and len(expected[None]["types"]) == 5
    with_schema = {user: manager.get_creation_statistics(user) for user in expected}
    assert with_schema == expected
    assert all(list(stats["ctime_by_day"]) == sorted(stats["ctime_by_day"]) for stats in with_schema.values())
    create, drop = CREATION_DAY_DDL[dialect]
    with backend.transaction() as session:
        session.execute(text(drop))
    assert {user: manager.get_creation_statistics(user) for user in expected} == expected
    with backend.transaction() as session:
        session.execute(text(create))


def test_the_statistics_query_uses_the_creation_day_schema(backend: SqlaBackend, dialect: str):
    users = bulk_insert(backend, DbUser, [{"email": f"u{number}@example.org"} for number in range(2)])
    rows = mixed_rows(users, 4000, seed=5)
    bulk_insert(backend, DbNode, rows)  # one call growing the table: bulk_insert analyses it on PostgreSQL
    groups = len({(day, node_type) for day, types in recount(rows, None)["ctime_by_day_and_type"].items() for node_type in types})
    for user in (None, users[0]):
        statement = SqlaQueryManager.statistics_statement(dialect, user)
        sql = str(statement.compile(dialect=backend.engine.dialect, compile_kwargs={"literal_binds": True}))
        with backend.engine.connect() as connection:
            if dialect == "sqlite":  # one ordered index scan, no sort of every row
                details = [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
                assert details == ["SCAN db_dbnode USING INDEX ix_db_dbnode_creation_day"], details
            else:  # the planner knows how few (day, type) groups there are (without the statistics: ~4000)
                (plan,) = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}").scalar_one()
                assert plan["Plan"]["Plan Rows"] <= 2 * groups, json.dumps(plan)
