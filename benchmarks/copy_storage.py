"""Time copy_storage for a synthetic graph with the closure installed: SQLite -> PostgreSQL -> a new SQLite file.

Usage: python benchmarks/copy_storage.py PG_ADMIN_URL [NODES]   (e.g. postgresql+psycopg2://postgres@127.0.0.1/postgres)

The graph is built in a child process, so the peak memory printed (``ru_maxrss``) is the copies' own.
"""
from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy.engine import make_url

import aiida_sqla_plugin
from aiida_sqla_plugin.archive import copy_storage
from bench import _admin  # benchmarks/bench.py, beside this script

_BUILD = """
import sys
import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.synthetic import build_graph
from aiida_sqla_plugin.utils import install_tc
profile = aiida_sqla_plugin.Profile("bench-source", "sqlalchemy", {"url": sys.argv[1], "repository": sys.argv[2]})
SqlaBackendManager(profile).migrate()
backend = SqlaBackend(profile)
build_graph(backend, int(sys.argv[3]), seed=1)
with backend.transaction(write=True) as session:
    install_tc(session)
"""


def main(admin_url: str, nodes: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="copy-bench-"))
    name = f"copy_bench_{uuid.uuid4().hex[:8]}"
    source_url = f"sqlite:///{work / 'source.sqlite'}"
    subprocess.run([sys.executable, "-c", _BUILD, source_url, str(work / "source-objects"), str(nodes)], check=True)
    source = aiida_sqla_plugin.Profile("source", "sqlalchemy", {"url": source_url, "repository": str(work / "source-objects")})
    _admin(f'CREATE DATABASE "{name}"', admin_url)
    try:
        pg_url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        server = aiida_sqla_plugin.Profile("server", "sqlalchemy", {"url": pg_url, "repository": str(work / "server-objects")})
        back = aiida_sqla_plugin.Profile("back", "sqlalchemy", {"url": f"sqlite:///{work / 'back.sqlite'}", "repository": str(work / "back-objects")})
        for label, origin, target in (("SQLite -> PostgreSQL", source, server), ("PostgreSQL -> SQLite", server, back)):
            start = time.perf_counter()
            result = copy_storage(origin, target)
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{label}: {seconds:.1f} s, peak {peak:.0f} MB, rows {result.rows}", flush=True)
    finally:
        aiida_sqla_plugin.dispose_engines()
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', admin_url)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100_000)
