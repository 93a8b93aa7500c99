"""Load: 8 processes x 4 threads store nodes and links (ORM and ``bulk_insert``), set settings, query ancestors
and, in one process, delete graphs, for ``AIIDA_SQLA_LOAD_SECONDS`` (default 20) seconds (``load_worker.py``).

Afterwards every write that returned is stored exactly once, nothing that failed or was deleted is left, no
thread saw an error (SQLite: writers wait, "database is locked" never reaches them), and once the workers
disposed their engines they hold no connection. The throughput goes to ``record_property`` and to
``$AIIDA_SQLA_LOAD_REPORT`` (default ``/tmp/aiida-sqla-load-<dialect>.json``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.models import DbLink, DbNode, DbSetting, DbUser

TESTS = Path(__file__).resolve().parent
#: Seconds the workers run (override with AIIDA_SQLA_LOAD_SECONDS for a quick try or a longer soak).
LOAD_SECONDS = float(os.environ.get("AIIDA_SQLA_LOAD_SECONDS", "20"))
PROCESSES = 8
THREADS = 4
#: Seconds on top of LOAD_SECONDS a worker may take to finish its last operation and dispose its engines.
FINISH_GRACE_S = 120


def open_handles(pid: int, path: Path) -> int:
    """File descriptors of process ``pid`` open on the SQLite file or its -wal/-shm."""
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    folder = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in folder.iterdir() if os.path.realpath(fd) in names)


def server_connections(backend: SqlaBackend) -> int:
    """Sessions on the test database other than this one (pg_stat_activity)."""
    engine = create_engine(backend.engine.url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            ).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_load(backend: SqlaBackend, user: DbUser, dialect: str, tmp_path: Path, record_property) -> None:
    url = backend.engine.url.render_as_string(hide_password=False)
    backend.engine.dispose()
    started = time.monotonic()
    processes = [
        subprocess.Popen([sys.executable, str(TESTS / "load_worker.py"), url, str(index), str(LOAD_SECONDS), str(THREADS),
                          str(tmp_path)])
        for index in range(PROCESSES)
    ]
    try:
        deadline = started + LOAD_SECONDS + FINISH_GRACE_S
        while not all((tmp_path / f"w{index}.done").exists() for index in range(PROCESSES)):
            assert all(process.poll() is None for process in processes), "a worker died before it finished"
            assert time.monotonic() < deadline, "the workers did not finish in time"
            time.sleep(0.1)
        spans = [[float(t) for t in (tmp_path / f"w{index}.done").read_text().split()] for index in range(PROCESSES)]
        elapsed = max(end for _, end in spans) - min(start for start, _ in spans)  # imports not counted
        # every worker disposed its engines and is still alive: none may hold a connection
        if dialect == "postgresql":
            assert server_connections(backend) == 0
        else:
            path = Path(backend.engine.url.database or "")
            assert [open_handles(process.pid, path) for process in processes] == [0] * PROCESSES
    finally:
        (tmp_path / "exit").touch()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    assert [process.returncode for process in processes] == [0] * PROCESSES

    kinds: Counter[str] = Counter()
    stored, gone, keys, errors = [], set(), [], []
    for log in sorted(tmp_path.glob("w*_t*.log")):
        for line in log.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            kinds[kind] += 1
            if kind in ("node", "bulk"):
                stored += rest.split()
            elif kind in ("deleted", "failed"):
                gone.update(rest.split()[1:] if kind == "failed" else rest.split())
            elif kind == "setting":
                keys.append(rest)
            elif kind == "error":
                errors.append(f"{log.name}: {rest}")
    assert errors == []
    assert kinds["node"] and kinds["bulk"] and kinds["setting"] and kinds["ancestors"] and kinds["deleted"]

    with backend.engine.connect() as connection:
        uuids = Counter(str(value) for value in connection.execute(select(DbNode.uuid)).scalars())
        setting_keys = set(connection.execute(select(DbSetting.key).where(DbSetting.key.like("load_%"))).scalars())
        links = connection.execute(select(func.count()).select_from(DbLink)).scalar_one()
    kept = [value for value in stored if value not in gone]
    assert all(uuids[value] == 1 for value in kept), "a successful write is missing or stored twice"
    assert not any(uuids[value] for value in gone), "a deleted or failed write left a trace"
    assert sum(uuids.values()) == len(kept)  # and nothing else
    assert setting_keys == set(keys) and len(keys) == len(set(keys))
    assert links == (len(kept) - kinds["node"]) // 2

    writes = kinds["node"] + kinds["bulk"] + kinds["setting"] + kinds["deleted"]
    figures = {
        "dialect": dialect, "processes": PROCESSES, "threads": THREADS, "seconds": round(elapsed, 1),
        "operations": dict(kinds), "nodes_stored": len(kept), "write_transactions_per_s": round(writes / elapsed, 1),
        "nodes_per_s": round(len(stored) / elapsed, 1), "ancestor_queries_per_s": round(kinds["ancestors"] / elapsed, 1),
    }
    for name, value in figures.items():
        record_property(name, value)
    report = Path(os.environ.get("AIIDA_SQLA_LOAD_REPORT", f"/tmp/aiida-sqla-load-{dialect}.json"))
    report.write_text(json.dumps(figures, indent=2) + "\n")
