"""The command bus: wake-ups for the controllers. Messages carry no state that matters — the database holds the
desired state — so a lost or duplicated message changes nothing; the next periodic pass catches up."""

from __future__ import annotations

import abc
from dataclasses import dataclass

SPAWNER = "spawner"
HEALTH = "health"
SNAPSHOTS = "snapshots"


@dataclass(frozen=True)
class Wakeup:
    topic: str
    tenant_id: str = ""
    object_id: str = ""


class Bus(abc.ABC):
    @abc.abstractmethod
    def publish(self, message: Wakeup) -> None:
        """Send a wake-up. Safe to call from any thread; never blocks for long and never raises for a
        broker outage (the periodic passes are the safety net)."""

    @abc.abstractmethod
    async def wait(self, topic: str, timeout: float) -> list[Wakeup]:
        """Wait up to ``timeout`` seconds for wake-ups on ``topic``; returns those received (maybe none).
        A message is acknowledged when the next ``wait`` is called, i.e. after the work it triggered."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (called once in the controllers' event loop)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect."""
