"""In-process bus for the single-process shape (`openpods serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict

from openpods.bus.base import Bus, Wakeup


class MemoryBus(Bus):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, list[Wakeup]] = defaultdict(list)
        self._events: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def _event(self, topic: str) -> asyncio.Event:
        return self._events.setdefault(topic, asyncio.Event())

    def publish(self, message: Wakeup) -> None:
        with self._lock:
            self._pending[message.topic].append(message)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._event(message.topic).set()
        else:
            loop.call_soon_threadsafe(self._event(message.topic).set)

    async def wait(self, topic: str, timeout: float) -> list[Wakeup]:
        event = self._event(topic)
        if not self._pending.get(topic):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        event.clear()
        with self._lock:
            messages, self._pending[topic] = self._pending[topic], []
        return messages
