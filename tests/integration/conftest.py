"""Fixtures for end-to-end tests: real OpenPods servers with the spawner and health loop, driving REAL containers.

Engine
------
``engine`` (session) is a container engine of the test session's own. OpenPods' health loop removes every
container labelled ``openpods.managed=true`` that has no pod in *its* database, so a server under test would
destroy the containers of any other OpenPods (or test session) on the same engine. With Podman installed, the
session therefore starts a private ``podman system service`` with its own storage (graphroot/runroot), its own
network config dir and its own bridge network (a random /24 and a random bridge name), and builds the test
images into that storage with ``scripts/build-test-images.sh``. Everything is removed at the end.

``OPENPODS_TEST_SHARED_ENGINE=1`` uses the engine of ``$DOCKER_HOST`` instead (the approach of
``tests/runtime/conftest.py``), e.g. for a real Docker engine; then nothing else may use that engine while these
tests run. Without Podman and without ``DOCKER_HOST`` the tests are skipped with the install hint, unless
``OPENPODS_TEST_REQUIRE_ENGINE=1`` (CI), which turns that into a failure.

Database backends
-----------------
``db_backend`` is re-parametrized here: every backend of ``OPENPODS_TEST_DATABASES`` (default sqlite and
postgres), or only the first selected one for a module that sets ``DB_BACKENDS = "one"`` (container-heavy
modules whose database behaviour is covered elsewhere).

Servers
-------
``pod_server(**settings_overrides)`` (function scope) and ``module_pod_server`` (module scope) start a real server
(``make_server`` of ``tests/conftest.py``) with roles api + spawner + health on the engine, a fast health loop
(0.5 s), no starter catalog, the test images allowlisted, and a user ``alice``. They return a :class:`PodEnv`
with helpers to create pods, wait for statuses, look at containers and call exec/upload.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.constants
import docker.errors
import httpx
import pytest

from openpods.domain.container_spec import LABEL_MANAGED, LABEL_POD_ID, LABEL_TENANT, container_name
from openpods.runtimes.engine import install_hint, ping_engine
from openpods.store.tables import ActionLog, Pod

REPO = Path(__file__).resolve().parents[2]
IMAGE_PREFIX = "localhost/openpods-test"
ALL_BACKENDS = ("sqlite", "postgres")
USER = "alice"
DEFAULT_TIMEOUT = 90.0
# Small resources for test pods (the servers allow them: mem_min/cpu_min are lowered), many run at once.
SMALL = {"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128}


def image(name: str) -> str:
    return f"{IMAGE_PREFIX}/{name}:latest"


# ------------------------------------------------------------------------------------------------ backends


def _selected_backends() -> list[str]:
    raw = os.environ.get("OPENPODS_TEST_DATABASES", "")
    wanted = [b.strip().lower() for b in raw.split(",") if b.strip()] or list(ALL_BACKENDS)
    return [b for b in wanted if b in ALL_BACKENDS] or list(ALL_BACKENDS)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" not in metafunc.fixturenames:
        return
    backends = _selected_backends()
    if getattr(metafunc.module, "DB_BACKENDS", "all") == "one":
        backends = backends[:1]
    metafunc.parametrize("db_backend", backends, indirect=True, scope="module")


@pytest.fixture(scope="module")
def db_backend(request: pytest.FixtureRequest) -> str:
    """Overrides the root fixture; parametrized by :func:`pytest_generate_tests`."""
    return request.param


# ------------------------------------------------------------------------------------------------ engine


@dataclass(frozen=True)
class ContainerInfo:
    """One element of the engine's container list (no per-container inspect: listing never races a removal)."""

    id: str
    name: str
    labels: dict[str, str]
    status: str  # the engine's State: running, exited, created, ...


