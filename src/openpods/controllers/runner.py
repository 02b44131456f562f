"""Starts and stops the controller tasks a process runs, by role."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from openpods.api.context import AppContext

log = logging.getLogger(__name__)


@dataclass
class Controllers:
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list = field(default_factory=list)

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


async def start_controllers(ctx: AppContext, roles: Iterable[str]) -> Controllers:
    roles = set(roles)
    controllers = Controllers()
    return controllers
