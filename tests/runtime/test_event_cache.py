"""The engine-event cache behind DockerRuntime.list_managed (openpods.runtimes.event_cache).

- Pure: the ordering rules of ContainerCache (newest observation wins, marks survive a list in flight,
  tombstones, renames) and which events count.
- Real Podman (fixtures of tests/runtime/conftest.py): the cache follows changes made behind the runtime's back;
  a container changed while the stream is down is seen after the reconnect; a periodic list corrects a cache that
  missed events; a stale cache is never served.

Waits poll with a generous bound that only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import docker
import pytest

from openpods.domain.container_spec import Ulimit
from openpods.runtimes.base import ContainerState
from openpods.runtimes.docker import DockerRuntime
from openpods.runtimes.event_cache import ContainerCache, EventStream, event_names

TEST_ULIMITS = (Ulimit("nofile", 20000, 20000), Ulimit("nproc", 32768, 32768))  # as tests/runtime/conftest.py

WAIT_BOUND_SEC = 60.0


def state(name: str, st: str = "running", instance: str = "i1") -> ContainerState:
    return ContainerState(name=name, labels={"openpods.instance": instance}, state=st)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ pure


def test_event_names_skip_what_changes_nothing() -> None:
    def ev(action: str, **attrs: str) -> dict[str, Any]:
        return {"Type": "container", "Action": action, "Actor": {"ID": "abc", "Attributes": attrs}}

    assert event_names(ev("die", name="c1")) == ["c1"]
    assert event_names(ev("rename", name="new", oldName="/old")) == ["new", "old"]  # Docker names the old one
    for action in ("exec", "exec_died", "exec_start: sh -c true", "health_status", "attach"):
        assert event_names(ev(action, name="c1")) == [], action
    assert event_names({"Type": "image", "Action": "pull", "Actor": {"Attributes": {"name": "x"}}}) == []


def test_newest_observation_wins_and_tombstones_block_older_ones() -> None:
    cache = ContainerCache()
    old = cache.tick()  # an inspect that started first...
    new = cache.tick()
    assert cache.apply("c", (state("c", "exited"), "id1"), new)
    assert not cache.apply("c", (state("c", "running"), "id1"), old)  # ...and answered last: ignored
    assert [s.state for s in cache.snapshot()] == ["exited"]
    gone = cache.tick()
    cache.apply("c", None, gone)
    assert not cache.apply("c", (state("c"), "id1"), new)
    assert cache.snapshot() == []


def test_an_event_during_a_list_in_flight_is_not_lost() -> None:
    cache = ContainerCache()
    seq = cache.tick()  # the full list starts
    cache.mark(["c"])  # an event arrives while it is in flight
    drift = cache.apply_list([(state("c", "running"), "id1")], seq)  # the list saw the state before the event
    assert drift == []
    assert cache.dirty() == ["c"]  # so c is still inspected after the list
    cache.apply("c", (state("c", "exited"), "id1"), cache.tick())
    assert cache.dirty() == []
    assert [s.state for s in cache.snapshot()] == ["exited"]


def test_an_inspect_older_than_a_list_cannot_bring_a_container_back() -> None:
    cache = ContainerCache()
    cache.apply_list([(state("c"), "id1")], cache.tick())
    inspect_seq = cache.tick()  # an inspect starts and sees c...
    cache.apply_list([], cache.tick())  # ...a later list no longer has it (removed)...
    assert not cache.apply("c", (state("c"), "id1"), inspect_seq)  # ...and the inspect's answer comes last
    assert cache.snapshot() == []


def test_marks_before_a_list_are_settled_by_it_and_drift_is_reported() -> None:
    cache = ContainerCache()
    cache.apply_list([(state("a"), "ida"), (state("b"), "idb")], cache.tick())
    cache.mark(["a"])
    drift = cache.apply_list([(state("a", "exited"), "ida"), (state("c"), "idc")], cache.tick())
    assert sorted(drift) == ["b"]  # a was marked (its change was known); b vanished without an event
    assert cache.dirty() == []
    assert sorted(s.name for s in cache.snapshot()) == ["a", "c"]
    drift = cache.apply_list([(state("a", "exited"), "ida"), (state("c", "exited"), "idc")], cache.tick())
    assert drift == ["c"]


def test_a_rename_event_marks_the_old_name_through_the_engine_id() -> None:
    cache = ContainerCache()
    cache.apply_list([(state("old"), "id1")], cache.tick())
    cache.mark(["new"], "id1")  # Podman's rename event names only the new name
    assert cache.dirty() == ["new", "old"]


# ------------------------------------------------------------------------------------------------ real Podman


class GatedStreams:
    """Wraps the runtime's ``open_stream``: reconnects wait while ``closed_gate`` is set, and events of names in
    ``drop`` are swallowed (a stream that misses events)."""

    def __init__(self, open_stream: Callable[[float], EventStream]) -> None:
        self._open = open_stream
        self.gate = threading.Event()
        self.gate.set()
        self.drop: set[str] = set()
        self.opened = 0

    def __call__(self, since: float) -> EventStream:
        if not self.gate.wait(WAIT_BOUND_SEC):
            raise ConnectionError("gate closed for too long")
        stream = self._open(since)
        self.opened += 1
        drop = self.drop

        class Lossy:
            def __iter__(self) -> Iterator[dict[str, Any]]:
                for event in stream:
                    if not (set(event_names(event)) & drop):
                        yield event

            def close(self) -> None:
                stream.close()

        return Lossy()


@pytest.fixture
async def events_runtime(engine_url: str, test_images: None) -> AsyncIterator[tuple[DockerRuntime, GatedStreams]]:
    rt = DockerRuntime(engine_url, default_ulimits=TEST_ULIMITS, events=True, relist_sec=600)
    cache = rt.event_cache
    assert cache is not None
    gated = GatedStreams(cache._open_stream)
    cache._open_stream = gated
    cache._retry_sec = 0.05  # reconnect quickly in these tests
    yield rt, gated
    gated.gate.set()
    await rt.close()


async def until(probe: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool]) -> Any:
    deadline = asyncio.get_running_loop().time() + WAIT_BOUND_SEC
    value = await probe()
    while not ok(value):
        assert asyncio.get_running_loop().time() < deadline, f"condition never held; last value: {value!r}"
        await asyncio.sleep(0.05)
        value = await probe()
    return value


async def fresh(rt: DockerRuntime) -> None:
    cache = rt.event_cache
    assert cache is not None
    await rt.list_managed()  # starts the stream
    await until(lambda: asyncio.sleep(0, cache.fresh), bool)


def state_of(rt: DockerRuntime, name: str) -> Callable[[], Awaitable[str | None]]:
    async def probe() -> str | None:
        found = [c.state for c in await rt.list_managed() if c.name == name]
        return found[0] if found else None

    return probe


async def test_cache_follows_changes_made_behind_the_runtimes_back(
    events_runtime: tuple[DockerRuntime, GatedStreams], make_spec: Callable[..., Any], raw_api: docker.APIClient
) -> None:
    rt, _ = events_runtime
    cache = rt.event_cache
    assert cache is not None
    await fresh(rt)
    spec = make_spec("busybox")
    await rt.ensure_running(spec)
    assert await state_of(rt, spec.name)() == "running"  # its own change: exact at once
    real_lists = cache.real_lists
    raw_api.kill(spec.name)
    await until(state_of(rt, spec.name), lambda s: s == "exited")
    raw_api.start(spec.name)
    await until(state_of(rt, spec.name), lambda s: s == "running")
    raw_api.stop(spec.name, timeout=1)
    await until(state_of(rt, spec.name), lambda s: s == "exited")
    raw_api.remove_container(spec.name, force=True)
    await until(state_of(rt, spec.name), lambda s: s is None)
    assert cache.real_lists == real_lists  # every answer came from the cache...
    assert cache.fresh
    assert cache.inspects < 40  # ...at one inspect per change, not per list
    await rt.remove(spec.name)


async def test_a_change_while_the_stream_is_down_is_seen_after_the_reconnect(
    events_runtime: tuple[DockerRuntime, GatedStreams], make_spec: Callable[..., Any], raw_api: docker.APIClient
) -> None:
    rt, gated = events_runtime
    cache = rt.event_cache
    assert cache is not None
    await fresh(rt)
    spec = make_spec("busybox")
    await rt.ensure_running(spec)
    assert await state_of(rt, spec.name)() == "running"
    opened = gated.opened
    gated.gate.clear()  # the engine "goes away": no reconnect until the gate opens
    cache.break_stream()
    await until(lambda: asyncio.sleep(0, cache.fresh), lambda f: not f)
    gated.drop.add(spec.name)  # not even replayed (since=) after the reconnect: only its full list can tell
    raw_api.kill(spec.name)
    gated.gate.set()
    await until(lambda: asyncio.sleep(0, cache.fresh and gated.opened > opened), bool)
    real_lists = cache.real_lists
    assert await state_of(rt, spec.name)() == "exited"  # the list taken after the reconnect has it
    assert cache.real_lists == real_lists  # and it was served from the cache
    await rt.remove(spec.name)


async def test_a_stale_cache_is_never_served(
    events_runtime: tuple[DockerRuntime, GatedStreams], make_spec: Callable[..., Any], raw_api: docker.APIClient
) -> None:
    rt, gated = events_runtime
    cache = rt.event_cache
    assert cache is not None
    await fresh(rt)
    spec = make_spec("busybox")
    await rt.ensure_running(spec)
    gated.gate.clear()
    cache.break_stream()
    await until(lambda: asyncio.sleep(0, cache.fresh), lambda f: not f)
    raw_api.kill(spec.name)
    real_lists = cache.real_lists
    assert await state_of(rt, spec.name)() == "exited"  # a real list, at once
    assert cache.real_lists == real_lists + 1
    gated.gate.set()
    await rt.remove(spec.name)


async def test_a_periodic_list_corrects_a_cache_that_missed_events(
    events_runtime: tuple[DockerRuntime, GatedStreams], make_spec: Callable[..., Any], raw_api: docker.APIClient
) -> None:
    rt, gated = events_runtime
    cache = rt.event_cache
    assert cache is not None
    spec = make_spec("busybox")
    gated.drop.add(spec.name)  # the stream loses every event of this container
    await fresh(rt)
    await rt.ensure_running(spec)
    assert await state_of(rt, spec.name)() == "running"
    raw_api.kill(spec.name)
    await asyncio.sleep(1.0)  # its events would have arrived by now
    assert await state_of(rt, spec.name)() == "running"  # missed: the cache is wrong...
    cache.relist_sec = 0.2
    await until(state_of(rt, spec.name), lambda s: s == "exited")  # ...until the background list corrects it
    assert cache.fresh
    await rt.remove(spec.name)


def test_an_inspect_the_engine_refuses_falls_back_to_a_list() -> None:
    """One container the engine will not describe (an error other than 'no such container') must not make
    every list fail: the cache lists instead."""
    import queue

    from openpods.runtimes.event_cache import ManagedCache

    events: queue.Queue[dict[str, Any] | None] = queue.Queue()

    class Stream:
        def __iter__(self) -> Iterator[dict[str, Any]]:
            while (event := events.get()) is not None:
                yield event

        def close(self) -> None:
            events.put(None)

    engine = {"a": state("a"), "b": state("b")}

    def inspect(name: str) -> Any:
        if name == "b":
            raise RuntimeError("engine error 500")
        return (engine[name], name) if name in engine else None

    cache = ManagedCache(open_stream=lambda since: Stream(), list_all=lambda: [(s, n) for n, s in engine.items()],
                         inspect=inspect)
    try:
        cache.start()
        for _ in range(int(WAIT_BOUND_SEC / 0.01)):
            if cache.fresh:
                break
            threading.Event().wait(0.01)
        assert cache.fresh
        engine["b"] = state("b", "exited")
        events.put({"Type": "container", "Action": "die", "Actor": {"ID": "b", "Attributes": {"name": "b"}}})
        cache.changed("b")  # a mark list() sees whether or not the background got to it first
        lists = cache.real_lists
        assert {s.name: s.state for s in cache.list()} == {"a": "running", "b": "exited"}
        assert cache.real_lists > lists
    finally:
        cache.close()