@dataclass
class Engine:
    """The session's container engine: ``url`` for OpenPods' ``docker_host``, ``client`` for checks behind
    OpenPods' back."""

    url: str
    client: docker.DockerClient
    isolated: bool
    env: dict[str, str] = field(default_factory=dict)  # CONTAINERS_CONF etc. for podman CLI calls

    def containers(self, labels: dict[str, str] | None = None) -> list[ContainerInfo]:
        """Every container (running or not) labelled ``openpods.managed=true`` and with all of ``labels``, in
        one list call."""
        wanted = [f"{LABEL_MANAGED}=true"] + [f"{k}={v}" for k, v in (labels or {}).items()]
        items = self.client.api.containers(all=True, filters={"label": wanted})
        return [
            ContainerInfo(
                id=item["Id"],
                name=(item.get("Names") or [""])[0].lstrip("/"),
                labels=dict(item.get("Labels") or {}),
                status=str(item.get("State") or "").lower(),
            )
            for item in items
        ]

    def pod_containers(self, tenant_id: str, pod_id: str) -> list[ContainerInfo]:
        return self.containers({LABEL_TENANT: tenant_id, LABEL_POD_ID: pod_id})

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(container_id, force=True, v=True)

    def exists(self, container_id: str) -> bool:
        try:
            self.client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:  # Podman: 500 "no such container" while it is being removed
            if "no such container" in str(exc).lower():
                return False
            raise
        return True

    def inspect(self, container_id: str) -> dict[str, Any]:
        return self.client.api.inspect_container(container_id)


def _no_engine(reason: str) -> None:
    if os.environ.get("OPENPODS_TEST_REQUIRE_ENGINE", "") not in ("", "0", "false"):
        pytest.fail(f"{reason}\n{install_hint()}")
    pytest.skip(f"{reason} ({install_hint()})")


def _client(url: str) -> docker.DockerClient:
    """docker-py's client with the API version from GET /_ping (Podman's /version takes most of a second)."""
    probe = docker.APIClient(base_url=url, version=docker.constants.MINIMUM_DOCKER_API_VERSION)
    try:
        res = probe.get(f"{probe.base_url}/_ping", timeout=10)
        res.raise_for_status()
        version = res.headers.get("Api-Version") or "auto"
    finally:
        probe.close()
    return docker.DockerClient(base_url=url, version=version, timeout=120)


