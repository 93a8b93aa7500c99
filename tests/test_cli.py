"""The ``aiida-sqla`` command line, through click's runner and as the installed console script.

Every database test runs on SQLite and PostgreSQL (``database_url`` fixture); the config and data directories
are temporary (``AIIDA_SQLA_CONFIG_DIR``, ``AIIDA_SQLA_DATA_DIR``).
"""
from __future__ import annotations

import json
import os
import pty
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL

from aiida_sqla_plugin import Profile
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.cli import EXIT_CODES, cli
from aiida_sqla_plugin.config import CONFIG_DIR_ENV, DATA_DIR_ENV, ConfigFile
from aiida_sqla_plugin.models import DbComment, DbComputer, DbGroup, DbLink, DbLog, DbNode, DbSetting, DbUser
from helpers import id_set

DATA = "data.core.int.Int."
CALC = "process.calculation.calcjob.CalcJobNode."
WORK = "process.workflow.workchain.WorkChainNode."


def console_script() -> str:
    """The installed ``aiida-sqla`` next to this interpreter (else on PATH)."""
    candidate = Path(sys.executable).parent / "aiida-sqla"
    found = str(candidate) if candidate.exists() else shutil.which("aiida-sqla")
    assert found, "the aiida-sqla console script is not installed (pip install -e .)"
    return found


