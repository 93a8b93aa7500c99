"""One process of the load test (``test_load.py``): ``THREADS`` threads write and read for ``SECONDS`` seconds.

``python load_worker.py URL INDEX SECONDS THREADS FOLDER``. Each thread appends one line per finished operation
to ``FOLDER/w<INDEX>_t<n>.log`` *after* the library returned: ``node UUID`` (ORM), ``bulk UUID...`` (bulk_insert
of nodes and their links in one transaction), ``setting KEY``, ``ancestors``, ``deleted UUID...`` (worker 0,
thread 0 only), ``failed KIND UUID...`` for an operation that raised, and ``error TYPE MESSAGE`` for anything
unexpected. Afterwards the process disposes its engines, writes the wall-clock times its threads started and
ended to ``FOLDER/w<INDEX>.done`` and waits for
``FOLDER/exit`` so that the test can count the connections it still holds.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import TextIO

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import AiidaSqlaError
from aiida_sqla_plugin.graph import delete_nodes, get_ancestors
from aiida_sqla_plugin.models import DbLink, DbNode, DbUser

DATA = "data.core.int.Int."
CALC = "process.calculation.calcfunction.CalcFunctionNode."
#: Nodes per bulk_insert call (half calculations, each creating the data node after it).
BULK_NODES = 20
#: Seconds a worker waits for the test's ``exit`` file before leaving anyway.
EXIT_WAIT_S = 120


class Worker:
    def __init__(self, backend: SqlaBackend, user_id: int, index: int, thread: int, log: TextIO) -> None:
        self.backend, self.user_id, self.index, self.thread, self.log = backend, user_id, index, thread, log
        self.count = 0
        self.last_pair: tuple[int, int] | None = None

    def write(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()

    def orm_node(self) -> None:
        node_uuid = uuid.uuid4()
        try:
            with self.backend.transaction() as session:
                session.add(DbNode(uuid=node_uuid, node_type=DATA, user_id=self.user_id, label="orm"))
        except AiidaSqlaError:
            self.write(f"failed node {node_uuid}")
            raise
        self.write(f"node {node_uuid}")

    def bulk(self) -> None:
        uuids = [uuid.uuid4() for _ in range(BULK_NODES)]
        rows = [{"uuid": value, "node_type": CALC if k % 2 == 0 else DATA, "user_id": self.user_id, "label": "bulk"}
                for k, value in enumerate(uuids)]
        try:
            with self.backend.transaction(write=True):
                pks = self.backend.bulk_insert(DbNode, rows)
                links = [{"input_id": pks[k], "output_id": pks[k + 1], "type": "create", "label": f"result{k}"}
                         for k in range(0, BULK_NODES, 2)]
                self.backend.bulk_insert(DbLink, links)
        except AiidaSqlaError:
            self.write("failed bulk " + " ".join(map(str, uuids)))
            raise
        self.last_pair = (pks[0], pks[1])
        self.write("bulk " + " ".join(map(str, uuids)))

    def setting(self) -> None:
        key = f"load_w{self.index}_t{self.thread}_{self.count}"
        self.backend.settings.set(key, {"n": self.count})
        self.write(f"setting {key}")

    def ancestors(self) -> None:
        if self.last_pair is None:
            return
        calc, data = self.last_pair
        found = get_ancestors([data], backend=self.backend)
        if found != {calc}:
            raise AssertionError(f"ancestors of {data} are {found}, not {{{calc}}}")
        self.write("ancestors")

    def deletion(self) -> None:
        uuids = [uuid.uuid4() for _ in range(4)]
        rows = [{"uuid": value, "node_type": CALC if k % 2 == 0 else DATA, "user_id": self.user_id, "label": "doomed"}
                for k, value in enumerate(uuids)]
        with self.backend.transaction(write=True):
            pks = self.backend.bulk_insert(DbNode, rows)
            self.backend.bulk_insert(DbLink, [{"input_id": pks[0], "output_id": pks[1], "type": "create", "label": "r"},
                                              {"input_id": pks[2], "output_id": pks[3], "type": "create", "label": "r"}])
        self.write("bulk " + " ".join(map(str, uuids)))
        deleted, done = delete_nodes([pks[1], pks[3]], dry_run=False, backend=self.backend)
        if not done or deleted != set(pks):
            raise AssertionError(f"deleting {pks[1]}, {pks[3]} removed {deleted} (done={done})")
        self.write("deleted " + " ".join(map(str, uuids)))

    def run(self, deadline: float) -> None:
        operations = [self.orm_node, self.bulk, self.setting, self.ancestors]
        if self.index == 0 and self.thread == 0:
            operations.append(self.deletion)
        try:
            while time.monotonic() < deadline:
                operations[self.count % len(operations)]()
                self.count += 1
        except BaseException as error:  # noqa: BLE001 - every error is reported to the test
            self.write(f"error {type(error).__name__} {' '.join(str(error).split())} | "
                       + " ".join(traceback.format_exception(error)[-3:]).replace("\n", " "))
        finally:
            self.backend.get_session().close()
            self.backend.session_factory.remove()


def main(url: str, index: int, seconds: float, threads: int, folder: Path) -> None:
    profile = aiida_sqla_plugin.Profile(name=f"load{index}", storage_backend="sqlalchemy", storage_config={"url": url})
    backend = SqlaBackend(profile)
    with backend.engine.connect() as connection:
        user_id = connection.execute(DbUser.__table__.select()).first()[0]  # type: ignore[index]
    started = time.time()
    deadline = time.monotonic() + seconds
    logs = [open(folder / f"w{index}_t{n}.log", "w", encoding="utf-8") for n in range(threads)]  # noqa: SIM115
    workers = [threading.Thread(target=Worker(backend, user_id, index, n, logs[n]).run, args=(deadline,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    finished = time.time()
    for log in logs:
        log.close()
    aiida_sqla_plugin.dispose_engines()
    (folder / f"w{index}.done").write_text(f"{started} {finished}")
    wait_until = time.monotonic() + EXIT_WAIT_S
    while not (folder / "exit").exists() and time.monotonic() < wait_until:
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
