"""Fixtures for whole-stack networking tests: API + spawner + health + the Traefik that OpenPods itself starts,
and REAL containers.

Engine and images
-----------------
``engine`` (session) is a private Podman API service with its own storage and bridge network, started and torn
down by ``isolated_podman()`` of ``tests/integration/conftest.py`` (loaded here by path, so the integration
suite's engine helpers are the only copy). A private engine matters: OpenPods' health loop removes every
managed container that has no pod in *its* database, so a server under test would destroy the containers of any
other session sharing an engine. ``OPENPODS_TEST_SHARED_ENGINE=1`` uses ``$DOCKER_HOST`` instead.

The busybox test images come from ``scripts/build-test-images.sh`` (run by ``isolated_podman``); the PostgreSQL
image ``localhost/openpods-test/postgres:15`` is built into the same storage by
``scripts/build-postgres-image.sh``. No Podman, a failed build or a missing image is an ERROR, never a skip:
these tests exist to prove the whole stack works.

Servers
-------
``proxy_env`` (module scope, once per database backend) is a real OpenPods server (``make_module_server``) with
roles api + spawner + health + proxy: Traefik is started by OpenPods on two free loopback ports and polls the
server's ``/traefik-config``. Only one server runs at a time on the engine (a second one's health loop would
remove the first one's containers), so every module shares its server and tests use unique pod ids.

``*.pods.localhost`` does not resolve here: requests connect to 127.0.0.1 and send the pod's hostname as SNI
and ``Host`` (:meth:`ProxyEnv.get`); the certificate is verified against the CA OpenPods generated.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from openpods.store.tables import Pod

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
IMAGE_PREFIX = "localhost/openpods-test"
HTTP_IMAGE = f"{IMAGE_PREFIX}/http:latest"
ECHO_IMAGE = f"{IMAGE_PREFIX}/echo:latest"
POSTGRES_IMAGE = f"{IMAGE_PREFIX}/postgres:15"
USER = "alice"
OTHER_USERS = ("bob", "carol")
POD_TIMEOUT = 90.0  # create → AVAILABLE, generously
ROUTE_TIMEOUT = 30.0  # a route change visible at Traefik (it polls every second)
# Small resources for test pods (the server's mem_min/cpu_min are lowered accordingly).
SMALL = {"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128}

# A shell that exits on SIGTERM (busybox httpd as PID 1 ignores it, so a stop would wait for the kill timeout).
TRAP = 'trap "exit 0" TERM INT; '
#: busybox httpd with a CGI script at /cgi-bin/env that prints the request's environment (HTTP_* headers).
ENV_CGI_COMMAND = [
    "sh",
    "-c",
    TRAP + "mkdir -p /www/cgi-bin && "
    "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nenv\\n' > /www/cgi-bin/env && "
    "chmod +x /www/cgi-bin/env && httpd -f -p 5000 -h /www & wait $!",
]
#: Two HTTP servers: port 5000 serves "hello from openpods", port 6000 serves "second stanza".
TWO_PORTS_COMMAND = [
    "sh",
    "-c",
    TRAP + "mkdir -p /www2 && echo 'second stanza' > /www2/index.html && httpd -p 6000 -h /www2 && "
    "httpd -f -p 5000 -h /www & wait $!",
]




sys.path.insert(0, str(REPO / "tests" / "support"))
from module_loading import load_module  # noqa: E402

integration = load_module("openpods_tests_integration_support", REPO / "tests/integration/conftest.py")


def wait_until(
    check: Callable[[], T], *, timeout: float = ROUTE_TIMEOUT, interval: float = 0.1, what: str = "condition"
) -> T:
    """Calls ``check`` until it returns a truthy value (returned); exceptions count as falsy. Fails after
    ``timeout`` seconds with the last value or exception."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ engine


