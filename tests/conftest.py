"""Shared fixtures: databases (SQLite and PostgreSQL) and real OpenPods servers on free ports.

Databases
---------
``db_backend`` (module scope) is parametrized over ``sqlite`` and ``postgres``; every test that uses it, directly
or through ``database_url`` / ``make_server`` / ``server``, runs once per backend (test ids ``[sqlite]`` and
``[postgres]``). Restrict the backends for a fast local run with ``OPENPODS_TEST_DATABASES=sqlite`` (a comma
list). PostgreSQL is the one at 127.0.0.1:5432 (trust auth, user ``postgres``): each database is created as
``openpods_test_<random>`` and dropped when its fixture ends. A PostgreSQL that does not answer is an error,
never a skip.

- ``database_url``: a fresh, empty database (no migrations applied) for one test.
- ``fresh_database(backend, directory)``: the same as a context manager, for fixtures of any scope.

Servers
-------
``make_server(**overrides)`` (function scope; servers stop when the test ends) and ``make_module_server``
(module scope) start a REAL OpenPods server: ``serve_async(settings, roles, ctx, stop)`` in a background thread
with its own asyncio loop, on a free port, with its own data dir and a fresh database of ``db_backend``. They
wait for ``/healthcheck`` and return a :class:`ServerHandle`::

    def test_something(make_server):
        srv = make_server(image_allow_list=["localhost/busybox"], roles={"api", "spawner"})
        srv.add_user("alice", "alicepw")
        r = srv.client("alice").get("/v3/pods")          # httpx.Client with X-Tapis-Token
        t = srv.tapis("alice", "alicepw")                # unmodified tapipy, get_tokens() done

Keyword arguments of ``make_server`` are ``Settings`` overrides, plus ``roles`` (default ``{"api"}``) and
``database_url`` (default: a fresh database of the current backend; pass one to share a database between two
servers, e.g. an api and a spawner process). Defaults: ``runtime="none"``, ``proxy_enabled=False``,
``import_starter_catalog=False`` (an empty site), ``volume_size_enforcement="api"`` (plain directories),
admin ``admin`` with password ``ADMIN_PASSWORD``, tenants ``default`` (base_url ``http://localhost:<port>``)
and ``other`` (base_url ``http://127.0.0.1:<port>``).

``OPENPODS_*`` variables of the calling shell do not reach test servers (only ``OPENPODS_TEST_DATABASES`` is
read, by this file).

With ``-n N`` (pytest-xdist) and no ``--dist`` option, tests are distributed by module (``loadscope``), so
module-scoped servers start once per worker.

``server`` is one module-scoped server per backend: tests sharing it must use unique object ids
(``new_id("pod")``) and may add users freely (``add_user`` is an upsert).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from openpods.bootstrap import build_context
from openpods.config import Settings, TenantSettings
from openpods.context import AppContext
from openpods.server import serve_async
from openpods.store import repo
from openpods.store.tables import Image, User

ADMIN_PASSWORD = "admin-test-password"
OTHER_TENANT = "other"
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
ALL_BACKENDS = ("sqlite", "postgres")
STARTUP_TIMEOUT_SEC = 30.0
STOP_TIMEOUT_SEC = 30.0
# Test users get argon2 hashes with low cost parameters (the parameters travel in the hash, so the server's
# ordinary verification checks them quickly); the production cost takes ~0.3 s per hash on our machines.
_FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
# One SSL context for every httpx client (creating one per client costs ~50 ms).
_SSL_CONTEXT = ssl.create_default_context()


def _serialize_ast_parse() -> None:
    """Work around CPython gh-106905 (fixed in 3.11.8 / 3.12.1): concurrent ``ast.parse`` calls in two threads
    corrupt a shared recursion counter and raise ``SystemError: AST constructor recursion depth mismatch``.
    Here that happens when the server thread formats a traceback (3.11's ``traceback`` calls ``ast.parse``)
    while pytest formats a failure in the main thread, and pytest then aborts with INTERNALERROR. A lock
    around ``ast.parse`` serializes the two."""
    if not ((3, 11) <= sys.version_info[:3] < (3, 11, 8) or (3, 12) <= sys.version_info[:3] < (3, 12, 1)):
        return
    if getattr(ast.parse, "_openpods_serialized", False):
        return
    original = ast.parse
    lock = threading.RLock()

    def parse(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return original(*args, **kwargs)

    parse._openpods_serialized = True  # type: ignore[attr-defined]
    ast.parse = parse  # type: ignore[assignment]


_serialize_ast_parse()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """With ``-n N`` and no ``--dist``, distribute by module (``loadscope``) instead of xdist's per-test
    ``load``: module-scoped servers are then started once per worker and backend, not again every time a
    worker switches modules (measured: about 3x faster). An explicit ``--dist`` is left alone."""
    numprocesses = getattr(config.option, "numprocesses", None)
    if (
        numprocesses
        and getattr(config.option, "dist", "no") == "no"
        and not getattr(config.option, "distload", False)
    ):
        config.option.dist = "loadscope"


def selected_backends() -> list[str]:
    """Backends from ``OPENPODS_TEST_DATABASES`` (comma list), default both."""
    raw = os.environ.get("OPENPODS_TEST_DATABASES", "")
    wanted = [b.strip().lower() for b in raw.split(",") if b.strip()] or list(ALL_BACKENDS)
    unknown = sorted(set(wanted) - set(ALL_BACKENDS))
    if unknown:
        raise pytest.UsageError(f"OPENPODS_TEST_DATABASES: unknown backend(s) {unknown}; use {ALL_BACKENDS}.")
    return wanted


# ------------------------------------------------------------------------------------------------ databases


@contextlib.contextmanager
def fresh_database(backend: str, directory: Path) -> Iterator[str]:
    """Yields the SQLAlchemy URL of a new, empty database; drops it (PostgreSQL) on exit.

    SQLite: a new file in ``directory``. PostgreSQL: ``CREATE DATABASE openpods_test_<random>``.
    """
    if backend == "sqlite":
        directory.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{directory / f'openpods-{uuid.uuid4().hex[:8]}.db'}"
        return
    if backend != "postgres":
        raise ValueError(f"unknown database backend {backend!r}")
    name = f"openpods_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.format(name=name)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=selected_backends())
def db_backend(request: pytest.FixtureRequest) -> str:
    """``"sqlite"`` or ``"postgres"``; module-scoped so that module-scoped servers group by backend."""
    return request.param


@pytest.fixture
def database_url(db_backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of the current backend for one test (no migrations applied)."""
    with fresh_database(db_backend, tmp_path / "db") as url:
        yield url


@pytest.fixture
def new_id() -> Callable[[str], str]:
    """``new_id("pod")`` → a unique, valid object id such as ``pod3f9a1c0b2e`` (lowercase, starts with a
    letter, no hyphens), for tests that share a server."""

    def make(prefix: str = "obj") -> str:
        return f"{prefix}{uuid.uuid4().hex[:10]}"

    return make


# ------------------------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerHandle:
    """A running OpenPods server (see the module docstring)."""

    base_url: str  # the default tenant's base_url: http://localhost:<port>
    other_base_url: str  # tenant "other": http://127.0.0.1:<port>
    port: int
    settings: Settings
    ctx: AppContext
    roles: set[str]
    admin_password: str = ADMIN_PASSWORD
    _passwords: dict[tuple[str, str], str] = field(default_factory=dict)
    _clients: list[httpx.Client] = field(default_factory=list)
    _stop: Callable[[], None] | None = None

    # --- identities
    @property
    def default_tenant(self) -> str:
        return self.settings.default_tenant

    def _tenant(self, tenant: str | None) -> str:
        return tenant or self.default_tenant

    def tenant_base_url(self, tenant: str | None = None) -> str:
        tenant_id = self._tenant(tenant)
        settings_tenant = self.settings.tenant(tenant_id)
        if settings_tenant is None:
            raise KeyError(f"no tenant {tenant_id!r} on this server")
        return self.settings.tenant_base_url(settings_tenant)

    def add_user(
        self, name: str, password: str | None = None, tenant: str | None = None, admin: bool = False
    ) -> str:
        """Creates (or updates: an upsert) a user of the embedded authenticator; returns its password
        (``<name>-pw`` unless given). The hash is argon2 with low cost parameters, to keep tests fast."""
        tenant_id = self._tenant(tenant)
        password = password or f"{name}-pw"
        with self.ctx.sessions() as s, s.begin():
            user = repo.get_user(s, tenant_id, name)
            if user is None:
                s.add(
                    User(
                        tenant_id=tenant_id,
                        username=name,
                        password_hash=_FAST_HASHER.hash(password),
                        is_admin=admin,
                        created_at=repo.utcnow(),
                    )
                )
            else:
                user.password_hash = _FAST_HASHER.hash(password)
                user.is_admin = admin
        self.ctx.token_cache.forget(tenant_id, name)  # the site-admin flag may have changed
        self._passwords[(tenant_id, name)] = password
        return password

    def token(self, user: str, tenant: str | None = None, ttl_sec: int | None = None) -> str:
        """An access token issued by the server's embedded authenticator (the user need not exist; site admin
        status is looked up per request)."""
        return self.ctx.tokens.issue(self._tenant(tenant), user, ttl_sec=ttl_sec)["access_token"]

    # --- clients
    def client(
        self, user: str | None = None, tenant: str | None = None, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Client:
        """An httpx.Client on the tenant's base_url with ``X-Tapis-Token`` of ``user`` (or the given
        ``token``); ``client()`` sends no token. Closed when the server stops."""
        headers = dict(kwargs.pop("headers", {}) or {})
        tok = token if token is not None else (self.token(user, tenant) if user else None)
        if tok:
            headers["X-Tapis-Token"] = tok
        kwargs.setdefault("verify", _SSL_CONTEXT)
        client = httpx.Client(
            base_url=self.tenant_base_url(tenant),
            headers=headers,
            timeout=kwargs.pop("timeout", 30.0),
            **kwargs,
        )
        self._clients.append(client)
        return client

    def tapis(
        self,
        user: str,
        password: str | None = None,
        *,
        base_url: str | None = None,
        tenant: str | None = None,
    ) -> Any:
        """An unmodified ``tapipy.tapis.Tapis(base_url=…, username=…, password=…)`` (no tenant_id, so tapipy
        finds the tenant through /v3/tenants), with ``get_tokens()`` called."""
        from tapipy.tapis import Tapis

        tenant_id = self._tenant(tenant)
        password = password or self._passwords.get((tenant_id, user)) or f"{user}-pw"
        t = Tapis(base_url=base_url or self.tenant_base_url(tenant), username=user, password=password)
        t.get_tokens()
        return t

    # --- database inspection
    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A read session on the server's database (do not use it to bypass the API in assertions of
        API behaviour; use it to check what was stored)."""
        with self.ctx.sessions() as s:
            yield s

    def rows(self, model: type, **where: Any) -> list[dict[str, Any]]:
        """Every row of ``model`` matching ``where`` (column == value), as dicts, ordered by primary key."""
        mapper = sa_inspect(model)
        query = select(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        query = query.order_by(*mapper.primary_key)
        with self.ctx.sessions() as s:
            return [{c.key: getattr(obj, c.key) for c in mapper.column_attrs} for obj in s.scalars(query)]

    def count(self, model: type, **where: Any) -> int:
        """Number of rows of ``model`` matching ``where`` (column == value)."""
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        with self.ctx.sessions() as s:
            return int(s.scalar(query) or 0)

    def allow_image(self, image: str, tenants: Iterable[str] = ("**",), description: str = "") -> None:
        """Puts ``image`` on the allowlist directly in the database (idempotent), e.g. for tests that are
        not about the allowlist API."""
        with self.ctx.sessions() as s, s.begin():
            row = s.get(Image, image)
            if row is None:
                s.add(
                    Image(
                        image=image,
                        tenants=list(tenants),
                        description=description,
                        creation_ts=repo.utcnow(),
                        added_by="tests",
                    )
                )
            else:
                row.tenants = list(tenants)

    def url(self, path: str, tenant: str | None = None) -> str:
        return self.tenant_base_url(tenant) + path

    def stop(self) -> None:
        """Stops the server (idempotent); fixtures call it at teardown."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


class _ServerThread(threading.Thread):
    """Runs ``serve_async`` in its own asyncio loop."""

    def __init__(self, settings: Settings, roles: set[str], ctx: AppContext) -> None:
        super().__init__(name=f"openpods-server-{settings.port}", daemon=True)
        self.settings, self.roles, self.ctx = settings, roles, ctx
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            self.ready.set()
            await serve_async(self.settings, self.roles, self.ctx, self.stop_event)

        try:
            asyncio.run(main())
        except BaseException as exc:  # SystemExit from uvicorn when the port is taken, too
            self.error = exc
        finally:
            self.ready.set()

    def request_stop(self) -> None:
        if self.loop is not None and self.stop_event is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self.loop.call_soon_threadsafe(self.stop_event.set)


@contextlib.contextmanager
def _without_openpods_env() -> Iterator[None]:
    """Test servers get exactly the settings the fixture passes: ``OPENPODS_*`` variables of the developer's
    shell (a config file, a database URL, …) are hidden while ``Settings`` reads the environment.
    ``OPENPODS_TEST_*`` variables (this suite's own switches) stay."""
    saved = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("OPENPODS_") and not k.startswith("OPENPODS_TEST_")
    }
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def _wait_healthy(thread: _ServerThread, port: int) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SEC
    while time.monotonic() < deadline:
        if not thread.is_alive():
            return False
        try:
            if (
                httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2, verify=_SSL_CONTEXT).status_code
                == 200
            ):
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


