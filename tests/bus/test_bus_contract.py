"""One contract, every bus implementation (memory, and RabbitMQ at 127.0.0.1:5672)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from openpods.bus.base import HEALTH, SPAWNER, Bus, Wakeup
from openpods.bus.memory import MemoryBus
from openpods.bus.rabbitmq import RabbitMQBus

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def make_bus(kind: str, prefix: str) -> Bus:
    return MemoryBus() if kind == "memory" else RabbitMQBus(RABBIT_URL, queue_prefix=prefix)


@pytest.fixture(params=["memory", "rabbitmq"])
async def bus(request: pytest.FixtureRequest):
    prefix = f"openpods-test-{uuid.uuid4().hex[:8]}"
    b = make_bus(request.param, prefix)
    await b.start()
    yield b
    if isinstance(b, RabbitMQBus):
        for topic in ("spawner", "health", "snapshots"):
            await b._channel.queue_delete(b.queue_name(topic))
    await b.close()


async def test_wait_times_out_without_messages(bus: Bus) -> None:
    assert await bus.wait(HEALTH, 0.2) == []


async def test_published_wakeups_arrive_on_their_topic_only(bus: Bus) -> None:
    bus.publish(Wakeup(SPAWNER, "t1", "pod1"))
    bus.publish(Wakeup(SPAWNER, "t1", "pod2"))
    got: list[Wakeup] = []
    for _ in range(20):
        got += await bus.wait(SPAWNER, 1.0)
        if len(got) >= 2:
            break
    assert {w.object_id for w in got} == {"pod1", "pod2"}
    assert all(w.topic == SPAWNER and w.tenant_id == "t1" for w in got)
    assert await bus.wait(HEALTH, 0.2) == []


async def test_publish_from_another_thread(bus: Bus) -> None:
    thread = threading.Thread(target=bus.publish, args=(Wakeup(HEALTH, "t", "x"),))
    thread.start()
    thread.join()
    got: list[Wakeup] = []
    for _ in range(20):
        got += await bus.wait(HEALTH, 1.0)
        if got:
            break
    assert [w.object_id for w in got] == ["x"]


async def test_unacknowledged_wakeup_is_redelivered_to_the_next_consumer() -> None:
    """A consumer that dies before its next wait() never acknowledged: RabbitMQ hands the message on."""
    prefix = f"openpods-test-{uuid.uuid4().hex[:8]}"
    first = RabbitMQBus(RABBIT_URL, queue_prefix=prefix)
    await first.start()
    first.publish(Wakeup(SPAWNER, "t", "crash"))
    got: list[Wakeup] = []
    for _ in range(20):
        got = await first.wait(SPAWNER, 1.0)
        if got:
            break
    assert [w.object_id for w in got] == ["crash"]
    await first.close()  # "crash": no second wait, so no ack
    second = RabbitMQBus(RABBIT_URL, queue_prefix=prefix)
    await second.start()
    try:
        again: list[Wakeup] = []
        for _ in range(20):
            again = await second.wait(SPAWNER, 1.0)
            if again:
                break
        assert [w.object_id for w in again] == ["crash"]
        await second.wait(SPAWNER, 0.1)  # acknowledges
    finally:
        for topic in ("spawner", "health", "snapshots"):
            await second._channel.queue_delete(second.queue_name(topic))
        await second.close()


async def test_publish_before_start_is_harmless() -> None:
    bus = RabbitMQBus(RABBIT_URL, queue_prefix="openpods-test-unused")
    bus.publish(Wakeup(HEALTH))  # no loop yet: dropped, no exception
    await asyncio.sleep(0)