def _free_subnet(prefix: int = 24) -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 (or a larger block, e.g. a /16) that overlaps no route or address of this host."""
    taken: list[ipaddress.IPv4Network] = []
    for cmd in (["ip", "-o", "-4", "route", "show", "table", "all"], ["ip", "-o", "-4", "addr"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            for token in out.split():
                with contextlib.suppress(ValueError):
                    if "/" in token or token.count(".") == 3:
                        taken.append(ipaddress.ip_network(token, strict=False))
    rng = random.Random(uuid.uuid4().int)
    for _ in range(1000):
        net = ipaddress.ip_network(f"10.{rng.randint(128, 250)}.{rng.randint(0, 255)}.0/24").supernet(
            new_prefix=prefix
        )
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet for the test network")


def _umount_below(root: Path) -> None:
    mounts = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point.startswith(str(root)):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@contextlib.contextmanager
def isolated_podman() -> Iterator[Engine]:
    """A private Podman API service: own storage, own network config and bridge network (see module doc)."""
    # A short path: AF_UNIX socket paths are limited to 107 bytes.
    work = Path(tempfile.mkdtemp(prefix="opi-", dir="/tmp"))
    subnet = _free_subnet()
    # OpenPods makes a network per pod: a pool of the session's own keeps them apart from the networks of
    # other engines on this host (each engine would otherwise start at 10.89.0.0/24).
    pool = _free_subnet(16)
    while pool.overlaps(subnet):
        pool = _free_subnet(16)
    tag = uuid.uuid4().hex[:8]
    net_name, bridge = f"opt{tag}", f"opt{tag}"
    (work / "net").mkdir()
    (work / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/storage"\nrunroot = "{work}/run"\n'
    )
    (work / "containers.conf").write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        "[network]\n"
        f'network_config_dir = "{work}/net"\n'
        f'default_network = "{net_name}"\n'
        f'default_subnet_pools = [{{"base" = "{pool}", "size" = 24}}]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        # Its own event log: the default one (/run/libpod/events) is shared by every Podman on the host, and
        # OpenPods follows GET /events (engine_events).
        'events_logger = "file"\n'
        f'events_logfile_path = "{work}/events.log"\n'
    )
    gateway = next(subnet.hosts())
    (work / "net" / f"{net_name}.json").write_text(
        json.dumps(
            {
                "name": net_name,
                "id": uuid.uuid4().hex + uuid.uuid4().hex,
                "driver": "bridge",
                "network_interface": bridge,
                "created": "2026-01-01T00:00:00Z",
                "subnets": [{"subnet": str(subnet), "gateway": str(gateway)}],
                "ipv6_enabled": False,
                "internal": False,
                "dns_enabled": False,
                "ipam_options": {"driver": "host-local"},
            }
        )
    )
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(work / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
    }
    env.pop("DOCKER_HOST", None)
    sock = work / "podman.sock"
    url = f"unix://{sock}"
    log = open(work / "podman-service.log", "ab")  # noqa: SIM115 (closed at the end)
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", url],
        env=env,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = None
    try:
        deadline = time.monotonic() + 60
        while not ping_engine(url, timeout_sec=2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"podman system service did not start:\n{(work / 'podman-service.log').read_text()}"
                )
            time.sleep(0.1)
        build = subprocess.run(
            [str(REPO / "scripts/build-test-images.sh")],
            env={**env, "DOCKER_HOST": url, "OPENPODS_IMAGE_BUILDER": "podman"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if build.returncode != 0:
            raise RuntimeError(f"scripts/build-test-images.sh failed:\n{build.stderr}")
        client = _client(url)
        yield Engine(
            url=url,
            client=client,
            isolated=True,
            env={k: env[k] for k in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF")},
        )
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                for c in client.containers.list(all=True):
                    with contextlib.suppress(docker.errors.APIError):
                        c.remove(force=True, v=True)
            client.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
        log.close()
        # Anything left behind (a container the API could not remove) goes with the CLI.
        subprocess.run(
            ["podman", "rm", "-af", "-t", "0"], env=env, capture_output=True, timeout=120, check=False
        )
        _umount_below(work)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def shared_engine() -> Iterator[Engine]:
    url = os.environ.get("DOCKER_HOST", "").strip()
    if not url:
        _no_engine("OPENPODS_TEST_SHARED_ENGINE=1 needs DOCKER_HOST")
    if url.startswith("unix://") and not ping_engine(url, timeout_sec=5):
        pytest.fail(f"DOCKER_HOST={url} does not answer GET /_ping")
    client = _client(url)
    is_podman = "Libpod-Api-Version" in client.api.get(f"{client.api.base_url}/_ping").headers
    build_env = {**os.environ, "DOCKER_HOST": url}
    if not is_podman:
        build_env["OPENPODS_IMAGE_BUILDER"] = "docker"
    build = subprocess.run(
        [str(REPO / "scripts/build-test-images.sh")],
        env=build_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if build.returncode != 0:
        pytest.fail(f"scripts/build-test-images.sh failed:\n{build.stderr}")
    try:
        yield Engine(url=url, client=client, isolated=False)
    finally:
        client.close()


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    if os.environ.get("OPENPODS_TEST_SHARED_ENGINE", "") not in ("", "0", "false"):
        with shared_engine() as eng:
            yield eng
        return
    if shutil.which("podman") is None:
        _no_engine("Podman is not installed (the integration tests start a private Podman service)")
    with isolated_podman() as eng:
        yield eng


# ------------------------------------------------------------------------------------------------ servers


def wait_until(
    check: Callable[[], Any],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.1,
    what: str = "condition",
) -> Any:
    """Polls ``check`` until it returns a truthy value (returned); fails with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


