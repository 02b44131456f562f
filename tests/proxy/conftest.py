"""Fixtures for the proxy tests: local backends, a fake OpenPods API and a supervised real Traefik."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from openpods.proxy.traefik import SECRET_HEADER, TraefikSettings, TraefikSupervisor

T = TypeVar("T")

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SECRET = "test-proxy-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    """Call ``check`` until it returns a truthy value (exceptions count as falsy); fail after ``timeout``."""
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
            raise AssertionError(f"timed out waiting for {what or check}: last result {last!r}")
        time.sleep(interval)


# --- backends ----------------------------------------------------------------------------------------------


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class HttpBackend:
    """An HTTP server that answers every request with JSON describing it (its name, path, headers)."""

    def __init__(self, name: str) -> None:
        backend = self

        class Handler(_QuietHandler):
            def _answer(self) -> None:
                backend.requests.append(dict(self.headers))
                self.send_json(
                    200,
                    {
                        "backend": backend.name,
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                    },
                )

            do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _answer

        self.name = name
        self.requests: list[dict[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpEcho:
    """A TCP server that echoes what it receives."""

    def __init__(self) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while data := self.request.recv(65536):
                    self.request.sendall(data)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class FakeApi:
    """Plays the OpenPods API for Traefik: serves the dynamic config (secret checked) and the forward-auth
    endpoint. Tokens: none → 401 JSON (302 to a relative login URL for Accept: text/html); ``good`` → 200 with X-Tapis-Username and X-Custom; ``deny`` → 403."""

    config: dict[str, Any] = field(default_factory=dict)
    config_polls: int = 0
    bad_secret_polls: int = 0
    auth_calls: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeApi:
        api = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path == "/traefik-config":
                    if self.headers.get(SECRET_HEADER) != SECRET:
                        api.bad_secret_polls += 1
                        self.send_json(401, {"message": "bad secret"})
                        return
                    api.config_polls += 1
                    self.send_json(200, api.config)
                    return
                if parts.path.startswith("/v3/pods/") and parts.path.endswith("/auth"):
                    pod_id_net = parts.path.split("/")[3]
                    token = self.headers.get("X-Tapis-Token")
                    api.auth_calls.append(
                        {
                            "pod_id_net": pod_id_net,
                            "query": parse_qs(parts.query),
                            "token": token,
                            "forwarded_host": self.headers.get("X-Forwarded-Host"),
                            "forwarded_uri": self.headers.get("X-Forwarded-Uri"),
                        }
                    )
                    if token is None and "text/html" in self.headers.get("Accept", ""):
                        # a browser: relative redirect to a login page (must reach the client unchanged)
                        self.send_json(302, {}, {"Location": f"/v3/pods/{pod_id_net}/auth/login"})
                    elif token is None:
                        self.send_json(401, {"status": "error", "message": "no token", "result": None})
                    elif token == "good":
                        self.send_json(
                            200,
                            {"status": "success"},
                            {"X-Tapis-Username": "alice", "X-Custom": f"alice@{pod_id_net}", "X-Other": "no"},
                        )
                    else:
                        self.send_json(403, {"status": "error", "message": "denied", "result": None})
                    return
                self.send_json(404, {"message": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# --- Traefik in a background event loop ----------------------------------------------------------------


class LoopThread:
    """An asyncio loop in a daemon thread, so synchronous tests can drive async objects."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Proxy:
    supervisor: TraefikSupervisor
    settings: TraefikSettings
    api: FakeApi
    loop: LoopThread

    @property
    def https_port(self) -> int:
        return self.settings.https_port

    @property
    def http_port(self) -> int:
        return self.settings.http_port

    @property
    def ca_file(self) -> Path:
        assert self.supervisor.tls is not None and self.supervisor.tls.ca_file is not None
        return self.supervisor.tls.ca_file

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self) -> httpx.Client:
        return httpx.Client(verify=self.ssl_context(), timeout=10.0, trust_env=False)

    def get(
        self,
        host: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        scheme: str = "https",
    ) -> httpx.Response:
        """Request ``<scheme>://<host>:<port><path>`` through Traefik, connecting to 127.0.0.1 (``*.localhost``
        does not resolve everywhere) with SNI and Host set to ``host``; the certificate is verified for it."""
        port = self.https_port if scheme == "https" else self.http_port
        with self.client() as client:
            return client.request(
                method,
                f"{scheme}://127.0.0.1:{port}{path}",
                headers={"Host": f"{host}:{port}", **(headers or {})},
                extensions={"sni_hostname": host} if scheme == "https" else {},
            )


def start_proxy(tmp: Path, api: FakeApi, **overrides: Any) -> Proxy:
    settings = TraefikSettings(
        data_dir=tmp,
        api_url=api.url,
        secret=SECRET,
        http_port=free_port(),
        https_port=free_port(),
        bind_host="127.0.0.1",
        log_level="INFO",
        **overrides,
    )
    loop = LoopThread()
    supervisor = TraefikSupervisor(
        settings, ready_timeout=60.0, backoff_initial=0.2, tls_refresh_interval=None
    )
    try:
        loop.run(supervisor.start())
    except BaseException:
        loop.close()
        raise
    return Proxy(supervisor, settings, api, loop)


def stop_proxy(proxy: Proxy) -> None:
    try:
        proxy.loop.run(proxy.supervisor.stop())
    finally:
        proxy.loop.close()


# --- PostgreSQL from the machine's own binaries --------------------------------------------------------


@dataclass
class Postgres:
    port: int
    user: str
    password: str
    dbname: str


def _as_postgres_user() -> dict[str, Any]:
    """``subprocess`` arguments that run a command as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """A throw-away PostgreSQL 15 on a free port (initdb in a temp dir, password auth, plain host lines)."""
    if not (PG_BIN / "postgres").exists():
        pytest.skip(f"PostgreSQL 15 binaries not found in {PG_BIN}")
    base = Path(tempfile.mkdtemp(prefix="openpods-pg-"))
    data = base / "data"
    pwfile = base / "pw"
    password = "pg-secret-pw"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    base.chmod(0o700)
    port = free_port()
    as_postgres = _as_postgres_user()
    subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "--username=alice",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ],
        check=True,
        capture_output=True,
        cwd=base,
        **as_postgres,
    )
    proc = subprocess.Popen(
        [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(base),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=base,
        **as_postgres,
    )
    try:
        wait_until(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
            timeout=30,
            what="postgres to listen",
        )
        yield Postgres(port=port, user="alice", password=password, dbname="postgres")
    finally:
        proc.send_signal(signal.SIGQUIT)  # "immediate" shutdown: the cluster is thrown away anyway
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
