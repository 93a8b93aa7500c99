"""aiida-core's side of the import benchmark: import one archive into a new ``core.sqlite_dos`` or ``core.psql_dos``
profile (a new PostgreSQL database on the local server, dropped afterwards).

    AIIDA_PATH=/tmp/somewhere /path/to/aiida-venv/bin/python benchmarks/aiida_core_import.py ARCHIVE [core.psql_dos]

Run with the python of a virtual environment holding aiida-core 2.x (not this package's). Prints one JSON object:
the import's wall-clock seconds and the process's peak RSS (``VmHWM``).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


#: The local PostgreSQL server of the psql_dos run (trust authentication, as on the development machines).
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def _admin(statement: str) -> None:
    import psycopg  # aiida-core's own driver, in its venv

    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as connection:  # type: ignore[arg-type]
        connection.execute(statement)


def main(archive: str, storage: str = "core.sqlite_dos") -> int:
    from aiida import __version__, load_profile
    from aiida.manage.configuration import create_profile, get_config
    from aiida.orm import Node, QueryBuilder
    from aiida.tools.archive import import_archive

    folder = tempfile.mkdtemp(prefix="aiida-core-import-")
    name = f"import-bench-{int(time.time())}"
    database = name.replace("-", "_")
    if storage == "core.psql_dos":
        _admin(f"CREATE DATABASE {database}")
        config = {"database_engine": "postgresql_psycopg", "database_hostname": PG["host"], "database_port": PG["port"],
                  "database_username": PG["user"], "database_password": "", "database_name": database,
                  "repository_uri": Path(folder).as_uri()}
    else:
        config = {"filepath": folder}
    create_profile(get_config(create=True), storage_backend=storage, storage_config=config,
                   broker_backend=None, name=name, email="bench@example.org", first_name="B", last_name="B", institution="")
    try:
        load_profile(name, allow_switch=True)
        before = _peak_mb()
        clock = time.perf_counter()
        import_archive(archive)
        seconds = time.perf_counter() - clock
        print(json.dumps({
            "tool": f"aiida-core {__version__} ({storage})", "import_seconds": round(seconds, 2),
            "peak_rss_mb": _peak_mb(), "rss_before_import_mb": before, "nodes": QueryBuilder().append(Node).count(),
        }), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if storage == "core.psql_dos":
            from aiida.manage import get_manager

            get_manager().reset_profile()  # closes its connections, so the database can be dropped
            _admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