@pytest.fixture(autouse=True)
def cli_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Temporary config and data directories for every test."""
    config, data = tmp_path / "config", tmp_path / "data"
    monkeypatch.setenv(CONFIG_DIR_ENV, str(config))
    monkeypatch.setenv(DATA_DIR_ENV, str(data))
    return config, data


def invoke(*args: str, code: int = 0, input: str | None = None) -> Result:  # noqa: A002 - click's name
    """Run the CLI in-process and check its exit code."""
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == code, f"exit {result.exit_code} != {code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def run_script(*args: str, code: int = 0, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run the installed console script in a subprocess and check its exit code."""
    completed = subprocess.run(
        [console_script(), *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=os.environ.copy(),
        **kwargs,  # type: ignore[arg-type]
    )
    assert completed.returncode == code, (
        f"exit {completed.returncode} != {code}\nstdout: {completed.stdout}\nstderr: {completed.stderr}"
    )
    return completed


def one_error_line(stderr: str) -> str:
    """The single line of an error report on stderr (no traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def url_string(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@dataclass
class CliProfile:
    """A profile created through the CLI, with a library backend on the same database."""

    name: str
    url: str

    @property
    def profile(self) -> Profile:
        return Profile(self.name, "sqlalchemy", {"url": self.url})

    @property
    def backend(self) -> SqlaBackend:
        return SqlaBackend(self.profile)


@pytest.fixture
def new_profile(database_url: URL) -> CliProfile:
    """A profile 'p' on the test's empty database, created with ``profile create --url`` (not migrated)."""
    result = invoke("profile", "create", "p", "--url", url_string(database_url))
    assert "Created profile 'p'" in result.stdout
    return CliProfile("p", url_string(database_url))


@pytest.fixture
def migrated(new_profile: CliProfile) -> CliProfile:
    """``new_profile`` after ``storage migrate --force``."""
    invoke("storage", "migrate", "--force")
    return new_profile


@dataclass
class SmallGraph:
    user: int
    d1: int
    c1: int
    d2: int
    w1: int


def store_small_graph(backend: SqlaBackend) -> SmallGraph:
    """d1 -input_calc-> c1 -create-> d2; d1 -input_work-> w1 -call_calc-> c1; w1 -return-> d2; plus one of each extra."""
    with backend.transaction() as session:
        user = DbUser(email="cli@example.org")
        session.add(user)
        session.flush()
        nodes = {name: DbNode(node_type=kind, user_id=user.id, label=name)
                 for name, kind in (("d1", DATA), ("c1", CALC), ("d2", DATA), ("w1", WORK))}
        session.add_all(nodes.values())
        session.flush()
        ids = {name: node.id for name, node in nodes.items()}
        for source, target, link_type in (("d1", "c1", "input_calc"), ("c1", "d2", "create"), ("d1", "w1", "input_work"),
                                          ("w1", "c1", "call_calc"), ("w1", "d2", "return")):
            session.add(DbLink(input_id=ids[source], output_id=ids[target], label=f"{source}_{target}", type=link_type))
        session.add(DbComputer(label="localhost"))
        session.add(DbGroup(label="g", user_id=user.id))
        session.add(DbComment(dbnode_id=ids["d1"], user_id=user.id, content="hi"))
        session.add(DbLog(dbnode_id=ids["c1"], loggername="x", levelname="INFO"))
        user_id = user.id
    return SmallGraph(user_id, ids["d1"], ids["c1"], ids["d2"], ids["w1"])


# -- help and command tree -------------------------------------------------------------------------------


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


def test_every_command_has_help_with_an_example() -> None:
    paths = [path for path, _ in walk(cli)]
    assert len(paths) > 25
    for path in paths:
        result = invoke(*path, "--help")
        assert "Usage: " in result.stdout
        assert "Example" in result.stdout, f"'aiida-sqla {' '.join(path)} --help' has no example"
        assert "aiida-sqla" in result.stdout.split("Example", 1)[1]


def test_every_command_takes_the_profile_option() -> None:
    for path, command in walk(cli):
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert {"-p", "--profile"} <= options, path


def test_root_help_documents_exit_codes() -> None:
    result = invoke("--help")
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  {meaning}" in result.stdout


def test_usage_error_exit_code() -> None:
    assert "No such command" in invoke("frobnicate", code=2).stderr
    assert "Missing argument" in invoke("node", "delete", code=2).stderr


# -- profiles --------------------------------------------------------------------------------------------


def test_profile_create_without_url_uses_sqlite_in_the_data_directory(cli_dirs: tuple[Path, Path]) -> None:
    config_dir, data_dir = cli_dirs
    result = invoke("profile", "create", "local")
    assert "(default profile)" in result.stdout
    assert data_dir.is_dir()  # created for the database file
    listing = json.loads(invoke("profile", "list", "--json").stdout)
    assert listing["default_profile"] == "local"
    assert listing["config_file"] == str(config_dir / "config.json")
    assert listing["profiles"] == [{
        "name": "local", "storage_backend": "sqlalchemy", "default": True,
        "location": f"SQLite file {data_dir / 'local.sqlite'}",
    }]
    shown = json.loads(invoke("profile", "show", "--json").stdout)
    assert shown["storage_config"] == {"url": f"sqlite:///{data_dir / 'local.sqlite'}"}
    assert shown["default"] is True


def test_profile_lifecycle_and_errors(tmp_path: Path) -> None:
    invoke("profile", "create", "one", "--url", f"sqlite:///{tmp_path / 'one.sqlite'}")
    invoke("profile", "create", "two", "--engine", "postgresql", "--host", "db.example.org", "--port", "5433",
           "--user", "aiida", "--password", "p@ss:word", "--database", "aiida")
    shown = json.loads(invoke("profile", "show", "two", "--json").stdout)
    assert shown["storage_config"]["database_password"] == "***"
    assert shown["location"] == "PostgreSQL database 'aiida' on db.example.org:5433 as aiida"
    assert json.loads(ConfigFile().path.read_text())["profiles"]["two"]["storage_config"]["database_password"] == "p@ss:word"

    text_list = invoke("profile", "list").stdout.splitlines()
    assert text_list[0].startswith("* one") and text_list[1].startswith("  two")
    invoke("profile", "set-default", "two")
    assert json.loads(invoke("profile", "list", "--json").stdout)["default_profile"] == "two"
    assert json.loads(invoke("-p", "one", "profile", "show", "--json").stdout)["name"] == "one"

    error = one_error_line(invoke("profile", "set-default", "three", code=1).stderr)
    assert "unknown profile 'three' (known profiles: one, two)" in error
    assert "already exists" in invoke("profile", "create", "one", code=1).stderr
    assert "invalid profile name" in invoke("profile", "create", "a b", code=1).stderr
    assert "not both" in invoke("profile", "create", "x", "--url", "sqlite://", "--host", "h", code=2).stderr
    assert "--database" in invoke("profile", "create", "x", "--engine", "postgresql", code=2).stderr
    assert "not supported" in invoke("profile", "create", "x", "--url", "mysql://h/db", code=7).stderr

    # Refusing the confirmation keeps the profile; --yes deletes the entry but keeps the database file.
    invoke("-p", "one", "storage", "migrate", "--force")
    invoke("profile", "delete", "one", input="n\n", code=1)
    assert "one" in ConfigFile().read().profiles
    invoke("profile", "delete", "one", "--yes")
    assert "one" not in ConfigFile().read().profiles
    assert (tmp_path / "one.sqlite").exists()


def test_profile_delete_drop_database(new_profile: CliProfile, dialect: str) -> None:
    invoke("storage", "migrate", "--force")
    result = invoke("profile", "delete", "p", "--yes", "--drop-database")
    assert "Dropped the" in result.stdout
    assert ConfigFile().read().profiles == {}
    if dialect == "sqlite":
        assert not Path(new_profile.url.removeprefix("sqlite:///")).exists()
    else:
        from sqlalchemy import create_engine  # noqa: PLC0415
        from sqlalchemy.exc import OperationalError  # noqa: PLC0415

        engine = create_engine(new_profile.url)
        try:
            with pytest.raises(OperationalError, match="does not exist"), engine.connect():
                pass
        finally:
            engine.dispose()


def test_no_profile_at_all_names_the_fix() -> None:
    error = one_error_line(invoke("storage", "info", code=1).stderr)
    assert "no profile is configured" in error and "aiida-sqla profile create" in error


# -- storage lifecycle -----------------------------------------------------------------------------------


def test_version_migrate_and_info(new_profile: CliProfile, dialect: str) -> None:
    version = json.loads(invoke("storage", "version", "--json", code=4).stdout)
    assert version["state"] == "not_initialised" and version["database_revision"] is None and version["exit_code"] == 4
    head = version["code_revision"]
    error = one_error_line(invoke("storage", "info", code=4).stderr)
    assert "not initialised" in error and "aiida-sqla -p p storage migrate" in error
    one_error_line(invoke("setting", "list", code=4).stderr)

    invoke("storage", "migrate", input="n\n", code=1)  # refused: nothing happens
    assert json.loads(invoke("storage", "version", "--json", code=4).stdout)["state"] == "not_initialised"

    migrated = invoke("storage", "migrate", input="y\n")
    assert f"Applied empty -> {head}" in migrated.stdout
    version = json.loads(invoke("storage", "version", "--json").stdout)
    assert version["state"] == "compatible" and version["database_revision"] == head and version["database_generation"] == "1"
    assert "nothing to do" in invoke("storage", "migrate").stdout
    status = invoke("storage", "status").stdout
    assert "schema: compatible" in status and "nodes: 0, links: 0" in status

    graph = store_small_graph(new_profile.backend)
    info = json.loads(invoke("storage", "info", "--json").stdout)
    assert info["profile"] == "p" and info["dialect"] == dialect and info["schema_revision"] == head
    assert info["counts"] == {"nodes": 4, "links": 5, "groups": 1, "users": 1, "computers": 1, "comments": 1, "logs": 1}
    assert info["creation_statistics"]["total"] == 4
    assert info["creation_statistics"]["types"] == {DATA: 2, CALC: 1, WORK: 1}
    assert isinstance(info["database_size_bytes"], int) and info["database_size_bytes"] > 0
    assert graph.d1 in id_set(new_profile.backend)
    text_info = invoke("storage", "info").stdout
    assert "nodes: 4" in text_info and "links: 5" in text_info


@pytest.mark.slow
def test_migrate_from_an_older_revision_shows_each_step(migrated: CliProfile) -> None:
    history = run_script("alembic", "history").stdout
    assert "main_0001" in history and "main_0004 (head)" in history
    assert "main_0004" in run_script("alembic", "current").stdout
    assert "Database revision now: main_0001" in invoke("alembic", "downgrade", "main_0001", "--force").stdout
    version = json.loads(invoke("storage", "version", "--json", code=4).stdout)
    assert version["state"] == "behind" and version["database_revision"] == "main_0001"
    assert "is behind the code" in one_error_line(invoke("storage", "info", code=4).stderr)
    result = invoke("storage", "migrate", "--force")
    assert "Applied main_0003 -> main_0004" in result.stdout
    assert json.loads(invoke("storage", "version", "--json").stdout)["database_revision"] == "main_0004"
    assert "stamp" in invoke("alembic", "stamp", "nonsense", "--force", code=1).stderr
    assert "exactly one REVISION" in invoke("alembic", "upgrade", code=2).stderr


def test_database_ahead_of_the_code(migrated: CliProfile) -> None:
    with migrated.backend.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'main_9999'"))
    version = json.loads(invoke("storage", "version", "--json", code=5).stdout)
    assert version["state"] == "ahead" and version["database_revision"] == "main_9999"
    assert "ahead of this code" in one_error_line(invoke("storage", "migrate", "--force", code=5).stderr)
    assert "pip install -U" in one_error_line(invoke("storage", "info", code=5).stderr)
    assert "main_9999" in run_script("storage", "version", code=5).stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_postgresql_names_host_and_port(new_postgres_url: URL) -> None:
    """(``new_postgres_url`` only for its skip-without-a-server behaviour.)"""
    port = _free_port()
    invoke("profile", "create", "gone", "--url", f"postgresql+psycopg2://postgres@127.0.0.1:{port}/nothing")
    result = run_script("storage", "info", code=3)
    error = one_error_line(result.stderr)
    assert f"127.0.0.1:{port}" in error and "check that the server is running" in error
    assert json.loads(run_script("storage", "version", "--json", code=3).stdout)["state"] == "unreachable"
    assert invoke("storage", "migrate", "--force", code=3).stdout == ""


def test_unreachable_and_corrupt_sqlite(tmp_path: Path) -> None:
    invoke("profile", "create", "nodir", "--url", f"sqlite:///{tmp_path / 'missing' / 'x.sqlite'}")
    (tmp_path / "missing").rmdir()  # created by 'profile create'; gone since
    assert "does not exist" in one_error_line(invoke("-p", "nodir", "storage", "info", code=3).stderr)
    assert not (tmp_path / "missing").exists()
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    invoke("profile", "create", "bad", "--url", f"sqlite:///{garbage}")
    assert json.loads(invoke("-p", "bad", "storage", "version", "--json", code=10).stdout)["state"] == "corrupt"
    assert "cannot be read" in one_error_line(invoke("-p", "bad", "storage", "migrate", "--force", code=10).stderr)


def test_foreign_tables_are_corrupt(new_profile: CliProfile) -> None:
    with new_profile.backend.engine.begin() as connection:
        connection.execute(text("CREATE TABLE db_dbnode (id INTEGER PRIMARY KEY)"))
    report = json.loads(invoke("storage", "version", "--json", code=10).stdout)
    assert report["state"] == "corrupt" and "no schema revision" in report["message"]


def test_reset_empties_everything_but_settings(migrated: CliProfile) -> None:
    store_small_graph(migrated.backend)
    invoke("setting", "set", "kept", "[1, 2]")
    invoke("storage", "reset", input="n\n", code=1)
    assert json.loads(invoke("storage", "info", "--json").stdout)["counts"]["nodes"] == 4
    result = invoke("storage", "reset", "--yes")
    assert "settings kept" in result.stdout
    counts = json.loads(invoke("storage", "info", "--json").stdout)["counts"]
    assert counts == dict.fromkeys(counts, 0)
    assert invoke("setting", "get", "kept").stdout.strip() == "[1, 2]"
    assert json.loads(invoke("storage", "version", "--json").stdout)["state"] == "compatible"


def test_storage_sql_prints_offline_migrations(new_profile: CliProfile, dialect: str) -> None:
    if dialect == "sqlite":
        assert "PostgreSQL profiles only" in one_error_line(invoke("storage", "sql", code=1).stderr)
        return
    full = run_script("storage", "sql").stdout
    assert "CREATE TABLE db_dbnode" in full and "CREATE TABLE db_dbpath" in full
    assert "INSERT INTO alembic_version (version_num) VALUES ('main_0001')" in full
    step = invoke("storage", "sql", "--from", "main_0001", "--to", "main_0002").stdout
    assert "CREATE TABLE db_dbpath" in step and "CREATE TABLE db_dbnode" not in step
    assert "UPDATE alembic_version SET version_num='main_0002'" in step
    # nothing ran against the database
    assert json.loads(invoke("storage", "version", "--json", code=4).stdout)["database_revision"] is None
    assert "bogus" in one_error_line(invoke("storage", "sql", "--from", "bogus", code=1).stderr)


# -- settings --------------------------------------------------------------------------------------------


def test_settings(migrated: CliProfile) -> None:
    invoke("setting", "set", "limits", '{"cpu": 4, "memory": "8G"}', "--description", "job limits")
    invoke("setting", "set", "greeting", '"hello"')
    assert json.loads(invoke("setting", "get", "limits").stdout) == {"cpu": 4, "memory": "8G"}
    assert invoke("setting", "get", "greeting").stdout == '"hello"\n'
    listing = json.loads(invoke("setting", "list", "--json").stdout)
    assert listing["limits"]["value"] == {"cpu": 4, "memory": "8G"}
    assert listing["limits"]["description"] == "job limits"
    assert listing["schema_generation"]["value"] == "1"
    assert set(listing) == {"limits", "greeting", "schema_generation"}
    assert 'greeting = "hello"' in invoke("setting", "list").stdout

    bad = one_error_line(invoke("setting", "set", "x", "hello", code=1).stderr)
    assert "not valid JSON" in bad and "quote strings" in bad
    assert "must not contain '.'" in one_error_line(invoke("setting", "set", "a.b", "1", code=1).stderr)
    assert "aiida-sqla setting list" in one_error_line(invoke("setting", "get", "nope", code=1).stderr)

    invoke("setting", "delete", "greeting")
    assert "no setting with key 'greeting'" in one_error_line(invoke("setting", "delete", "greeting", code=1).stderr)
    with migrated.backend.engine.connect() as connection:
        keys = set(connection.execute(select(DbSetting.key)).scalars())
    assert keys == {"limits", "schema_generation"}


# -- nodes and graph -------------------------------------------------------------------------------------


def test_node_delete(migrated: CliProfile) -> None:
    graph = store_small_graph(migrated.backend)
    dry = invoke("node", "delete", str(graph.d1), "--dry-run", "-v").stdout
    assert "Would delete 4 node(s)." in dry
    assert f"pks: {' '.join(map(str, sorted([graph.d1, graph.c1, graph.d2, graph.w1])))}" in dry
    assert "Would delete 3 node(s)." in invoke("node", "delete", str(graph.d1), "--dry-run", "--no-create-forward").stdout
    assert id_set(migrated.backend) == {graph.d1, graph.c1, graph.d2, graph.w1}

    error = one_error_line(invoke("node", "delete", "999999", str(graph.d1), "--force", code=1).stderr)
    assert "no node with pk 999999" in error
    invoke("node", "delete", str(graph.w1), input="n\n", code=1)  # refused
    assert len(id_set(migrated.backend)) == 4

    # A workflow takes what it called (call_calc_forward) and that calculation's outputs, not its inputs.
    result = invoke("node", "delete", str(graph.w1), input="y\n")
    assert "Deleting 3 node(s)." in result.stdout and "Deleted 3 node(s)." in result.stdout
    assert id_set(migrated.backend) == {graph.d1}
    with migrated.backend.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(DbLink)).scalar() == 0