def _build_postgres_image(engine: Any) -> None:
    env = {**os.environ, **engine.env}
    if engine.url.startswith("unix://"):
        env.setdefault("DOCKER_HOST", engine.url)
    build = subprocess.run(
        [str(REPO / "scripts/build-postgres-image.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    if build.returncode != 0:
        pytest.fail(
            f"scripts/build-postgres-image.sh failed ({build.returncode}):\n{build.stdout}\n{build.stderr}"
        )


@pytest.fixture(scope="session")
def engine() -> Iterator[Any]:
    """The session's private container engine with every image these tests use (see the module doc)."""
    if os.environ.get("OPENPODS_TEST_SHARED_ENGINE", "") not in ("", "0", "false"):
        context: Any = integration.shared_engine()
    else:
        if shutil.which("podman") is None:
            pytest.fail(
                f"Podman is not installed; the e2e tests need a real engine.\n{integration.install_hint()}"
            )
        context = integration.isolated_podman()
    with context as eng:
        _build_postgres_image(eng)
        for ref in (HTTP_IMAGE, ECHO_IMAGE, POSTGRES_IMAGE):
            try:
                eng.client.images.get(ref)
            except Exception as exc:
                pytest.fail(f"test image {ref} is missing from the engine after the builds: {exc}")
        yield eng


# ------------------------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ProxyEnv:
    """A server with its own Traefik, seen by ``alice`` (owner of the pods she creates)."""

    srv: Any  # tests/conftest.py ServerHandle
    engine: Any
    user: str = USER
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = self.srv.client(self.user, timeout=60.0)
        self.ssl_context = ssl.create_default_context(cafile=str(self.ca_file))

    # --- identities and addresses
    @property
    def tenant(self) -> str:
        return self.srv.default_tenant

    @property
    def settings(self) -> Any:
        return self.srv.settings

    @property
    def https_port(self) -> int:
        return int(self.settings.proxy_https_port)

    @property
    def http_port(self) -> int:
        return int(self.settings.proxy_http_port)

    @property
    def ca_file(self) -> Path:
        return Path(self.settings.data_dir) / "tls" / "ca.crt"

    @property
    def traefik_dir(self) -> Path:
        return Path(self.settings.data_dir) / "traefik"

    def host(self, pod_id: str, key: str = "default") -> str:
        domain = self.settings.pods_domain(self.tenant)
        return f"{pod_id}.{domain}" if key == "default" else f"{pod_id}-{key}.{domain}"

    # --- the pods API
    def create(self, pod_id: str, image: str = HTTP_IMAGE, **fields: Any) -> dict[str, Any]:
        body = {"pod_id": pod_id, "image": image, **fields}
        body.setdefault("resources", dict(SMALL))
        r = self.http.post("/v3/pods", json=body)
        assert r.status_code == 200, r.text
        self.created.append(pod_id)
        return r.json()["result"]

    def get_pod(self, pod_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v3/pods/{pod_id}")
        assert r.status_code == 200, r.text
        return r.json()["result"]

    def action(self, pod_id: str, verb: str) -> dict[str, Any]:
        r = self.http.get(f"/v3/pods/{pod_id}/{verb}")
        assert r.status_code == 200, r.text
        return r.json()["result"]

    def delete(self, pod_id: str) -> None:
        r = self.http.delete(f"/v3/pods/{pod_id}")
        assert r.status_code == 200, r.text

    def action_logs(self, pod_id: str) -> list[str]:
        r = self.http.get(f"/v3/pods/{pod_id}/logs")
        assert r.status_code == 200, r.text
        return [str(line) for line in r.json()["result"]["action_logs"]]

    def row(self, pod_id: str) -> dict[str, Any]:
        rows = self.srv.rows(Pod, tenant_id=self.tenant, pod_id=pod_id)
        assert rows, f"no pod row {pod_id}"
        return rows[0]

    def wait_available(
        self, pod_id: str, *, other_than_instance: str | None = None, timeout: float = POD_TIMEOUT
    ) -> dict[str, Any]:
        """Waits for AVAILABLE (of an instance other than ``other_than_instance``); fails at once on ERROR."""
        seen: list[str] = []

        def check() -> dict[str, Any] | None:
            pod = self.get_pod(pod_id)
            if not seen or seen[-1] != pod["status"]:
                seen.append(pod["status"])
            if pod["status"] in ("ERROR", "COMPLETE"):
                raise AssertionError(
                    f"pod {pod_id} is {pod['status']}: {pod.get('status_container')}; "
                    f"action logs: {self.action_logs(pod_id)}"
                )
            if pod["status"] != "AVAILABLE":
                return None
            if other_than_instance is not None and self.row(pod_id)["instance_id"] == other_than_instance:
                return None
            return pod

        deadline = time.monotonic() + timeout
        while True:
            pod = check()
            if pod is not None:
                return pod
            if time.monotonic() > deadline:
                pytest.fail(
                    f"pod {pod_id} not AVAILABLE after {timeout:.0f}s; statuses seen {seen}; "
                    f"action logs: {self.action_logs(pod_id)}"
                )
            time.sleep(0.1)

    # --- through Traefik
    def get(
        self,
        host: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        scheme: str = "https",
        timeout: float = 10.0,
    ) -> httpx.Response:
        """``<scheme>://<host>:<port><path>`` through Traefik: connects to 127.0.0.1 with SNI and Host set to
        ``host``; HTTPS is verified against OpenPods' CA. Redirects are not followed. A new connection per
        request, so SNI always matches the request."""
        port = self.https_port if scheme == "https" else self.http_port
        with httpx.Client(verify=self.ssl_context, timeout=timeout, trust_env=False) as client:
            return client.request(
                method,
                f"{scheme}://127.0.0.1:{port}{path}",
                headers={"Host": f"{host}:{port}", **(headers or {})},
                extensions={"sni_hostname": host} if scheme == "https" else {},
            )

    def wait_status(
        self,
        host: str,
        status: int,
        path: str = "/",
        *,
        headers: dict[str, str] | None = None,
        timeout: float = ROUTE_TIMEOUT,
        what: str = "",
    ) -> httpx.Response:
        """Polls ``get(host, path)`` until it answers ``status``; returns that response."""
        last: list[Any] = []

        def check() -> httpx.Response | None:
            try:
                response = self.get(host, path, headers=headers)
            except httpx.TransportError as exc:
                last[:] = [exc]
                return None
            last[:] = [f"{response.status_code} {response.text[:200]!r}"]
            return response if response.status_code == status else None

        deadline = time.monotonic() + timeout
        while True:
            response = check()
            if response is not None:
                return response
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout:.0f}s waiting for {status} from https://{host}{path} "
                    f"{what}; last: {last}"
                )
            time.sleep(0.1)

    def tls_exchange(self, server_name: str, payload: bytes, *, timeout: float = 5.0) -> bytes:
        """TLS to the websecure entrypoint with SNI ``server_name``; sends ``payload`` and reads until as many
        bytes came back, the peer closes, or ``timeout``. Errors and a refused handshake give ``b""``."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.check_hostname = False  # a wrong SNI gets Traefik's default certificate
        received = b""
        try:
            with (
                socket.create_connection(("127.0.0.1", self.https_port), timeout=timeout) as raw,
                ctx.wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                tls.sendall(payload)
                while len(received) < len(payload):
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    received += chunk
        except (OSError, ssl.SSLError):
            pass
        return received

    def traefik_log_tail(self, lines: int = 40) -> str:
        path = self.traefik_dir / "traefik.log"
        if not path.exists():
            return f"(no {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def cleanup(self) -> None:
        for pod_id in self.created:
            with contextlib.suppress(Exception):
                self.http.delete(f"/v3/pods/{pod_id}")


def _proxy_settings(engine: Any) -> dict[str, Any]:
    http_port = free_port()
    https_port = free_port()
    while https_port == http_port:
        https_port = free_port()
    return integration.container_settings(
        engine,
        roles={"api", "spawner", "health", "proxy"},
        proxy_enabled=True,
        proxy_http_port=http_port,
        proxy_https_port=https_port,
        proxy_bind_host="127.0.0.1",
        proxy_access_log=True,  # off by default; the access-log tests read it (codes must never be logged)
    )


def _wait_traefik(env: ProxyEnv) -> None:
    """OpenPods logs and carries on when Traefik cannot start; here that is an error."""

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", env.https_port), timeout=1):
            return True

    try:
        wait_until(listening, timeout=30, what="Traefik's TLS entrypoint")
    except pytest.fail.Exception:
        pytest.fail(
            f"Traefik started by OpenPods does not listen on {env.https_port}:\n{env.traefik_log_tail()}"
        )
    if not env.ca_file.exists():
        pytest.fail(f"no CA certificate at {env.ca_file}")


@pytest.fixture(scope="module")
def proxy_env(make_module_server: Any, engine: Any) -> Iterator[ProxyEnv]:
    """One server with roles api + spawner + health + proxy per module and backend (see the module doc)."""
    srv = make_module_server(**_proxy_settings(engine))
    for ref in (HTTP_IMAGE, ECHO_IMAGE, POSTGRES_IMAGE):
        srv.allow_image(ref.rsplit(":", 1)[0])  # the repository, any tag
    for name in (USER, *OTHER_USERS):
        srv.add_user(name)
    env = ProxyEnv(srv=srv, engine=engine)
    _wait_traefik(env)
    try:
        yield env
    finally:
        env.cleanup()


@pytest.fixture
def pod_id(new_id: Callable[[str], str]) -> str:
    return new_id("pod")


def unique(prefix: str = "pod") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def pg_query(env: ProxyEnv, pod_id: str, sql: str, **params: Any) -> Any:
    """Connects to the pod's PostgreSQL through Traefik (SNI = the pod's host) and runs ``sql``."""
    conninfo = {
        "host": env.host(pod_id),
        "hostaddr": "127.0.0.1",
        "port": env.https_port,
        "connect_timeout": 5,
        **params,
    }
    with psycopg.connect(**conninfo) as conn:
        return conn.execute(sql).fetchall()
