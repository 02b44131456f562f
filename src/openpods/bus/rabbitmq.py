"""RabbitMQ bus for the cluster shape: one durable queue per topic, shared by the processes of that role.

A message is acknowledged on the *next* ``wait`` of its topic, i.e. after the work it triggered; a process
killed mid-way leaves it unacknowledged and RabbitMQ hands it to the next consumer. Publishing never raises:
if the broker is down the message is dropped and the periodic passes catch up.

Broker outages: the connection is aio-pika's robust one (it reconnects and restores the channel, the queues
and the consumers by itself). A broker that is down when the process starts is retried in the background.
While there is no broker, ``wait`` simply times out, so the controllers keep making their periodic passes; after
every (re)connection each topic gets a local wake-up, so the controllers re-scan the database at once for what
was requested while the broker was away (those wake-ups may have been lost; the desired state was not).
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
RECONNECT_INTERVAL_SEC = 2.0  # between connection attempts while the broker is away
PUBLISH_TIMEOUT_SEC = 5.0  # a publish during an outage gives up after this (the periodic passes catch up)


class RabbitMQBus(Bus):
    def __init__(self, url: str, *, queue_prefix: str = "openpods") -> None:
        self.url = url
        self.prefix = queue_prefix
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: Any = None
        self._channel: Any = None
        # Incoming messages, or None for a local wake-up (after a reconnection): nothing to acknowledge.
        self._inbox: dict[str, asyncio.Queue[Any]] = {t: asyncio.Queue() for t in TOPICS}
        self._unacked: dict[str, list[Any]] = {}
        self._consuming: dict[str, tuple[Any, str]] = {}  # topic -> (queue, consumer tag)
        self._connector: asyncio.Task[None] | None = None

    def queue_name(self, topic: str) -> str:
        return f"{self.prefix}.{topic}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._connect()
        except Exception as exc:
            log.warning("RabbitMQ at %s unavailable (%s); retrying in the background", self._safe_url(), exc)
            self._connector = asyncio.create_task(self._connect_until_done(), name="rabbitmq-connect")

    def _safe_url(self) -> str:
        return self.url.split("@")[-1]

    async def _connect(self) -> None:
        connection = await aio_pika.connect_robust(self.url, reconnect_interval=RECONNECT_INTERVAL_SEC)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=100)
            for topic in TOPICS:
                await channel.declare_queue(self.queue_name(topic), durable=True)
        except Exception:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        connection.reconnect_callbacks.add(self._on_reconnect)
        self._connection, self._channel = connection, channel

    async def _connect_until_done(self) -> None:
        while True:
            await asyncio.sleep(RECONNECT_INTERVAL_SEC)
            try:
                await self._connect()
            except Exception as exc:
                log.debug("RabbitMQ still unavailable: %s", exc)
                continue
            log.info("connected to RabbitMQ at %s", self._safe_url())
            self._on_reconnect(None)
            return

    def _on_reconnect(self, _sender: Any, *args: Any) -> None:
        log.info("RabbitMQ connection (re)established; waking every controller for a full re-scan")
        # Deliveries of the old channel cannot be acknowledged any more (RabbitMQ re-queued them).
        self._unacked.clear()
        for topic in TOPICS:
            self._inbox[topic].put_nowait(None)

    async def close(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connector
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _publish(self, message: Wakeup) -> None:
        body = json.dumps({"tenant_id": message.tenant_id, "object_id": message.object_id}).encode()
        try:
            if self._channel is None:
                raise ConnectionError("not connected")
            await asyncio.wait_for(
                self._channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=self.queue_name(message.topic),
                ),
                PUBLISH_TIMEOUT_SEC,
            )
        except Exception as exc:  # the periodic passes are the safety net
            log.warning("could not publish %s wake-up: %s", message.topic, exc)

    def publish(self, message: Wakeup) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
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
        queue = await self._channel.declare_queue(self.queue_name(topic), durable=True)
        tag = await queue.consume(self._inbox[topic].put)
        self._consuming[topic] = (queue, tag)

    async def _stop_consuming(self, topic: str) -> None:
        """Hand this topic's messages back to RabbitMQ for the other consumers: the process stopped
        listening (e.g. it is no longer the health leader), and must not sit on wake-ups meant for the one
        that is."""
        consumer = self._consuming.pop(topic, None)
        held = list(self._unacked.pop(topic, []))
        inbox = self._inbox[topic]
        while not inbox.empty():
            held.append(inbox.get_nowait())
        with contextlib.suppress(Exception):
            if consumer is not None:
                queue, tag = consumer
                await queue.cancel(tag)
            for message in held:
                if message is not None:
                    await message.nack(requeue=True)

    async def wait(self, topic: str, timeout: float) -> list[Wakeup]:
        for message in self._unacked.pop(topic, []):
            with contextlib.suppress(Exception):
                await message.ack()
        if topic not in self._consuming and self._channel is not None:
            try:
                await asyncio.wait_for(self._consume(topic), timeout)
            except Exception as exc:  # broker away: periodic passes until it is back
                log.warning("cannot consume %s wake-ups yet: %s", topic, exc)
        inbox = self._inbox[topic]
        received: list[Any] = []
        try:
            received.append(await asyncio.wait_for(inbox.get(), timeout))
        except TimeoutError:
            return []
        except asyncio.CancelledError:
            # The caller stopped listening to this topic (its task was cancelled).
            if self._loop is not None and not self._loop.is_closed():
                self._loop.create_task(self._stop_consuming(topic))
            raise
        while not inbox.empty():
            received.append(inbox.get_nowait())
        self._unacked[topic] = [m for m in received if m is not None]
        out = []
        for message in received:
            if message is None:
                out.append(Wakeup(topic))
                continue
            try:
                data = json.loads(message.body)
            except ValueError:
                data = {}
            out.append(Wakeup(topic, str(data.get("tenant_id", "")), str(data.get("object_id", ""))))
        return out