class ServerFactory:
    """Creates servers and stops them all in ``close()``."""

    def __init__(self, backend: str, tmp_dir: Path) -> None:
        self.backend = backend
        self.tmp_dir = tmp_dir
        self._exit = contextlib.ExitStack()
        self._count = 0

    def __call__(
        self, *, roles: Iterable[str] = ("api",), database_url: str | None = None, **overrides: Any
    ) -> ServerHandle:
        self._count += 1
        root = self.tmp_dir / f"server{self._count}"
        if database_url is None:
            database_url = self._exit.enter_context(fresh_database(self.backend, root / "db"))
        last_error: BaseException | str | None = None
        for _attempt in range(3):  # a free port can be taken between probing and binding
            port = overrides.get("port") or free_port()
            base_url = f"http://localhost:{port}"
            other_url = f"http://127.0.0.1:{port}"
            values: dict[str, Any] = {
                "data_dir": root / "data",
                "database_url": database_url,
                "host": "127.0.0.1",
                "admin_password": ADMIN_PASSWORD,
                "runtime": "none",
                "proxy_enabled": False,
                "start_podman_service": False,
                "base_url": base_url,
                "tenants": [
                    TenantSettings(tenant_id="default", base_url=base_url),
                    TenantSettings(tenant_id=OTHER_TENANT, base_url=other_url),
                ],
            }
            if "import_starter_catalog" in Settings.model_fields:
                values["import_starter_catalog"] = False  # an empty site; pass True to get the catalog
            if "volume_size_enforcement" in Settings.model_fields:
                # Plain directories: a machine has few loop devices, and suites create many volumes. Tests of
                # the loop filesystems pass volume_size_enforcement="loop".
                values["volume_size_enforcement"] = "api"
            values.update(overrides)
            values["port"] = port
            with _without_openpods_env():
                settings = Settings(**values)
            ctx = build_context(settings)
            thread = _ServerThread(settings, set(roles), ctx)
            thread.start()
            thread.ready.wait(STARTUP_TIMEOUT_SEC)
            if _wait_healthy(thread, port):
                handle = ServerHandle(
                    base_url=settings.effective_base_url,
                    other_base_url=other_url,
                    port=port,
                    settings=settings,
                    ctx=ctx,
                    roles=set(roles),
                )
                handle._passwords[(settings.default_tenant, "admin")] = ADMIN_PASSWORD

                def stop(thread: _ServerThread = thread, ctx: AppContext = ctx) -> None:
                    thread.request_stop()
                    thread.join(STOP_TIMEOUT_SEC)
                    ctx.engine.dispose()
                    if thread.is_alive():
                        raise RuntimeError(
                            f"OpenPods server on port {thread.settings.port} did not stop "
                            f"within {STOP_TIMEOUT_SEC}s"
                        )

                handle._stop = stop
                self._exit.callback(handle.stop)
                return handle
            thread.request_stop()
            thread.join(STOP_TIMEOUT_SEC)
            ctx.engine.dispose()
            last_error = thread.error or "no healthy /healthcheck answer"
            if "port" in overrides:
                break
        raise RuntimeError(f"OpenPods server did not start: {last_error!r}")

    def close(self) -> None:
        self._exit.close()


@pytest.fixture
def make_server(db_backend: str, tmp_path: Path) -> Iterator[ServerFactory]:
    """Factory of real servers that stop when the test ends (see the module docstring)."""
    factory = ServerFactory(db_backend, tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def make_module_server(db_backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Like ``make_server``, but the servers live until the end of the test module."""
    factory = ServerFactory(db_backend, tmp_path_factory.mktemp(f"servers-{db_backend}"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def server(make_module_server: ServerFactory) -> ServerHandle:
    """One server per backend per test module, with default settings."""
    return make_module_server()


__all__ = [
    "ADMIN_PASSWORD",
    "OTHER_TENANT",
    "ServerFactory",
    "ServerHandle",
    "free_port",
    "fresh_database",
]