def test_node_delete_force_and_rule_toggles(migrated: CliProfile) -> None:
    graph = store_small_graph(migrated.backend)
    result = invoke("node", "delete", str(graph.w1), "--force", "--no-call-calc-forward")
    assert "Deleted 1 node(s)." in result.stdout
    assert id_set(migrated.backend) == {graph.d1, graph.c1, graph.d2}


def test_ancestors_and_descendants(migrated: CliProfile) -> None:
    graph = store_small_graph(migrated.backend)
    ancestors = json.loads(invoke("graph", "ancestors", str(graph.d2), "--json").stdout)
    assert ancestors == {"pks": [graph.d2], "link_types": ["create", "input_calc"], "max_depth": None,
                         "ancestors": sorted([graph.d1, graph.c1]), "count": 2}
    descendants = json.loads(invoke("graph", "descendants", str(graph.d1), "--json").stdout)
    assert descendants["descendants"] == sorted([graph.c1, graph.d2])
    shallow = json.loads(invoke("graph", "descendants", str(graph.d1), "--max-depth", "1", "--json").stdout)
    assert shallow["descendants"] == [graph.c1]
    called = json.loads(invoke("graph", "descendants", str(graph.w1), "--link-types", "call_calc,return", "--json").stdout)
    assert called["descendants"] == sorted([graph.c1, graph.d2])
    assert invoke("graph", "ancestors", str(graph.d2)).stdout.splitlines()[0] == "2 ancestors"

    assert "unknown link type 'bogus'" in one_error_line(
        invoke("graph", "ancestors", str(graph.d2), "--link-types", "bogus", code=1).stderr)
    assert "no node with pk 424242" in one_error_line(invoke("graph", "descendants", "424242", code=1).stderr)


