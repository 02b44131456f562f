"""RabbitMQ bus: a process that stops listening to a topic (its waiting task is cancelled, e.g. it is no longer
the health leader) hands the topic's wake-ups back, so the process that now listens gets all of them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from openpods.bus.base import HEALTH, Wakeup
from openpods.bus.rabbitmq import RabbitMQBus

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"


async def test_a_cancelled_listener_hands_its_wakeups_to_the_next() -> None:
    prefix = f"openpods-test-{uuid.uuid4().hex[:8]}"
    old, new = RabbitMQBus(RABBIT_URL, queue_prefix=prefix), RabbitMQBus(RABBIT_URL, queue_prefix=prefix)
    await old.start()
    await new.start()
    try:
        old.publish(Wakeup(HEALTH, "t", "done"))  # old consumes and handles one wake-up...
        assert [w.object_id for w in await old.wait(HEALTH, 5.0)] == ["done"]
        waiting = asyncio.create_task(old.wait(HEALTH, 30.0))
        await asyncio.sleep(0.2)
        waiting.cancel()  # ...acknowledges it on its next wait, and stops listening during that wait
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        for i in range(4):
            old.publish(Wakeup(HEALTH, "t", f"pod{i}"))
        got: set[str] = set()
        for _ in range(20):
            got |= {w.object_id for w in await new.wait(HEALTH, 1.0)}
            if len(got) == 4:
                break
        assert got == {"pod0", "pod1", "pod2", "pod3"}
        assert await new.wait(HEALTH, 0.5) == []  # "done" was acknowledged: not handled twice
    finally:
        with contextlib.suppress(Exception):
            await new._channel.queue_delete(new.queue_name(HEALTH))
        for topic in ("spawner", "snapshots"):
            with contextlib.suppress(Exception):
                await new._channel.queue_delete(new.queue_name(topic))
        await old.close()
        await new.close()
