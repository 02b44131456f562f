"""RabbitMQ bus for the cluster shape: one durable queue per topic, shared by the processes of that role.

A message is acknowledged on the *next* ``wait`` of its topic, i.e. after the work it triggered; a process
killed mid-way leaves it unacknowledged and RabbitMQ hands it to the next consumer. Publishing never raises:
if the broker is down the message is dropped and the periodic passes catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aio_pika

from openpods.bus.base import HEALTH, SNAPSHOTS, SPAWNER, Bus, Wakeup

log = logging.getLogger(__name__)
TOPICS = (SPAWNER, HEALTH, SNAPSHOTS)


class RabbitMQBus(Bus):
    def __init__(self, url: str, *, queue_prefix: str = "openpods") -> None:
        self.url = url
        self.prefix = queue_prefix
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: Any = None
        self._channel: Any = None
        self._inbox: dict[str, asyncio.Queue[Any]] = {}
        self._unacked: dict[str, list[Any]] = {}
        self._consuming: set[str] = set()

    def queue_name(self, topic: str) -> str:
        return f"{self.prefix}.{topic}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._connection = await aio_pika.connect_robust(self.url)
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=100)
        for topic in TOPICS:
            await self._channel.declare_queue(self.queue_name(topic), durable=True)

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _publish(self, message: Wakeup) -> None:
        body = json.dumps({"tenant_id": message.tenant_id, "object_id": message.object_id}).encode()
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self.queue_name(message.topic),
            )
        except Exception as exc:  # the periodic passes are the safety net
            log.warning("could not publish %s wake-up: %s", message.topic, exc)

    def publish(self, message: Wakeup) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self._channel is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self._publish(message))
        else:
            asyncio.run_coroutine_threadsafe(self._publish(message), loop)

    async def _consume(self, topic: str) -> None:
        inbox = self._inbox.setdefault(topic, asyncio.Queue())
        queue = await self._channel.declare_queue(self.queue_name(topic), durable=True)
        await queue.consume(inbox.put)
        self._consuming.add(topic)

    async def wait(self, topic: str, timeout: float) -> list[Wakeup]:
        for message in self._unacked.pop(topic, []):
            with contextlib.suppress(Exception):
                await message.ack()
        if topic not in self._consuming:
            await self._consume(topic)
        inbox = self._inbox[topic]
        received: list[Any] = []
        try:
            received.append(await asyncio.wait_for(inbox.get(), timeout))
        except TimeoutError:
            return []
        while not inbox.empty():
            received.append(inbox.get_nowait())
        self._unacked[topic] = received
        out = []
        for message in received:
            try:
                data = json.loads(message.body)
            except ValueError:
                data = {}
            out.append(Wakeup(topic, str(data.get("tenant_id", "")), str(data.get("object_id", ""))))
        return out