def test_closure_commands(migrated: CliProfile) -> None:
    graph = store_small_graph(migrated.backend)
    status = json.loads(invoke("graph", "closure", "status", "--json").stdout)
    assert status == {"installed": False, "link_types": [], "rows": 0, "links": 0}
    assert "closure installed for link types create, input_calc" in invoke("graph", "closure", "install").stdout
    status = json.loads(invoke("graph", "closure", "status", "--json").stdout)
    # d1->c1, c1->d2, d1->d2
    assert status == {"installed": True, "link_types": ["create", "input_calc"], "rows": 3, "links": 2}
    ancestors = json.loads(invoke("graph", "ancestors", str(graph.d2), "--json").stdout)["ancestors"]
    assert ancestors == sorted([graph.d1, graph.c1])
    invoke("graph", "closure", "rebuild")
    assert json.loads(invoke("graph", "closure", "status", "--json").stdout)["rows"] == 3
    invoke("storage", "reset", "--yes")  # with the triggers installed
    assert json.loads(invoke("graph", "closure", "status", "--json").stdout) == {
        "installed": True, "link_types": ["create", "input_calc"], "rows": 0, "links": 0}
    assert "closure uninstalled" in invoke("graph", "closure", "uninstall").stdout
    assert json.loads(invoke("graph", "closure", "status", "--json").stdout)["installed"] is False
    assert "no transitive closure is installed" in one_error_line(invoke("graph", "closure", "rebuild", code=1).stderr)
    assert "unknown link type" in one_error_line(
        invoke("graph", "closure", "install", "--link-types", "nope", code=1).stderr)


