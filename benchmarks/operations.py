"""Time backup, verify, restore, integrity check and maintenance for a synthetic graph (docs/operations.md).

Usage: python benchmarks/operations.py SQLITE_DIR_OR_PG_ADMIN_URL [NODES]
"""
from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.maintenance import backup, check_integrity, maintain, restore, verify_backup
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.synthetic import build_graph
from aiida_sqla_plugin.utils import install_tc


def _timed(label: str, function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    print(f"{label}: {time.perf_counter() - start:.2f} s", flush=True)
    return result


def _pg_database(admin: str, name: str) -> str:
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin.rsplit("/", 1)[0] + f"/{name}"


def main() -> None:
    where, nodes = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    work = Path(tempfile.mkdtemp(prefix="aiida-sqla-ops-"))
    if where.startswith("postgresql"):
        tag = uuid.uuid4().hex[:8]
        source, target = _pg_database(where, f"ops_src_{tag}"), _pg_database(where, f"ops_dst_{tag}")
    else:
        source, target = f"sqlite:///{work / 'source.sqlite'}", f"sqlite:///{work / 'target.sqlite'}"
    profile = aiida_sqla_plugin.Profile("bench", "sqlalchemy", {"url": source})
    SqlaBackendManager(profile).migrate()
    aiida_sqla_plugin.reset_session(profile)
    backend = SqlaBackend(profile)
    graph = _timed(f"build {nodes} nodes", build_graph, backend, nodes, seed=0)
    _timed("install closure", install_tc, backend.get_session())
    folder = _timed("backup", backup, profile, work / "backups")
    _timed("verify", verify_backup, folder)
    _timed("restore", restore, folder, aiida_sqla_plugin.Profile("copy", "sqlalchemy", {"url": target}))
    findings = _timed("integrity (with closure audit)", check_integrity, backend)
    print("findings:", findings)
    _timed("maintain", maintain, backend)
    half = graph.node_ids[len(graph.node_ids) // 2]
    with backend.engine.begin() as connection:
        connection.exec_driver_sql(f"DELETE FROM db_dblink WHERE input_id <= {half} OR output_id <= {half}")
        connection.exec_driver_sql(f"DELETE FROM db_dbnode WHERE id <= {half}")
    time.sleep(2)
    print("dry run:", maintain(backend, full=True, dry_run=True).bytes_reclaimed, "bytes estimated")
    report = _timed("maintain --full after deleting half", maintain, backend, full=True)
    print("reclaimed:", report.bytes_reclaimed, "bytes of", report.size_before)


if __name__ == "__main__":
    main()
