"""Starts and stops what a process runs, by role: the runtime and storage adapters, the spawner, the health
loop (with the log refresher and the snapshot scheduler), and the supervised Traefik."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from openpods.api.context import AppContext

log = logging.getLogger(__name__)


@dataclass
class Controllers:
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Callable[[], Any]] = field(default_factory=list)
    health: Any = None
    spawner: Any = None
    scheduler: Any = None

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                result = close()
                if asyncio.iscoroutine(result):
                    await result


def setup_storage(ctx: AppContext) -> None:
    from openpods.storage.local import LocalStorage

    if ctx.storage is None:
        ctx.storage = LocalStorage(ctx.settings.data_dir / "storage")


async def setup_runtime(ctx: AppContext, controllers: Controllers) -> None:
    """Connects to a Docker Engine API (Docker or Podman); starts `podman system service` when allowed and
    needed. Without an engine the service still runs and says why pods wait."""
    settings = ctx.settings
    if ctx.runtime is not None or settings.runtime == "none":
        if ctx.runtime is None:
            ctx.runtime_problem = "This site runs without a container runtime (runtime = none)."
        return
    from openpods.runtimes import engine
    from openpods.runtimes.docker import DockerRuntime

    url = await asyncio.to_thread(engine.find_engine_socket, settings.docker_host or None)
    if url is None and settings.start_podman_service and engine.podman_installed():
        sock = settings.data_dir / "run" / "podman.sock"
        try:
            proc = await asyncio.to_thread(engine.start_podman_service, sock, settings.data_dir / "run" /
                                           "containers.conf", default_ulimits=settings.default_ulimits)
            url = engine.socket_url(str(sock))
            if proc is not None:
                log.info("started podman system service on %s", url)
        except engine.EngineStartError as exc:
            log.error("could not start podman: %s", exc)
    if url is None:
        ctx.runtime_problem = engine.install_hint()
        log.error("%s", ctx.runtime_problem)
        return
    from openpods.domain.container_spec import parse_ulimit

    ctx.runtime = DockerRuntime(url, default_ulimits=[parse_ulimit(u) for u in settings.default_ulimits])
    controllers.closers.append(ctx.runtime.close)
    try:
        ctx.gpus_supported = await ctx.runtime.supports_gpus()
    except Exception:  # an engine that cannot answer now is asked again on the next start
        ctx.gpus_supported = False
    log.info("container engine: %s", url)


async def start_proxy(ctx: AppContext, controllers: Controllers) -> None:
    """Runs Traefik as a supervised child process (restarted if it dies, stopped with us)."""
    from openpods.proxy.traefik import TraefikError, TraefikSupervisor
    from openpods.services.proxy import routes_file, traefik_settings

    path = routes_file(ctx.settings, ctx.proxy_secret)
    if ctx.settings.proxy_provider == "file":
        # Push: the route table writes every change into Traefik's watched directory. Written once before
        # Traefik starts, so it never comes up with the routes of a previous run.
        ctx.proxy_config.file_path = path
        await asyncio.to_thread(ctx.proxy_config.sync_once, force=True)
    else:
        with contextlib.suppress(FileNotFoundError):  # left by a file-provider run: would route stale ports
            path.unlink()
    supervisor = TraefikSupervisor(traefik_settings(ctx.settings, ctx.proxy_secret))
    try:
        await supervisor.start()
    except (TraefikError, OSError) as exc:
        log.error("Traefik could not start; pods will have no URLs until it does: %s", exc)
        return
    controllers.closers.append(supervisor.stop)
    log.info("Traefik on :%s (HTTP) and :%s (HTTPS/TLS)", ctx.settings.proxy_http_port,
             ctx.settings.proxy_https_port)


async def start_controllers(ctx: AppContext, roles: Iterable[str]) -> Controllers:
    roles = set(roles)
    controllers = Controllers()
    ctx.loop = asyncio.get_running_loop()
    setup_storage(ctx)
    if roles & {"api", "spawner", "health"}:
        await setup_runtime(ctx, controllers)
    if "proxy" in roles and ctx.settings.proxy_enabled:
        await start_proxy(ctx, controllers)
    if ctx.proxy_config is not None and ("api" in roles or ctx.proxy_config.file_path is not None):
        # Keeps the routes up to date off the request path (served by /traefik-config, pushed to the file).
        controllers.tasks.append(asyncio.create_task(
            ctx.proxy_config.run(ctx.settings.proxy_sync_interval_sec), name="proxy-routes"))
    if "spawner" in roles:
        from openpods.controllers.spawner import Spawner

        controllers.spawner = Spawner(ctx)
        controllers.tasks.append(asyncio.create_task(controllers.spawner.run(), name="spawner"))
    if "health" in roles:
        from openpods.controllers.health import Health, LogRefresher

        controllers.health = Health(ctx)
        controllers.tasks.append(asyncio.create_task(controllers.health.run(), name="health"))
        refresher = LogRefresher(ctx, controllers.health)
        controllers.tasks.append(asyncio.create_task(refresher.run(), name="log-refresher"))
        from openpods.controllers.snapshots import SnapshotScheduler

        controllers.scheduler = SnapshotScheduler(ctx)
        controllers.tasks.append(asyncio.create_task(controllers.scheduler.run(), name="snapshots"))
    return controllers