# -- the installed script: output channels, errors, progress ---------------------------------------------


@pytest.mark.slow
def test_script_json_goes_to_stdout_alone_and_errors_are_one_line(database_url: URL) -> None:
    run_script("profile", "create", "s", "--url", url_string(database_url))
    result = run_script("storage", "version", "--json", code=4)
    assert json.loads(result.stdout)["state"] == "not_initialised"
    assert "storage migrate" in one_error_line(result.stderr)  # the cause, on stderr
    migrated = run_script("-p", "s", "storage", "migrate", "--force")
    assert "Applied empty -> main_0004" in migrated.stdout
    info = run_script("storage", "info", "--json")
    assert json.loads(info.stdout)["counts"]["nodes"] == 0 and info.stderr == ""

    error = one_error_line(run_script("-p", "nope", "storage", "info", code=1).stderr)
    assert error == "Error: unknown profile 'nope' (known profiles: s); create it with 'aiida-sqla profile create nope'"
    assert "not valid JSON" in one_error_line(run_script("setting", "set", "k", "{bad", code=1).stderr)
    debug = run_script("storage", "info", "-p", "nope", "--debug", code=1).stderr
    assert "Traceback" in debug and "NotExistent" in debug and debug.rstrip().splitlines()[-1].startswith("Error: unknown")


