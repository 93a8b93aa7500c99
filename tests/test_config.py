"""The profile config file: locations, profile operations, atomic and concurrent writes."""
from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from aiida_sqla_plugin import Profile
from aiida_sqla_plugin.config import (
    CONFIG_DIR_ENV,
    DATA_DIR_ENV,
    ConfigFile,
    config_dir,
    data_dir,
    default_sqlite_path,
)
from aiida_sqla_plugin.exceptions import ConfigurationError, NotExistent, ValidationError


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConfigFile:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    return ConfigFile()


def _profile(name: str, url: str = "sqlite:////tmp/x.sqlite") -> Profile:
    return Profile(name, "sqlalchemy", {"url": url})


def test_directories_follow_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "c"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "d"))
    assert config_dir() == tmp_path / "c"
    assert ConfigFile().path == tmp_path / "c" / "config.json"
    assert data_dir() == tmp_path / "d"
    assert default_sqlite_path("work") == tmp_path / "d" / "work.sqlite"


def test_default_directories_are_the_platform_user_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert config_dir() == Path(platformdirs.user_config_dir("aiida-sqla", appauthor=False))
    assert data_dir() == Path(platformdirs.user_data_dir("aiida-sqla", appauthor=False))


def test_missing_file_is_an_empty_configuration(config_file: ConfigFile) -> None:
    config = config_file.read()
    assert config.profiles == {} and config.default_profile is None
    with pytest.raises(NotExistent, match="no profile is configured"):
        config_file.get_profile()
    assert not config_file.path.exists()


def test_profile_operations_round_trip(config_file: ConfigFile) -> None:
    config_file.add_profile(_profile("first"))
    config_file.add_profile(Profile("second", "sqlalchemy", {"database_engine": "postgresql_psycopg2", "database_name": "db"}))
    assert config_file.get_profile() == _profile("first")  # the first profile becomes the default
    assert config_file.get_profile("second").storage_config["database_name"] == "db"

    config_file.set_default("second")
    assert config_file.read().default_profile == "second"
    on_disk = json.loads(config_file.path.read_text())
    assert on_disk["default_profile"] == "second"
    assert set(on_disk["profiles"]) == {"first", "second"}

    assert config_file.remove_profile("second").name == "second"
    config = config_file.read()
    assert set(config.profiles) == {"first"} and config.default_profile is None
    with pytest.raises(NotExistent, match="no default profile is set.*first"):
        config_file.get_profile()


def test_add_profile_with_default_flag(config_file: ConfigFile) -> None:
    config_file.add_profile(_profile("a"))
    config_file.add_profile(_profile("b"), make_default=True)
    assert config_file.read().default_profile == "b"


def test_errors_name_the_fix(config_file: ConfigFile) -> None:
    config_file.add_profile(_profile("alpha"))
    config_file.add_profile(_profile("beta"))
    with pytest.raises(NotExistent, match=r"unknown profile 'gamma' \(known profiles: alpha, beta\)"):
        config_file.get_profile("gamma")
    with pytest.raises(NotExistent, match="known profiles: alpha, beta"):
        config_file.set_default("gamma")
    with pytest.raises(ValidationError, match="already exists"):
        config_file.add_profile(_profile("alpha"))
    for bad in ("", "has space", "../escape", "-dash"):
        with pytest.raises(ValidationError, match="invalid profile name"):
            config_file.add_profile(_profile(bad))
    assert set(config_file.read().profiles) == {"alpha", "beta"}


def test_malformed_file_is_reported_with_its_path(config_file: ConfigFile) -> None:
    config_file.path.parent.mkdir(parents=True)
    config_file.path.write_text("{not json")
    with pytest.raises(ConfigurationError, match=str(config_file.path)):
        config_file.read()
    config_file.path.write_text(json.dumps({"version": 99, "profiles": {}}))
    with pytest.raises(ConfigurationError, match="version 99"):
        config_file.read()


def test_writes_are_atomic_private_and_leave_no_temporary_files(config_file: ConfigFile) -> None:
    config_file.add_profile(Profile("secret", "sqlalchemy", {"url": "postgresql+psycopg2://u:pw@h/db"}))
    mode = stat.S_IMODE(os.stat(config_file.path).st_mode)
    assert mode == 0o600
    assert sorted(p.name for p in config_file.path.parent.iterdir()) == ["config.json", "config.json.lock"]


def test_failed_change_leaves_the_file_unchanged(config_file: ConfigFile) -> None:
    config_file.add_profile(_profile("kept"))
    before = config_file.path.read_bytes()

    def change(config):  # noqa: ANN001, ANN202
        config.profiles.clear()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        config_file.update(change)
    assert config_file.path.read_bytes() == before


def _add_many(path: str, prefix: str, count: int) -> None:
    config = ConfigFile(path)
    for index in range(count):
        config.add_profile(Profile(f"{prefix}-{index}", "sqlalchemy", {"url": f"sqlite:////tmp/{prefix}-{index}.sqlite"}))


def _read_many(path: str, count: int, failures: multiprocessing.Queue) -> None:
    config = ConfigFile(path)
    for _ in range(count):
        try:
            config.read()
        except Exception as error:  # noqa: BLE001 - reported to the parent
            failures.put(repr(error))


def test_concurrent_writers_keep_every_change_and_readers_never_see_half_a_file(config_file: ConfigFile) -> None:
    context = multiprocessing.get_context("fork")
    path = str(config_file.path)
    per_process, writers = 25, 4
    failures: multiprocessing.Queue = context.Queue()
    processes = [context.Process(target=_add_many, args=(path, f"w{n}", per_process)) for n in range(writers)]
    processes += [context.Process(target=_read_many, args=(path, 200, failures)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    config = config_file.read()
    assert len(config.profiles) == per_process * writers
    assert config.default_profile is not None
    assert failures.empty()


def test_prepare_sqlite_storage_makes_paths_absolute_and_creates_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiida_sqla_plugin.config import prepare_sqlite_storage

    monkeypatch.chdir(tmp_path)
    prepared = prepare_sqlite_storage(_profile("rel", "sqlite:///sub/dir/x.sqlite"))
    assert prepared.storage_config == {"url": f"sqlite:///{tmp_path / 'sub' / 'dir' / 'x.sqlite'}"}
    assert (tmp_path / "sub" / "dir").is_dir()
    aiida_keys = Profile("k", "sqlalchemy", {"database_engine": "sqlite", "database_name": "k.sqlite"})
    assert prepare_sqlite_storage(aiida_keys).storage_config["database_name"] == str(tmp_path / "k.sqlite")
    postgres = _profile("pg", "postgresql+psycopg2://u@h/db")
    assert prepare_sqlite_storage(postgres) is postgres
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigurationError, match="cannot create the directory"):
        prepare_sqlite_storage(_profile("bad", f"sqlite:///{tmp_path / 'file' / 'x.sqlite'}"))
