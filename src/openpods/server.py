"""Process runner: one asyncio loop hosting the roles this process plays (api, spawner, health, proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable

import uvicorn

from openpods.api.app import create_app
from openpods.bootstrap import build_context, ensure_admin, ensure_starter_catalog
from openpods.config import Settings
from openpods.context import AppContext

log = logging.getLogger(__name__)


async def serve_async(
    settings: Settings, roles: Iterable[str], ctx: AppContext | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run until SIGINT/SIGTERM or until ``stop`` is set (tests set it from another thread with
    ``loop.call_soon_threadsafe(stop.set)``)."""
    roles = set(roles)
    ctx = ctx or await _build_context_when_database_answers(settings)
    ensure_admin(ctx)
    if settings.import_starter_catalog:
        ensure_starter_catalog(ctx)
    await ctx.bus.start()
    tasks: list[asyncio.Task[None]] = []
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)

    from openpods.controllers.runner import start_controllers

    controllers = await start_controllers(ctx, roles)
    server = None
    if "api" in roles:
        config = uvicorn.Config(
            create_app(ctx),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # The client address (login throttle) is the forwarded one only behind a proxy we trust.
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        tasks.append(asyncio.create_task(server.serve(), name="api"))
        log.info("OpenPods API on %s (site admin: admin)", settings.effective_base_url)
    try:
        waiters = [asyncio.create_task(stop.wait()), *tasks]
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception():
                raise task.exception()  # type: ignore[misc]
    finally:
        if server is not None:
            server.should_exit = True
        await controllers.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)
        await ctx.bus.close()
        if ctx.reads is not None:
            await ctx.reads.close()


async def _build_context_when_database_answers(settings: Settings) -> AppContext:
    """A process started while the database is down (restarting, not up yet in a cluster) waits for it
    instead of exiting."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    delay = 1.0
    while True:
        try:
            return await asyncio.to_thread(build_context, settings)
        except (OperationalError, InterfaceError) as exc:
            log.warning("database unavailable (%s); retrying in %.0fs", str(exc).splitlines()[0], delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)


def run(settings: Settings, roles: Iterable[str]) -> None:
    asyncio.run(serve_async(settings, roles))