def _run_with_terminal_stderr(*args: str) -> tuple[int, str, str]:
    """Run the script with stderr on a pseudo-terminal; returns (exit code, stdout, terminal output)."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([console_script(), *args], stdout=subprocess.PIPE, stderr=terminal,
                                   stdin=subprocess.DEVNULL, text=True, env=os.environ.copy())
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout, _ = process.communicate(timeout=300)
        return process.returncode, stdout, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(controller)


@pytest.mark.slow
def test_progress_bars_only_on_a_terminal_and_never_on_stdout(tmp_path: Path) -> None:
    run_script("profile", "create", "bar", "--url", f"sqlite:///{tmp_path / 'bar.sqlite'}")
    code, stdout, terminal = _run_with_terminal_stderr("storage", "migrate", "--force")
    assert code == 0
    assert "migrating" in terminal and "100%" in terminal
    assert "migrating" not in stdout and "Applied empty -> main_0004" in stdout

    run_script("profile", "create", "quiet", "--url", f"sqlite:///{tmp_path / 'quiet.sqlite'}")
    code, stdout, terminal = _run_with_terminal_stderr("-p", "quiet", "storage", "migrate", "--force", "--quiet")
    assert code == 0 and "Applied empty" in stdout and "migrating" not in terminal

    piped = run_script("-p", "quiet", "alembic", "downgrade", "main_0001", "--force")
    assert "main_0001" in piped.stdout
    piped = run_script("-p", "quiet", "storage", "migrate", "--force")
    assert "migrating" not in piped.stderr and "%|" not in piped.stderr


# -- demo ------------------------------------------------------------------------------------------------


def test_demo_creates_a_sqlite_profile_and_runs_the_whole_job(cli_dirs: tuple[Path, Path]) -> None:
    _, data_dir = cli_dirs
    result = run_script("demo", "--nodes", "300", "--json")
    assert "Created profile 'demo'" in result.stderr and "Migrated profile 'demo'" in result.stderr
    report = json.loads(result.stdout)
    assert report["profile"] == "demo" and report["location"] == f"SQLite file {data_dir / 'demo.sqlite'}"
    assert report["stored"]["nodes"] == 300 == report["counts"]["nodes"]
    assert report["stored"]["links"] == report["counts"]["links"] == sum(report["stored"]["link_types"].values())
    assert report["creation_statistics"]["total"] == 300
    ancestors = report["ancestors"]
    assert ancestors["count"] == len(ancestors["pks"]) >= ancestors["depth"] > 0
    dry_run = report["dry_run_delete"]
    assert dry_run["workflow"] in dry_run["pks"] and dry_run["count"] == len(dry_run["pks"])

    backend = SqlaBackend(ConfigFile().get_profile("demo"))
    from aiida_sqla_plugin.graph import get_ancestors  # noqa: PLC0415

    assert sorted(get_ancestors([ancestors["node"]], backend=backend)) == ancestors["pks"]
    assert len(id_set(backend)) == 300  # the deletion was a dry run
    assert ConfigFile().read().default_profile == "demo"

    again = invoke("demo", "--nodes", "50")  # text output; the profile exists and is migrated already
    assert "Created profile" not in again.stdout and "Migrated" not in again.stdout
    assert "Stored 50 nodes" in again.stdout and "350 nodes" in again.stdout
    assert "Ancestors of output" in again.stdout and "(dry run, nothing deleted)" in again.stdout


def test_demo_on_an_existing_profile(new_profile: CliProfile, dialect: str) -> None:
    report = json.loads(invoke("-p", "p", "demo", "--nodes", "200", "--json").stdout)
    assert report["profile"] == "p" and report["counts"]["nodes"] == 200
    assert len(id_set(new_profile.backend)) == 200
    info = json.loads(invoke("storage", "info", "--json").stdout)
    assert info["dialect"] == dialect and info["counts"] == report["counts"]
    assert "demo" not in ConfigFile().read().profiles
    assert "--nodes" in invoke("demo", "--nodes", "0", code=2).stderr


def test_demo_shows_progress_on_a_terminal() -> None:
    code, stdout, terminal = _run_with_terminal_stderr("demo", "--nodes", "500", "--json")
    assert code == 0 and "100%" in terminal
    assert json.loads(stdout)["stored"]["nodes"] == 500


# -- backend loading -------------------------------------------------------------------------------------


def test_backend_is_loaded_through_its_entry_point_and_the_hooks(new_profile: CliProfile) -> None:
    import aiida_sqla_plugin.hooks  # noqa: PLC0415
    from aiida_sqla_plugin.manager import SqlaBackendManager  # noqa: PLC0415
    from aiida_sqla_plugin.plugins import installed_backends, load_backend  # noqa: PLC0415
    from aiida_sqla_plugin.queries import SqlaQueryManager  # noqa: PLC0415
    from aiida_sqla_plugin.settings import SqlaSettingsManager  # noqa: PLC0415

    assert "sqlalchemy" in installed_backends()
    loaded = load_backend(ConfigFile().get_profile("p"))
    assert loaded.pm.list_name_plugin() == [("sqlalchemy", aiida_sqla_plugin.hooks)]
    backend = loaded.backend
    assert isinstance(backend, SqlaBackend) and backend.profile.name == "p"
    assert isinstance(loaded.backend_manager, SqlaBackendManager)
    assert isinstance(loaded.settings_manager, SqlaSettingsManager)
    assert isinstance(loaded.query_manager(backend), SqlaQueryManager)


def test_unknown_storage_backend_lists_the_installed_ones(tmp_path: Path) -> None:
    ConfigFile().add_profile(Profile("odd", "nosuch", {"url": f"sqlite:///{tmp_path / 'odd.sqlite'}"}))
    error = one_error_line(invoke("-p", "odd", "storage", "version", code=7).stderr)
    assert "no storage backend 'nosuch'" in error and "installed: sqlalchemy" in error
    assert "installed: sqlalchemy" in one_error_line(
        invoke("profile", "create", "odd2", "--backend", "nosuch", code=7).stderr)
    assert "odd2" not in ConfigFile().read().profiles


def test_profile_create_with_engine_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.sqlite"
    invoke("profile", "create", "f", "--engine", "sqlite", "--database", str(path))
    assert (tmp_path / "sub").is_dir()
    assert json.loads(invoke("profile", "show", "f", "--json").stdout)["storage_config"] == {"url": f"sqlite:///{path}"}
    invoke("-p", "f", "storage", "migrate", "--force")
    assert path.is_file()
