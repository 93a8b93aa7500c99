"""The settings manager: exact JSON round trips, validation, missing entries and concurrent upserts."""
from __future__ import annotations

import datetime
import multiprocessing
import threading
from typing import Any

import pytest
from sqlalchemy import func, select

from aiida_sqla_plugin import get_engine
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import NotExistent, ValidationError
from aiida_sqla_plugin.settings import Setting, SqlaSettingsManager
from aiida_sqla_plugin.models import DbSetting


@pytest.fixture
def settings(backend: SqlaBackend) -> SqlaSettingsManager:
    return backend.settings


def assert_identical(stored: Any, expected: Any) -> None:
    """Equal, with the same JSON types all the way down (an int is not a float, a list not a tuple)."""
    assert type(stored) is type(expected), (stored, expected)
    if isinstance(expected, dict):
        assert set(stored) == set(expected)
        for key in expected:
            assert_identical(stored[key], expected[key])
    elif isinstance(expected, list):
        assert len(stored) == len(expected)
        for left, right in zip(stored, expected):
            assert_identical(left, right)
    else:
        assert stored == expected


def setting_rows() -> int:
    with get_engine().connect() as connection:
        return connection.scalar(select(func.count()).select_from(DbSetting))


def test_set_get_delete(settings: SqlaSettingsManager) -> None:
    assert SqlaSettingsManager.table_name == "db_dbsetting"
    before = datetime.datetime.now(datetime.timezone.utc)
    settings.set("colour", "blue", "favourite colour")
    stored = settings.get("colour")
    assert isinstance(stored, Setting)
    assert (stored.key, stored.value, stored.description) == ("colour", "blue", "favourite colour")
    assert stored.time.tzinfo is not None and stored.time >= before - datetime.timedelta(seconds=1)
    settings.delete("colour")
    with pytest.raises(NotExistent, match="'colour'"):
        settings.get("colour")
    with pytest.raises(NotExistent, match="'colour'"):
        settings.delete("colour")


def test_update_keeps_description_when_none(settings: SqlaSettingsManager) -> None:
    settings.set("limit", 1, "how many")
    first = settings.get("limit")
    settings.set("limit", 2)
    second = settings.get("limit")
    assert (second.value, second.description) == (2, "how many")
    assert second.time >= first.time
    settings.set("limit", 3, "new words")
    assert settings.get("limit").description == "new words"
    settings.set("fresh", 0)
    assert settings.get("fresh").description == ""
    assert setting_rows() == 3  # schema_generation, limit, fresh


def test_missing_setting(settings: SqlaSettingsManager) -> None:
    with pytest.raises(NotExistent, match="no setting with key 'nothing'"):
        settings.get("nothing")


def test_missing_table(empty_backend: SqlaBackend) -> None:
    settings = empty_backend.settings
    for call in (settings.validate_table_existence, lambda: settings.get("k"), lambda: settings.set("k", 1), lambda: settings.delete("k")):
        with pytest.raises(NotExistent, match="'db_dbsetting' does not exist.*migrate"):
            call()


def test_validate_table_existence(settings: SqlaSettingsManager) -> None:
    settings.validate_table_existence()


def test_invalid_keys(settings: SqlaSettingsManager) -> None:
    for key, pattern in [("", "must not be empty"), (5, "must be a string"), (None, "must be a string"), ("a.b", "must not contain '.'")]:
        for call in (lambda: settings.get(key), lambda: settings.set(key, 1), lambda: settings.delete(key)):
            with pytest.raises(ValidationError, match=pattern):
                call()
    assert setting_rows() == 1


VALUES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "negative": -17,
    "big_int": 2**70,
    "tenth": 0.1,
    "third": 1 / 3,
    "negative_float": -2.5,
    "integral_float": 3.0,
    "tiny": 1e-300,
    "subnormal": 5e-324,
    "large_float": 1.5e20,
    "huge_float": -1e300,
    "max_float": 1.7976931348623157e308,
    "empty_string": "",
    "unicode": "héllo ✓ 日本語 🎉 \u2028 \\u0000 quote\" back\\slash\ttab",
    "empty_list": [],
    "empty_dict": {},
    "nested": {"a": [1, 2.5, {"b": None, "c": [True, "x"]}], "ü": {"deep": {"deeper": [[], {}]}}, "1": 1.0},
}


def test_values_round_trip_exactly(settings: SqlaSettingsManager) -> None:
    for name, value in VALUES.items():
        settings.set(name, value)
    for name, value in VALUES.items():
        assert_identical(settings.get(name).value, value)
    settings.set("all", VALUES)
    assert_identical(settings.get("all").value, VALUES)


def test_large_value_round_trips(settings: SqlaSettingsManager) -> None:
    value = {"rows": [{"id": i, "name": f"nöde-{i}", "weight": i / 7} for i in range(12_000)], "blob": "x" * 100_000}
    settings.set("large", value)
    assert_identical(settings.get("large").value, value)


NON_JSON: dict[str, Any] = {
    "object": object(),
    "nan": float("nan"),
    "inf": float("inf"),
    "set": {1, 2},
    "tuple": (1, 2),
    "int_key": {1: "int key"},
    "nul": "nul\x00byte",
    "nul_key": {"k\x00": 1},
    "bytes": b"bytes",
    "nested_inf": [1, float("-inf")],
}


def test_non_json_values_write_nothing(settings: SqlaSettingsManager) -> None:
    settings.set("kept", [1, 2])
    for name, value in NON_JSON.items():
        with pytest.raises(ValidationError, match="'new' is not storable JSON"):
            settings.set("new", value)
        with pytest.raises(ValidationError, match="'kept' is not storable JSON"):
            settings.set("kept", value)
        with pytest.raises(NotExistent):
            settings.get("new")
        assert settings.get("kept").value == [1, 2], name
    assert setting_rows() == 2


def _hammer(settings: SqlaSettingsManager, worker: int, errors: list[BaseException]) -> None:
    try:
        for round_ in range(15):
            settings.set("contended", {"worker": worker, "round": round_}, f"written by {worker}")
            settings.get("contended")
    except BaseException as error:  # noqa: BLE001 - reported by the test
        errors.append(error)


def test_many_threads_set_the_same_key(settings: SqlaSettingsManager) -> None:
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_hammer, args=(settings, worker, errors)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    final = settings.get("contended")
    assert final.value["round"] == 14 and final.description == f"written by {final.value['worker']}"
    assert setting_rows() == 2


def _hammer_in_process(settings: SqlaSettingsManager, worker: int) -> None:
    errors: list[BaseException] = []
    _hammer(settings, worker, errors)
    if errors:
        raise errors[0]


def test_several_processes_set_the_same_key(settings: SqlaSettingsManager) -> None:
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_hammer_in_process, args=(settings, worker)) for worker in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [process.exitcode for process in processes] == [0] * 4
    assert settings.get("contended").value["round"] == 14
    assert setting_rows() == 2
