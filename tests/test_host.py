"""The plugin as a host sees it: entry-point discovery, pluggy registration, every hook, backend swapping."""
from __future__ import annotations

import inspect
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from importlib_metadata import entry_points
from sqlalchemy import text
from sqlalchemy.orm import scoped_session

import aiida_sqla_plugin
from aiida_sqla_plugin import hooks, hookspecs
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.settings import SqlaSettingsManager
from aiida_sqla_plugin.queries import SqlaQueryManager

import host_stub
from host_stub import Host, HostProfile, UnknownBackendError

FAKE_MODULE = "fake_storage_backend_plugin"
#: For tests that only need a profile's configuration, not its database: run them once.
DATABASE_INDEPENDENT = pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
FAKE_PLUGIN_SOURCE = '''
"""A second storage backend, installed only for the tests."""
import os

from aiida_sqla_plugin.hookspecs import hookimpl

FORKED_CHILDREN = []


class FakeBackend:
    def __init__(self, profile):
        self.profile = profile


@hookimpl
def aiida_get_backend(profile):
    return FakeBackend(profile) if profile.storage_backend == "fake" else None


@hookimpl
def aiida_after_fork_in_child():
    FORKED_CHILDREN.append(os.getpid())
'''


@pytest.fixture
def fake_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Install a package declaring entry point ``fake`` in ``aiida.backends`` (a dist-info on ``sys.path``)."""
    site = tmp_path / "site"
    dist_info = site / "fake_storage_backend-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-storage-backend\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{hookspecs.ENTRY_POINT_GROUP}]\nfake = {FAKE_MODULE}\n")
    (site / f"{FAKE_MODULE}.py").write_text(textwrap.dedent(FAKE_PLUGIN_SOURCE))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, FAKE_MODULE, raising=False)
    yield "fake"
    sys.modules.pop(FAKE_MODULE, None)


def host_config(profile: aiida_sqla_plugin.Profile, **extra_profiles: dict[str, Any]) -> dict[str, Any]:
    profiles = {profile.name: {"storage_backend": "sqlalchemy", "storage_config": dict(profile.storage_config)}}
    profiles.update(extra_profiles)
    return {"default_profile": profile.name, "profiles": profiles}


@pytest.fixture
def host(profile: aiida_sqla_plugin.Profile) -> Host:
    """A host configured with the test's profile, its backend loaded (the database is not migrated)."""
    host = Host(host_config(profile))
    host.load_profile()
    return host


@pytest.fixture
def migrated_host(host: Host) -> Host:
    host.pm.hook.aiida_get_backend_manager(profile=host.profile()).migrate()
    return host


# -- discovery and registration -------------------------------------------------------------------------


def test_entry_point_is_declared_in_the_installed_metadata() -> None:
    (entry_point,) = entry_points(group=hookspecs.ENTRY_POINT_GROUP, name="sqlalchemy")
    assert entry_point.value == "aiida_sqla_plugin.hooks"
    assert entry_point.load() is hooks
    assert hooks.BACKEND_NAME == "sqlalchemy"


@DATABASE_INDEPENDENT
def test_host_loads_only_the_named_entry_point(fake_backend: str, host: Host) -> None:
    assert set(host_stub.installed_backends()) >= {"sqlalchemy", "fake"}
    assert host.loaded_entry_points == ["sqlalchemy"]
    assert host.pm.get_plugins() == {hooks}
    assert FAKE_MODULE not in sys.modules  # the other installed backend was never imported


def test_markers_and_project_name() -> None:
    assert hookspecs.PROJECT_NAME == "aiida"
    assert hookspecs.ENTRY_POINT_GROUP == "aiida.backends"
    assert isinstance(hookspecs.hookspec, pluggy.HookspecMarker)
    assert isinstance(hookspecs.hookimpl, pluggy.HookimplMarker)
    assert hookspecs.hookspec.project_name == hookspecs.hookimpl.project_name == "aiida"


def test_firstresult_on_every_hook_but_the_fork_one() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in spec_names():
        caller = getattr(pm.hook, name)
        assert caller.spec is not None
        assert caller.spec.opts["firstresult"] is (name != "aiida_after_fork_in_child"), name


def test_check_pending_rejects_a_plugin_with_an_unknown_hook() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)

    class Stray:
        @hookspecs.hookimpl
        def aiida_no_such_hook(self) -> None:
            """Not part of the contract."""

    pm.register(Stray())
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


def test_host_reads_profiles_from_json(profile: aiida_sqla_plugin.Profile, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(host_config(profile)))
    host = Host.from_json(path)
    loaded = host.load_profile()
    assert loaded == HostProfile(profile.name, "sqlalchemy", dict(profile.storage_config))
    backend = host.pm.hook.aiida_get_backend(profile=loaded)
    assert isinstance(backend, SqlaBackend)
    assert aiida_sqla_plugin.get_current_profile() is loaded  # any object with the three attributes will do


@DATABASE_INDEPENDENT
def test_unknown_backend_lists_the_installed_ones(fake_backend: str, profile: aiida_sqla_plugin.Profile) -> None:
    host = Host(host_config(profile, lost={"storage_backend": "nosuchbackend", "storage_config": {}}))
    with pytest.raises(UnknownBackendError, match=r"'nosuchbackend'.*installed backends: .*fake.*sqlalchemy"):
        host.load_profile("lost")
    assert host.pm.get_plugins() == set()