@dataclass
class PodEnv:
    """A running server on the session's engine, seen by user ``alice`` (owner of the pods she creates)."""

    srv: Any  # tests/conftest.py ServerHandle
    engine: Engine
    user: str = USER

    def __post_init__(self) -> None:
        self.http = self.srv.client(self.user, timeout=120.0)

    @property
    def tenant(self) -> str:
        return self.srv.default_tenant

    # --- API
    def create(self, pod_id: str, image_name: str = "http", **fields: Any) -> dict[str, Any]:
        body = {"pod_id": pod_id, "image": image_name if "/" in image_name else image(image_name), **fields}
        body.setdefault("resources", dict(SMALL))
        r = self.http.post("/v3/pods", json=body)
        assert r.status_code == 200, r.text
        return r.json()["result"]

    def get(self, pod_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v3/pods/{pod_id}")
        assert r.status_code == 200, r.text
        return r.json()["result"]

    def action(self, pod_id: str, verb: str) -> httpx.Response:
        return self.http.get(f"/v3/pods/{pod_id}/{verb}")

    def logs(self, pod_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v3/pods/{pod_id}/logs")
        assert r.status_code == 200, r.text
        return r.json()["result"]

    def exec(self, pod_id: str, commands: list[Any], **kwargs: Any) -> httpx.Response:
        return self.http.post(f"/v3/pods/{pod_id}/exec", json={"commands": commands, **kwargs})

    def exec_ok(self, pod_id: str, argv: list[str]) -> dict[str, Any]:
        """Runs one command; returns its result (asserts the call itself succeeded)."""
        r = self.exec(pod_id, argv)
        assert r.status_code == 200, r.text
        return r.json()["result"]["execution_results"][0]

    def upload(self, pod_id: str, dest_path: str, data: bytes, filename: str = "file.bin") -> httpx.Response:
        return self.http.post(
            f"/v3/pods/{pod_id}/upload_to_pod",
            files={"file": (filename, data)},
            data={"dest_path": dest_path},
        )

    def wait_status(self, pod_id: str, *statuses: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        seen: list[str] = []

        def check() -> dict[str, Any] | None:
            pod = self.get(pod_id)
            if not seen or seen[-1] != pod["status"]:
                seen.append(pod["status"])
            return pod if pod["status"] in statuses else None

        try:
            return wait_until(check, timeout=timeout, what=f"pod {pod_id} to be {' or '.join(statuses)}")
        except pytest.fail.Exception as exc:
            raise AssertionError(
                f"{exc}; statuses seen: {seen}; pod: {self.get(pod_id)}; "
                f"action logs: {self.logs(pod_id)['action_logs']}"
            ) from None

    # --- database and engine
    def row(self, pod_id: str) -> dict[str, Any]:
        rows = self.srv.rows(Pod, tenant_id=self.tenant, pod_id=pod_id)
        assert rows, f"no pod row {pod_id}"
        return rows[0]

    def action_log_rows(self, pod_id: str) -> list[dict[str, Any]]:
        return self.srv.rows(ActionLog, tenant_id=self.tenant, object_id=pod_id)

    def containers(self, pod_id: str) -> list[ContainerInfo]:
        """The pod's containers, found by label (there must never be more than one)."""
        return self.engine.pod_containers(self.tenant, pod_id)

    def container_by_name(self, pod_id: str) -> dict[str, Any] | None:
        """``inspect`` of the container with the pod's deterministic name, or None."""
        name = container_name(self.tenant, pod_id, self.srv.ctx.installation_id)
        return self.engine.inspect(name) if self.engine.exists(name) else None

    def host_port(self, pod_id: str, stanza: str = "default") -> int:
        ports = self.row(pod_id)["host_ports"]
        assert stanza in ports, f"no host port for stanza {stanza!r}: {ports}"
        return int(ports[stanza])

    def fetch(self, pod_id: str, path: str = "/", timeout: float = 30.0) -> str:
        """GET http://127.0.0.1:<host port>/<path> of the pod, retrying while the server in it starts."""
        port = self.host_port(pod_id)

        def check() -> str | None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
            except httpx.TransportError:
                return None
            return r.text if r.status_code == 200 else None

        return wait_until(check, timeout=timeout, what=f"HTTP answer from pod {pod_id} on port {port}")


def _prepare(srv: Any, engine: Engine) -> PodEnv:
    for name in ("http", "busybox", "echo", "exit0", "exit1", "chatty", "nope"):
        srv.allow_image(f"{IMAGE_PREFIX}/{name}")
    srv.add_user(USER)
    return PodEnv(srv=srv, engine=engine)


def container_settings(engine: Engine, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "roles": {"api", "spawner", "health"},
        "runtime": "docker",
        "docker_host": engine.url,
        "start_podman_service": False,
        "health_interval_sec": 0.5,
        "import_starter_catalog": False,
        # Small limits: many test containers run at once.
        "mem_min": 16,
        "cpu_min": 10,
    }
    values.update(overrides)
    return values


@pytest.fixture
def pod_server(make_server: Any, engine: Engine) -> Callable[..., PodEnv]:
    """``pod_server(**settings_overrides)`` → a :class:`PodEnv` on a fresh server (stopped after the test)."""

    def make(**overrides: Any) -> PodEnv:
        return _prepare(make_server(**container_settings(engine, **overrides)), engine)

    return make


@pytest.fixture(scope="module")
def module_pod_server(request: pytest.FixtureRequest, make_module_server: Any, engine: Engine) -> PodEnv:
    """One :class:`PodEnv` per module (and backend), with the module's ``MODULE_SETTINGS`` overrides; tests use
    unique pod ids. Do not mix it with ``pod_server`` in one module: two servers with a health loop on one
    engine remove each other's containers."""
    overrides = dict(getattr(request.module, "MODULE_SETTINGS", {}))
    return _prepare(make_module_server(**container_settings(engine, **overrides)), engine)
