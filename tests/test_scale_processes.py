"""Real worker processes on a private cluster: a server restart under 8 workers (#9), and 3 simulated hosts x 4
workers, directly and through PgBouncer with fewer server connections than workers (#13).

Durations are env-overridable (``AIIDA_SQLA_TEST_RESTART_SECONDS``, ``AIIDA_SQLA_TEST_HOSTS_SECONDS``); the
throughput reached is printed (``pytest -s``) and appended to ``AIIDA_SQLA_TEST_SCALE_REPORT`` when set.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import UnreachableStorage
from aiida_sqla_plugin.manager import SqlaBackendManager
from aiida_sqla_plugin.models import DbLink, DbNode, DbSetting, DbUser
from aiida_sqla_plugin.profile import Profile
from aiida_sqla_plugin.reports import count_entities
from helpers import WAIT_SECONDS, LockedTables, run_in_thread
from pg_cluster import PgCluster, private_cluster, simulated_hosts

WORKER = Path(__file__).with_name("scale_worker.py")
RESTART_SECONDS = float(os.environ.get("AIIDA_SQLA_TEST_RESTART_SECONDS", "8"))
HOSTS_SECONDS = float(os.environ.get("AIIDA_SQLA_TEST_HOSTS_SECONDS", "20"))
HOSTS, WORKERS_PER_HOST = 3, 4
#: Pool of each worker process in the multi-host test: hosts x workers x (pool_size + max_overflow) = 24 connections.
WORKER_POOL = {"pool_size": 2, "max_overflow": 0}


def prepared_profile(url: URL, name: str) -> Profile:
    """Migrate the database at ``url`` and store the user the workers write as."""
    profile = Profile(name, storage_config={"url": url.render_as_string(hide_password=False)})
    SqlaBackendManager(profile).migrate()
    aiida_sqla_plugin.reset_session(profile)
    with SqlaBackend(profile).transaction() as session:
        session.add(DbUser(email="worker@example.org"))
    return profile


def start_worker(url: URL, name: str, seconds: float, out: Path, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*(prefix or []), sys.executable, str(WORKER), url.render_as_string(hide_password=False), name, str(seconds), str(out)],
        env={**os.environ, "AIIDA_SQLA_WORKER_ENGINE_KWARGS": json.dumps(WORKER_POOL)},
    )


def outcomes(out: Path) -> tuple[list[str], Counter[str]]:
    lines = out.read_text().splitlines() if out.exists() else []
    return lines, Counter(line.split(" ", 1)[0] for line in lines)


def check_rounds(profile: Profile, outputs: dict[str, Path]) -> dict[str, int]:
    """Every committed round present exactly once; every lost round all there or not at all; nothing else."""
    engine = aiida_sqla_plugin.get_engine(profile)
    with engine.connect() as connection:
        nodes = Counter(connection.execute(select(DbNode.label).where(DbNode.label.like("%:%:%"))).scalars())
        links = Counter(connection.execute(select(DbLink.label)).scalars())
        settings = Counter(connection.execute(select(DbSetting.key).where(DbSetting.key.like("w\\_%"))).scalars())
    expected: set[str] = set()
    totals: Counter[str] = Counter()
    for worker, out in outputs.items():
        lines, counts = outcomes(out)
        assert lines and lines[-1] == "done", f"worker {worker} did not finish: {lines[-3:]}"
        assert counts["error"] == 0, [line for line in lines if line.startswith("error")]
        totals.update(counts)
        for line in lines[:-1]:
            kind, index = line.split(" ")[:2]
            present = [nodes[f"{worker}:{index}:a"], nodes[f"{worker}:{index}:b"], links[f"{worker}_{index}"],
                       settings[f"w_{worker}_{index}"]]
            if kind == "ok":
                assert present == [1, 1, 1, 1], (worker, index, present)
            else:  # a commit lost in flight may or may not have been applied, but never in part
                assert present in ([0, 0, 0, 0], [1, 1, 1, 1]), (worker, index, present)
            expected |= {f"{worker}:{index}:a", f"{worker}:{index}:b"}
    assert set(nodes) <= expected  # no row from a round no worker reported
    return dict(totals)


def report(figure: str) -> None:
    print(figure)
    target = os.environ.get("AIIDA_SQLA_TEST_SCALE_REPORT")
    if target:
        with open(target, "a") as file:
            file.write(figure + "\n")


@pytest.mark.slow
def test_workers_go_on_after_a_server_restart(pg_cluster: PgCluster, tmp_path: Path) -> None:
    profile = prepared_profile(pg_cluster.new_database(), "restart")
    outputs = {f"r{index}": tmp_path / f"r{index}.log" for index in range(8)}
    backend = SqlaBackend(profile)
    engine = aiida_sqla_plugin.get_engine(profile)
    with engine.connect() as connection:
        user_id = connection.execute(select(DbUser.id)).scalar_one()
    # A read in flight across the restart: it waits for a lock on db_dbgroup, which no worker touches. Started
    # before the workers, so that waiting for it does not move the restart closer to the workers' end.
    locks = LockedTables(engine.url, ("db_dbgroup",))
    executor, in_flight = run_in_thread(lambda: count_entities(engine))
    workers = [start_worker(engine.url, name, RESTART_SECONDS, out) for name, out in outputs.items()]
    try:
        locks.next_waiter()
        deadline = time.monotonic() + 60
        while not all(outcomes(out)[1]["ok"] for out in outputs.values()):  # every worker is writing
            assert time.monotonic() < deadline, "the workers did not start writing"
            assert all(worker.poll() is None for worker in workers)
            time.sleep(0.1)
        with pytest.raises(UnreachableStorage, match="was lost"):
            with backend.transaction(write=True) as session:
                session.add(DbNode(node_type="data.core.int.Int.", user_id=user_id, label="open-during-restart"))
                session.flush()
                pg_cluster.restart("fast")
                before = {name: outcomes(out)[1]["ok"] for name, out in outputs.items()}
                session.execute(text("SELECT 1"))
        # Its connection died with the server; it waited for the server and ran again (the lock died too).
        assert in_flight.result(timeout=WAIT_SECONDS)["users"] == 1
        executor.shutdown()
        for worker in workers:
            assert worker.wait(RESTART_SECONDS + 120) == 0
    finally:
        locks.close()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    totals = check_rounds(profile, outputs)
    after = {name: outcomes(out)[1]["ok"] for name, out in outputs.items()}
    assert all(after[name] > before[name] for name in outputs), (before, after)  # every worker went on
    with aiida_sqla_plugin.get_engine(profile).connect() as connection:  # the open transaction left nothing
        assert connection.scalar(select(func.count()).select_from(DbNode).where(DbNode.label == "open-during-restart")) == 0
    report(f"server restart, 8 workers, {RESTART_SECONDS:g} s: {totals.get('ok', 0)} rounds committed, "
           f"{totals.get('lost', 0)} lost to the restart (UnreachableStorage, retried); a read in flight ran again")


class ConnectionSampler(threading.Thread):
    """Samples the server's client connections every 0.25 s; keeps the maximum (all and the test database's)."""

    def __init__(self, cluster: PgCluster, database: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.database = cluster, database
        self.most = self.most_database = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.most = max(self.most, self.cluster.backend_count() - 1)  # minus the sampler's own psql
            self.most_database = max(self.most_database, self.cluster.backend_count(self.database))
            self.stopping.wait(0.25)


@pytest.mark.slow
@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
def test_three_hosts_of_four_workers(through: str, tmp_path: Path) -> None:
    bouncer = through == "pgbouncer"
    server_pool = 4  # PgBouncer's server connections: fewer than the 12 workers
    with simulated_hosts(HOSTS) as hosts, private_cluster(
        ["127.0.0.1", *(host.server_address for host in hosts)],
        max_connections=10 if bouncer else 40,  # through PgBouncer the 12 workers could not even connect directly
        bouncer_pool_size=server_pool if bouncer else None,
    ) as cluster:
        database = cluster.new_database()
        profile = prepared_profile(database, "hosts")
        aiida_sqla_plugin.dispose_engines()
        outputs: dict[str, Path] = {}
        workers = []
        sampler = ConnectionSampler(cluster, str(database.database))
        sampler.start()
        started = time.monotonic()
        try:
            for host_index, host in enumerate(hosts):
                url = cluster.url(host.server_address, bouncer=bouncer, database=str(database.database))
                for worker_index in range(WORKERS_PER_HOST):
                    name = f"h{host_index}w{worker_index}"
                    outputs[name] = tmp_path / f"{name}.log"
                    workers.append(start_worker(url, name, HOSTS_SECONDS, outputs[name], host.command()))
            codes = [worker.wait(HOSTS_SECONDS + 120) for worker in workers]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            sampler.stopping.set()
            sampler.join(10)
        elapsed = time.monotonic() - started
        assert codes == [0] * len(workers)
        totals = check_rounds(profile, outputs)
        assert totals.get("lost", 0) == 0  # no worker saw an error
        assert sampler.most <= cluster.max_connections
        if bouncer:
            assert sampler.most_database <= server_pool
        else:
            assert sampler.most_database <= HOSTS * WORKERS_PER_HOST * (WORKER_POOL["pool_size"] + WORKER_POOL["max_overflow"])
        aiida_sqla_plugin.dispose_engines()
    rounds = totals.get("ok", 0)  # each worker writes for HOSTS_SECONDS from its own start
    report(f"3 hosts x 4 workers {through}, {HOSTS_SECONDS:g} s each: {rounds} rounds ({rounds / HOSTS_SECONDS:.0f}/s; "
           f"each 2 nodes + 1 link + 1 setting; {elapsed:.0f} s with start-up), at most {sampler.most_database} server "
           "connections to the database")
