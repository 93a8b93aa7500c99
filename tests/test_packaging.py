"""The built distributions carry the migrations: a wheel installed elsewhere migrates a new database."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ITEMS = ("setup.cfg", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "aiida_sqla_plugin", "migrations")

MIGRATE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from importlib_metadata import entry_points
    import aiida_sqla_plugin
    from aiida_sqla_plugin import Profile
    from aiida_sqla_plugin.manager import SqlaBackendManager, migrations_directory

    profile = Profile("packaged", "sqlalchemy", {"url": "sqlite:///" + sys.argv[1]})
    manager = SqlaBackendManager(profile)
    applied = manager.migrate()
    manager.load_backend_environment(profile)
    (entry_point,) = entry_points(group="aiida.backends", name="sqlalchemy")
    print(json.dumps({
        "package": aiida_sqla_plugin.__file__,
        "migrations": migrations_directory(),
        "mako": (Path(migrations_directory()) / "script.py.mako").is_file(),
        "applied": applied,
        "database": manager.get_schema_version_database(),
        "code": manager.get_schema_version_code(),
        "entry_point": entry_point.value,
    }))
    """
)


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the files that make the distribution, so builds leave the working tree alone."""
    tree = tmp_path_factory.mktemp("source")
    for item in SOURCE_ITEMS:
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, tree / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(source, tree / item)
    return tree


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_wheel_installed_elsewhere_migrates_a_new_database(source_tree: Path, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, source_tree, cwd=tmp_path)
    (wheel,) = dist.glob("aiida_sqla_plugin-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points_txt = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
        assert "[aiida.backends]" in archive.read(entry_points_txt).decode()
    assert {
        "aiida_sqla_plugin/migrations/script.py.mako",
        "aiida_sqla_plugin/migrations/env.py",
        "aiida_sqla_plugin/migrations/versions/main_0001_core_provenance_tables.py",
        "aiida_sqla_plugin/migrations/versions/main_0002_closure_table.py",
        "aiida_sqla_plugin/migrations/versions/main_0003_creation_day.py",
        "aiida_sqla_plugin/migrations/versions/main_0004_closure_by_descendant.py",
    } <= names

    target = tmp_path / "target"
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", target, wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    output = run(sys.executable, "-c", MIGRATE_SCRIPT, tmp_path / "new.sqlite", cwd=elsewhere, env=env)
    report = json.loads(output.strip().splitlines()[-1])
    assert report["package"].startswith(str(target))
    assert report["migrations"].startswith(str(target)) and report["mako"] is True
    assert report["applied"] == [report["code"]] and report["database"] == report["code"] == "main_0004"
    assert report["entry_point"] == "aiida_sqla_plugin.hooks"


def test_sdist_carries_the_migrations(source_tree: Path, tmp_path: Path) -> None:
    dist = tmp_path / "sdist"
    run(sys.executable, "setup.py", "-q", "sdist", "-d", dist, cwd=source_tree)
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {
        "migrations/script.py.mako",
        "migrations/env.py",
        "migrations/versions/main_0001_core_provenance_tables.py",
        "migrations/versions/main_0002_closure_table.py",
        "migrations/versions/main_0003_creation_day.py",
        "migrations/versions/main_0004_closure_by_descendant.py",
        "setup.cfg",
        "README.md",
        "aiida_sqla_plugin/hooks.py",
    } <= names
