"""Benchmark of archive import: export the synthetic graph as a main_0001 archive, import it on each dialect.

    python benchmarks/archive_import.py --nodes 100000 --dialect both [--no-closure] [--aiida-python PYTHON]

Each import runs in a child process of its own, so that its peak memory (``resource.getrusage``, max RSS) is the
import's alone; the databases come from ``bench.fresh_backend`` (created and dropped). Prints one JSON object per
dialect.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import fresh_backend, machine_facts

from aiida_sqla_plugin.archive import export_archive, import_archive
from aiida_sqla_plugin.closure import uninstall_tc
from aiida_sqla_plugin.synthetic import build_graph


def _peak_mb() -> float:
    """This process's peak RSS in MB: ``VmHWM`` where Linux has it (``ru_maxrss`` keeps the parent's peak across
    exec there, so a child would report its parent's), else ``resource.getrusage``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child(dialect: str, archive: Path, closure: bool) -> dict[str, object]:
    """Import ``archive`` into a new database of ``dialect``, then again (a no-op); times and peak memory."""
    with fresh_backend(dialect, "import-bench") as backend:
        if not closure:
            uninstall_tc(backend.get_session())
        before = _peak_mb()
        clock = time.perf_counter()
        result = import_archive(archive, backend)
        seconds = time.perf_counter() - clock
        peak = _peak_mb()
        clock = time.perf_counter()
        again = import_archive(archive, backend)
        repeat_seconds = time.perf_counter() - clock
    return {
        "dialect": dialect, "closure": closure, "nodes": result.counts["nodes"]["new"], "links": result.counts["links"]["new"],
        "import_seconds": round(seconds, 2), "peak_rss_mb": peak, "rss_before_import_mb": before,
        "reimport_seconds": round(repeat_seconds, 2), "reimport_changed": again.changed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--dialect", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--no-closure", action="store_true", help="uninstall the closure triggers before importing")
    parser.add_argument("--aiida-python", help="python of a venv with aiida-core 2.x: also time its import of the file")
    parser.add_argument("--child", nargs=2, metavar=("DIALECT", "ARCHIVE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), not args.no_closure)), flush=True)
        return 0
    dialects = ("sqlite", "postgresql") if args.dialect == "both" else (args.dialect,)
    with tempfile.TemporaryDirectory(prefix="aiida-sqla-import-bench-") as folder:
        archive = Path(folder) / "graph.aiida"
        with fresh_backend("sqlite", "export-bench") as backend:
            build_graph(backend, args.nodes, seed=0)
            exported = export_archive(archive, all=True, backend=backend)
        for dialect in dialects:
            completed = subprocess.run(
                [sys.executable, __file__, "--child", dialect, str(archive), *(["--no-closure"] if args.no_closure else [])], capture_output=True, text=True, check=True
            )
            result = json.loads(completed.stdout)
            result.update(archive_bytes=exported.size_bytes, export_seconds=round(exported.seconds, 2), machine=machine_facts())
            print(json.dumps(result), flush=True)
        storages = {"sqlite": "core.sqlite_dos", "postgresql": "core.psql_dos"}
        for dialect in dialects if args.aiida_python else ():
            with tempfile.TemporaryDirectory(prefix="aiida-path-") as aiida_path:
                completed = subprocess.run(
                    [args.aiida_python, str(Path(__file__).with_name("aiida_core_import.py")), str(archive), storages[dialect]],
                    capture_output=True, text=True, check=True, env={**os.environ, "AIIDA_PATH": aiida_path},
                )
            print(completed.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
