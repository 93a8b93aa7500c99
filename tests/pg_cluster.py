"""A private PostgreSQL cluster (and optionally PgBouncer) for tests that restart, limit or share a server.

The shared server on 5432 is never restarted or reconfigured: tests that need to do so get a cluster of their own,
made by ``initdb`` as the ``postgres`` OS user in a temporary folder, listening on private addresses (127.0.0.x and
addresses of network namespaces the test made) on a free port, with its unix socket in that folder. A role with a
password (SCRAM) owns a database; ``max_connections`` is small. :func:`private_cluster` tears everything down
(``pg_ctl stop -m immediate``, the folder removed) even when the test fails.

Constants are env-overridable so that a loaded machine can give the cluster more time.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

PG_BIN = Path(os.environ.get("AIIDA_SQLA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: Connection limit of a private cluster (small, so budget tests can reach it).
MAX_CONNECTIONS = int(os.environ.get("AIIDA_SQLA_TEST_PG_MAX_CONNECTIONS", "40"))
#: Seconds ``pg_ctl`` waits for a start or restart.
START_TIMEOUT = int(os.environ.get("AIIDA_SQLA_TEST_PG_START_TIMEOUT", "60"))
OS_USER = "postgres"
ROLE = "worker"
PASSWORD = "s3cret-Ä'\"@:/"  # characters that must be quoted in a URL
DATABASE = "scale"


def cluster_unavailable() -> str | None:
    """Why a private cluster cannot be made here, or None."""
    if os.geteuid() != 0:
        return "a private PostgreSQL cluster needs root (initdb runs as the postgres OS user)"
    if not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {PG_BIN} (set AIIDA_SQLA_TEST_PG_BIN)"
    try:
        import pwd  # noqa: PLC0415

        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"no {OS_USER!r} OS user to run initdb as"
    return None


def require_cluster() -> None:
    """Skip (fail on CI) when a private cluster cannot be made."""
    reason = cluster_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the private-cluster tests: {reason}")
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _as_postgres(*command: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", OS_USER, "--", *map(str, command)], check=check, capture_output=True, text=True, timeout=START_TIMEOUT + 30
    )


@dataclass
class PgCluster:
    """A running private cluster: where it lives, how to reach it, and how to restart it."""

    root: Path
    hosts: Sequence[str]
    port: int
    max_connections: int = MAX_CONNECTIONS
    bouncer_port: int | None = None
    bouncer_pool_size: int | None = None
    _bouncer: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def url(self, host: str | None = None, *, bouncer: bool = False, database: str = DATABASE) -> URL:
        """The password-authenticated URL of the test role, directly or through PgBouncer."""
        port = self.bouncer_port if bouncer else self.port
        if port is None:
            raise RuntimeError("this cluster runs no PgBouncer")
        return URL.create(
            "postgresql+psycopg2", username=ROLE, password=PASSWORD, host=host or self.hosts[0], port=port, database=database
        )

    def backend_count(self, database: str | None = None) -> int:
        """Server processes serving clients (all databases, or one), the superuser's query included."""
        where = f" AND datname = '{database}'" if database else ""
        return int(self.psql(f"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'{where}"))

    def admin_url(self, database: str = DATABASE) -> URL:
        """The superuser, over the cluster's own unix socket (trust: only this machine's root can reach it)."""
        return URL.create("postgresql+psycopg2", username=OS_USER, database=database, query={"host": str(self.socket_dir), "port": str(self.port)})

    def pg_ctl(self, *args: str) -> None:
        result = _as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-w", "-t", str(START_TIMEOUT), "-l", self.root / "server.log", *args, check=False)
        if result.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {result.stderr.strip()}\n{log}")

    def restart(self, mode: str = "fast") -> None:
        self.pg_ctl("restart", "-m", mode)

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """Run ``sql`` as the superuser over the socket and return psql's unaligned output."""
        result = _as_postgres(
            PG_BIN / "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir, "-p", str(self.port), "-d", database, "-c", sql
        )
        return result.stdout.strip()

    def new_database(self) -> URL:
        """A new database owned by the test role; its URL (direct)."""
        name = f"db_{os.getpid()}_{time.monotonic_ns()}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}", database="postgres")
        return self.url(database=name)

    def start_bouncer(self, pool_size: int) -> None:
        """PgBouncer in transaction mode on the cluster's addresses, at most ``pool_size`` server connections."""
        pgbouncer = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(pgbouncer).exists():
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail("CI must run the PgBouncer tests: install the Debian package pgbouncer")
            pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
        self.bouncer_port = free_port(self.hosts[0])
        self.bouncer_pool_size = pool_size
        quoted = PASSWORD.replace('"', '""')
        (self.root / "userlist.txt").write_text(f'"{ROLE}" "{quoted}"\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.socket_dir} port={self.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {','.join(self.hosts)}\n"
            f"listen_port = {self.bouncer_port}\n"
            f"unix_socket_dir = {self.socket_dir}\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.root / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            f"max_db_connections = {pool_size}\n"
            "reserve_pool_size = 0\n"
            "max_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
        )
        subprocess.run(["chown", "-R", f"{OS_USER}:", str(self.root)], check=True)
        self._bouncer = subprocess.Popen(
            ["runuser", "-u", OS_USER, "--", pgbouncer, "-q", str(self.root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.hosts[0], self.bouncer_port), timeout=1):
                return
            if self._bouncer.poll() is not None:
                break
            time.sleep(0.1)
        log = (self.root / "pgbouncer.log").read_text(errors="replace") if (self.root / "pgbouncer.log").exists() else ""
        raise RuntimeError(f"PgBouncer did not start: {log[-2000:]}")

    def stop(self) -> None:
        if self._bouncer is not None:
            self._bouncer.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._bouncer.wait(10)
            if self._bouncer.poll() is None:
                self._bouncer.kill()
            self._bouncer = None
        if (self.data / "postmaster.pid").exists():
            _as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-w", "stop", "-m", "immediate", check=False)


def netns_unavailable() -> str | None:
    """Why network namespaces with veth pairs cannot be made here, or None."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "network namespaces need root and iproute2 ('ip')"
    name = f"aiidasqla-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@dataclass(frozen=True)
class Host:
    """A simulated worker host: a network namespace, its address, and the server-side address it reaches."""

    namespace: str
    address: str
    server_address: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


_SIMULATED_CALLS = itertools.count()


@contextlib.contextmanager
def simulated_hosts(count: int) -> Iterator[list[Host]]:
    """``count`` network namespaces, each joined to this one by a veth pair with addresses 10.213.<i>.1/.2."""
    reason = netns_unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the multi-host tests: {reason}")
        pytest.skip(reason)
    # Names unique per call, not per process: a namespace's veth pair is freed by the kernel some time after
    # 'ip netns del', so a second call reusing the names could meet the first call's pair ("File exists").
    tag = f"{os.getpid() % 10000}{next(_SIMULATED_CALLS) % 100:02d}"
    hosts: list[Host] = []
    outers: list[str] = []
    try:
        for index in range(1, count + 1):
            host = Host(f"aiidasqla{tag}h{index}", f"10.213.{index}.2", f"10.213.{index}.1")
            outer, inner = f"vsq{tag}h{index}o", f"vsq{tag}h{index}i"
            hosts.append(host)
            outers.append(outer)
            for command in (
                ["ip", "netns", "add", host.namespace],
                ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
                ["ip", "link", "set", inner, "netns", host.namespace],
                ["ip", "addr", "add", f"{host.server_address}/24", "dev", outer],
                ["ip", "link", "set", outer, "up"],
                *(host.command(*argv) for argv in (
                    ["ip", "addr", "add", f"{host.address}/24", "dev", inner],
                    ["ip", "link", "set", inner, "up"],
                    ["ip", "link", "set", "lo", "up"],
                )),
            ):
                subprocess.run(command, check=True, capture_output=True, text=True)
        yield hosts
    finally:
        for outer in outers:  # deleting one end deletes the pair at once (and with it the addresses and routes)
            subprocess.run(["ip", "link", "del", outer], capture_output=True)
        for host in hosts:
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)


@contextlib.contextmanager
def private_cluster(
    hosts: Sequence[str] = ("127.0.0.1",), *, max_connections: int = MAX_CONNECTIONS, bouncer_pool_size: int | None = None
) -> Iterator[PgCluster]:
    """Make, start and finally remove a private cluster listening on ``hosts`` (and PgBouncer if a size is given)."""
    require_cluster()
    root = Path(tempfile.mkdtemp(prefix="aiida-sqla-pg-"))
    cluster = PgCluster(root, tuple(hosts), free_port(hosts[0]), max_connections)
    try:
        cluster.socket_dir.mkdir()
        subprocess.run(["chown", "-R", f"{OS_USER}:", str(root)], check=True)
        _as_postgres(PG_BIN / "initdb", "-D", cluster.data, "-A", "scram-sha-256", "--auth-local=trust", "-U", OS_USER, "-E", "UTF8")
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '{','.join(hosts)}'\nport = {cluster.port}\n"
                f"unix_socket_directories = '{cluster.socket_dir}'\nmax_connections = {max_connections}\n"
                "superuser_reserved_connections = 3\nshared_buffers = 16MB\nfsync = off\n"
                "password_encryption = scram-sha-256\n"
            )
        with (cluster.data / "pg_hba.conf").open("a") as hba:  # the simulated hosts' subnets (veth pairs)
            hba.write("host all all samenet scram-sha-256\n")
        cluster.pg_ctl("start")
        sql_password = PASSWORD.replace("'", "''")
        cluster.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{sql_password}'", database="postgres")
        cluster.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}", database="postgres")
        if bouncer_pool_size is not None:
            cluster.start_bouncer(bouncer_pool_size)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
