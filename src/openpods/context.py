"""Everything a request or a controller needs, built once per process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from openpods.auth.token_cache import VerifiedTokenCache
from openpods.auth.tokens import SecretBox, TokenService
from openpods.bus.base import Bus
from openpods.config import Settings
from openpods.domain.pods import SiteLimits
from openpods.runtimes.base import Runtime
from openpods.storage.base import StorageBackend
from openpods.storage.pins import MountPins
from openpods.store.repo import utcnow
from openpods.store.view_cache import FragmentCache

if TYPE_CHECKING:  # services sit above this module: importing them at run time would cycle
    from openpods.services.proxy import RouteTable
    from openpods.store.asyncread import AsyncReadPool

T = TypeVar("T")


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    tokens: TokenService
    secrets: SecretBox
    bus: Bus
    runtime: Runtime | None = None  # set when a container engine is configured
    runtime_problem: str = ""  # why there is no runtime (shown on pods waiting in REQUESTED)
    gpus_supported: bool = False  # whether the runtime can give containers GPUs
    installation_id: str = ""  # labels this installation's containers (never touch another's)
    proxy_config: RouteTable | None = None  # Traefik routes, kept up to date in the background
    storage: StorageBackend | None = None
    mount_pins: MountPins | None = None  # pinned sub_path mount sources (spawner)
    proxy_secret: str = ""
    clock: Callable[[], datetime] = field(default=utcnow)
    loop: asyncio.AbstractEventLoop | None = None  # runs the runtime adapter (set by the controllers' runner)
    token_cache: VerifiedTokenCache = field(default_factory=VerifiedTokenCache)  # verified tokens, short-lived
    pod_views: FragmentCache = field(default_factory=FragmentCache)  # get/list_pods: rendered pods by revision
    reads: AsyncReadPool | None = None  # PostgreSQL: the hot reads on the event loop (store.asyncread)

    def run_async(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run a coroutine on the adapters' loop from a worker thread (sync endpoints)."""
        if self.loop is None:
            raise RuntimeError("run_async needs the adapters' event loop (set by the controllers' runner)")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def limits(self) -> SiteLimits:
        s = self.settings
        return SiteLimits(
            cpu_min=s.cpu_min, cpu_max=s.cpu_max, mem_min=s.mem_min, mem_max=s.mem_max, gpus_max=s.gpus_max,
            min_time_to_stop_sec=s.min_time_to_stop_sec, compute_queues=tuple(s.compute_queues),
            max_networking_stanzas=s.max_networking_stanzas,
        )
