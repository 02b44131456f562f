"""The cluster shape in real processes, for fault tests.

- ``PrivatePostgres`` / ``PrivateRabbitMQ``: servers of our own on free loopback ports in a temporary directory,
  restartable at will, never the machine's shared instances (127.0.0.1:5432 / 5672).
- ``Cluster``: two each of ``openpods api``, ``openpods spawner`` and ``openpods health`` as subprocesses sharing
  one data dir (keys), a private PostgreSQL database and a private RabbitMQ, driving the machine's container
  engine (``DOCKER_HOST``) under an installation id of their own (a fresh database makes a new one), so the
  tests only ever see and touch their own containers (found by the installation label).

PostgreSQL: the machine's server binaries (``/usr/lib/postgresql/<version>/bin``), run as the ``postgres`` user
(the server refuses to run as root). RabbitMQ: the machine's ``rabbitmq-server`` with its own node name, ports
(AMQP, distribution, epmd), data and log directories, and no plugins.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from process_control import ProcessControl

from openpods.domain.container_spec import LABEL_INSTALLATION, LABEL_POD_ID


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float, alive: subprocess.Popen[bytes] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"{what} exited with {alive.returncode}")
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return versions[-1].parent


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` on a free port, trust auth for user ``postgres``, fsync off (a test cluster)."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.work = Path(tempfile.mkdtemp(prefix="op-pg-", dir="/tmp"))
        self.data = self.work / "data"
        self.port = free_port()
        self.log = self.work / "postgres.log"
        user = pwd.getpwnam("postgres")
        os.chown(self.work, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.work)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}\n{result.stderr}\n{self.log_tail()}")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.work} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``immediate`` is a crash: no checkpoint, every connection cut; the next start recovers."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> None:
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.work, ignore_errors=True)


class PrivateRabbitMQ:
    """One RabbitMQ node of its own: node name, AMQP/distribution/epmd ports, data and logs in a temp dir."""

    def __init__(self) -> None:
        server = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        if not server.exists():
            found = shutil.which("rabbitmq-server")
            if found is None:
                raise RuntimeError("rabbitmq-server is not installed")
            server = Path(found)
        self.server = server
        self.work = Path(tempfile.mkdtemp(prefix="op-rmq-", dir="/tmp"))
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.node = f"optest{uuid.uuid4().hex[:8]}@localhost"
        (self.work / "enabled_plugins").write_text("[].\n")
        (self.work / "rabbitmq.conf").write_text("loopback_users = none\n")
        (self.work / "rabbitmq-env.conf").write_text("")  # not the machine's (its node name is the shared one)
        for sub in ("mnesia", "log"):
            (self.work / sub).mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.work),  # the Erlang cookie goes here
            "RABBITMQ_CONF_ENV_FILE": str(self.work / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.work / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.work / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(self.work / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.work / "log"),
        }

    def start(self) -> None:
        log = open(self.work / "server.out", "ab")  # noqa: SIM115 (the child holds it)
        try:
            self.proc = subprocess.Popen([str(self.server)], env=self._env(), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.work)
        finally:
            log.close()
        try:
            _wait_port(self.port, 120, self.proc, "rabbitmq-server")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from None

    def kill(self) -> None:
        """A broker crash: SIGKILL to the node's process group (the durable queues survive on disk)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the port is free again before a restart
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    time.sleep(0.2)
            except OSError:
                return

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.work / "server.out").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> None:
        self.kill()
        # The node started its own epmd (on our port): end it too.
        subprocess.run(["epmd", "-kill"], env=self._env(), capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the cluster

OPENPODS = Path(sys.executable).with_name("openpods")
ADMIN_PASSWORD = "cluster-admin-pw"
HTTP_IMAGE = "localhost/openpods-test/http:latest"
# Short lease times so that a takeover is observed quickly; the bound asserted is derived from them.
LEASE_SEC, RENEW_SEC, RETRY_SEC = 6.0, 2.0, 1.0
STUCK_DEADLINE_SEC = 10.0


@dataclass
class Proc(ProcessControl):
    """One ``openpods <role>`` subprocess."""

    role: str
    name: str
    env: dict[str, str]
    log_path: Path
    port: int = 0
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} is not running"
        return self.popen.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child holds it)
        try:
            self.popen = subprocess.Popen([str(OPENPODS), self.role, "--log-level", "info"], env=self.env,
                                          stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        finally:
            log.close()

    def wait_api(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"{self.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/healthcheck", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not answer /healthcheck:\n{self.log_tail()}")


@dataclass
class Cluster:
    pg: PrivatePostgres
    rabbit: PrivateRabbitMQ
    engine_url: str
    work: Path
    dbname: str = field(default_factory=lambda: f"openpods_{uuid.uuid4().hex[:8]}")
    procs: dict[str, Proc] = field(default_factory=dict)
    lease_sec: float = LEASE_SEC
    renew_sec: float = RENEW_SEC
    retry_sec: float = RETRY_SEC
    _token: str = ""
    # One public URL for every replica (as behind a load balancer): tokens name it as their issuer.
    base_url: str = field(default_factory=lambda: f"http://localhost:{free_port()}")

    @property
    def database_url(self) -> str:
        return self.pg.url(self.dbname)

    def env(self, port: int = 0) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENPODS_")}
        env.pop("DOCKER_HOST", None)
        env.update({
            "OPENPODS_DATA_DIR": str(self.work / "data"),  # shared, like a mounted volume with the keys
            "OPENPODS_DATABASE_URL": self.database_url,
            "OPENPODS_BUS": "rabbitmq",
            "OPENPODS_RABBITMQ_URL": self.rabbit.url,
            "OPENPODS_RUNTIME": "docker",
            "OPENPODS_DOCKER_HOST": self.engine_url,
            "OPENPODS_START_PODMAN_SERVICE": "false",
            "OPENPODS_PROXY_ENABLED": "false",
            "OPENPODS_STUCK_DEADLINE_SEC": str(STUCK_DEADLINE_SEC),
            "OPENPODS_HEALTH_INTERVAL_SEC": "1",
            "OPENPODS_LEADER_LEASE_SEC": str(LEASE_SEC),
            "OPENPODS_LEADER_RENEW_SEC": str(RENEW_SEC),
            "OPENPODS_LEADER_RETRY_SEC": str(RETRY_SEC),
            "OPENPODS_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "OPENPODS_IMPORT_STARTER_CATALOG": "false",
            "OPENPODS_IMAGE_ALLOW_LIST": json.dumps(["localhost/openpods-test/http"]),
            "OPENPODS_MEM_MIN": "16",
            "OPENPODS_CPU_MIN": "10",
            "OPENPODS_HOST": "127.0.0.1",
            "OPENPODS_PORT": str(port or 8000),
            "OPENPODS_BASE_URL": self.base_url,
        })
        return env

    def add(self, role: str, name: str) -> Proc:
        port = free_port() if role == "api" else 0
        proc = Proc(role, name, self.env(port), self.work / f"{name}.log", port=port)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.pg.create_database(self.dbname)
        # The first API process alone: it migrates the database and makes the keys the others then read.
        first = self.add("api", "api1")
        first.start()
        first.wait_api()
        for role, name in (("api", "api2"), ("spawner", "spawner1"), ("spawner", "spawner2"),
                           ("health", "health1"), ("health", "health2")):
            self.add(role, name).start()
        self.procs["api2"].wait_api()

    def restart(self, name: str) -> None:
        proc = self.procs[name]
        proc.start()
        if proc.role == "api":
            proc.wait_api()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def revive(self) -> None:
        if self.rabbit.proc is None:
            self.rabbit.start()
        with contextlib.suppress(Exception):
            self.pg.start()  # fails harmlessly when it runs
        for name, proc in self.procs.items():
            if not proc.alive():
                self.restart(name)

    def assert_all_alive(self, but: str = "") -> None:
        """Every process still runs (except ``but``, killed on purpose): none crashed on a fault."""
        dead = {n: p.popen.returncode if p.popen else None for n, p in self.procs.items()
                if not p.alive() and n != but}
        assert not dead, f"processes ended: {dead}\n" + "\n".join(
            f"--- {n}\n{self.procs[n].log_tail()}" for n in dead)

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{p.log_tail(25)}" for n, p in self.procs.items())

    # --- API
    def token(self, api: str = "api2") -> str:
        if not self._token:
            r = httpx.post(f"{self.procs[api].base}/v3/oauth2/tokens", timeout=30,
                           json={"username": "admin", "password": ADMIN_PASSWORD, "grant_type": "password"})
            assert r.status_code == 201, r.text
            self._token = r.json()["result"]["access_token"]["access_token"]
        return self._token

    def client(self, api: str) -> httpx.Client:
        return httpx.Client(base_url=self.procs[api].base, headers={"X-Tapis-Token": self.token()}, timeout=60)

    # --- database (read directly: the truth, whichever process is up)
    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        dsn = f"host=127.0.0.1 port={self.pg.port} user=postgres dbname={self.dbname}"
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return list(conn.execute(query, params).fetchall())

    def installation_id(self) -> str:
        return self.sql("SELECT value FROM meta WHERE key = 'installation_id'")[0][0]

    def lease(self) -> tuple[str, int, Any, Any] | None:
        """(holder, epoch, acquired_at, expires_at) of the health lease, or None."""
        rows = self.sql("SELECT holder, epoch, acquired_at, expires_at FROM leader_leases WHERE name = 'health'")
        return rows[0] if rows else None

    def leader(self) -> Proc | None:
        """The health process holding a valid lease (the holder id names its pid)."""
        rows = self.sql("SELECT holder FROM leader_leases WHERE name = 'health' "
                        "AND expires_at > now() AT TIME ZONE 'UTC'")
        if not rows:
            return None
        pid = int(rows[0][0].split(":")[1])
        return next((p for p in self.procs.values() if p.role == "health" and p.popen and p.pid == pid), None)

    def statuses(self, pod_ids: list[str]) -> dict[str, str]:
        rows = self.sql("SELECT pod_id, status FROM pods WHERE pod_id = ANY(%s)", pod_ids)
        return {r[0]: r[1] for r in rows}


class Engine:
    """The container engine, seen through this cluster's installation label only."""

    def __init__(self, url: str) -> None:
        self.client = docker.DockerClient(base_url=url, timeout=120)

    def containers(self, installation: str) -> list[Any]:
        # A container removed between the list call and docker-py's inspect of it is gone: not an error.
        return self.client.containers.list(all=True, filters={"label": f"{LABEL_INSTALLATION}={installation}"},
                                           ignore_removed=True)

    def per_pod(self, installation: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for c in self.containers(installation):
            out.setdefault(c.labels.get(LABEL_POD_ID, "?"), []).append(c.status)
        return out

    def remove_all(self, installation: str) -> None:
        for c in self.containers(installation):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True, v=True)

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Engine]]:
    engine_url = os.environ.get("DOCKER_HOST", "").strip()
    if not engine_url:
        pytest.fail("DOCKER_HOST must name the container engine (scripts/dev-env.sh sets it)")
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.fail("runuser is needed to run PostgreSQL as the postgres user")
    pg = PrivatePostgres()
    rabbit = PrivateRabbitMQ()
    engine = Engine(engine_url)
    c = Cluster(pg=pg, rabbit=rabbit, engine_url=engine_url, work=tmp_path_factory.mktemp("cluster"))
    installation = ""
    try:
        pg.start()
        rabbit.start()
        c.start()
        installation = c.installation_id()
        yield c, engine
    finally:
        c.stop()
        if installation:
            engine.remove_all(installation)
        engine.close()
        rabbit.close()
        pg.close()