@DATABASE_INDEPENDENT
def test_host_swaps_backends(fake_backend: str, profile: aiida_sqla_plugin.Profile) -> None:
    host = Host(host_config(profile, other={"storage_backend": "fake", "storage_config": {"anything": 1}}))
    assert isinstance(host.get_backend(), SqlaBackend)
    assert host.pm.get_plugins() == {hooks}

    other = host.get_backend("other")
    assert type(other).__name__ == "FakeBackend" and other.profile.name == "other"
    assert host.pm.get_plugins() == {sys.modules[FAKE_MODULE]}
    assert host.pm.hook.aiida_get_backend_manager(profile=host.profile("other")) is None  # not implemented there

    assert isinstance(host.get_backend(), SqlaBackend)
    assert host.pm.get_plugins() == {hooks}
    assert host.loaded_entry_points == ["sqlalchemy", "fake", "sqlalchemy"]


@DATABASE_INDEPENDENT
def test_hooks_answer_only_for_their_backend(fake_backend: str, profile: aiida_sqla_plugin.Profile) -> None:
    """With both plugins registered, each profile gets the backend its ``storage_backend`` names."""
    host = Host(host_config(profile, other={"storage_backend": "fake"}))
    host.use_backend("sqlalchemy")
    host.pm.register(host_stub.installed_backends()["fake"].load(), name="fake")
    host.pm.check_pending()
    assert isinstance(host.pm.hook.aiida_get_backend(profile=host.profile()), SqlaBackend)
    assert type(host.pm.hook.aiida_get_backend(profile=host.profile("other"))).__name__ == "FakeBackend"
    assert host.pm.hook.aiida_get_session_factory(profile=host.profile("other")) is None
    assert host.pm.hook.aiida_get_settings_manager(profile=host.profile("other")) is None


@DATABASE_INDEPENDENT
def test_fork_callback_is_registered_once_per_process(profile: aiida_sqla_plugin.Profile) -> None:
    for _ in range(3):
        Host(host_config(profile)).load_profile()
    assert host_stub.fork_callback_registrations == 1


# -- every hook, through the host ------------------------------------------------------------------------


def spec_names() -> list[str]:
    return sorted(name for name, function in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("aiida_"))


def test_every_hookspec_is_implemented() -> None:
    implemented = {name for name, function in inspect.getmembers(hooks, inspect.isfunction) if hasattr(function, "aiida_impl")}
    assert implemented == set(spec_names())


def test_every_hookspec_has_a_test() -> None:
    tests = {name for name in globals() if name.startswith("test_hook_")}
    assert {f"test_hook_{name}" for name in spec_names()} <= tests


def test_hook_aiida_get_backend(migrated_host: Host) -> None:
    backend = migrated_host.pm.hook.aiida_get_backend(profile=migrated_host.profile())
    assert isinstance(backend, SqlaBackend)
    assert backend.profile.name == migrated_host.profile().name
    with backend.transaction() as session:
        assert session.scalar(text("SELECT 1")) == 1


def test_hook_aiida_get_session_factory(host: Host) -> None:
    factory = host.pm.hook.aiida_get_session_factory(profile=host.profile())
    assert isinstance(factory, scoped_session)
    assert factory() is factory()
    assert factory().scalar(text("SELECT 1")) == 1


def test_hook_aiida_get_backend_manager(host: Host) -> None:
    manager = host.pm.hook.aiida_get_backend_manager(profile=host.profile())
    assert isinstance(manager, SqlaBackendManager)
    assert manager.get_schema_version_database() is None
    manager.migrate()
    assert manager.get_schema_version_database() == manager.get_schema_version_code()


def test_hook_aiida_get_settings_manager(migrated_host: Host) -> None:
    settings = migrated_host.pm.hook.aiida_get_settings_manager(profile=migrated_host.profile())
    assert isinstance(settings, SqlaSettingsManager)
    settings.set("through_the_host", {"ok": True})
    assert settings.get("through_the_host").value == {"ok": True}


def test_hook_aiida_get_query_manager(migrated_host: Host) -> None:
    backend = migrated_host.get_backend()
    manager = migrated_host.pm.hook.aiida_get_query_manager(backend=backend)
    assert isinstance(manager, SqlaQueryManager)
    assert manager.get_creation_statistics()["total"] == 0
    assert migrated_host.pm.hook.aiida_get_query_manager(backend=object()) is None


def test_hook_aiida_after_fork_in_child(migrated_host: Host) -> None:
    """The host's fork callback runs the hook in a real child, which then gets its own registry and connection."""
    backend = migrated_host.get_backend()
    parent_registry = backend.session_factory
    parent_session = backend.get_session()
    parent_session.scalar(text("SELECT 1"))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        ok = False
        try:
            ok = backend.session_factory is not parent_registry and backend.get_session() is not parent_session
            ok = ok and backend.get_session().scalar(text("SELECT 1")) == 1
        finally:  # the child must never return into pytest, whatever happens
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while not (waited := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish within 60 s")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(waited[1]) == 0
    assert backend.session_factory is parent_registry
    assert parent_session.scalar(text("SELECT 2")) == 2  # the parent's session and connection are untouched
