"""The health loop's incremental passes (``controllers.health``): a pass reads in full and decides only pods
whose row, container or deadline changed, yet still fixes everything a full pass fixes. A fake runtime at the
engine boundary (the list call is what these tests vary); a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from openpods.bootstrap import build_context
from openpods.config import Settings
from openpods.controllers.health import Health
from openpods.domain import status as st
from openpods.domain.container_spec import (
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_POD_ID,
    LABEL_TENANT,
    MANAGED_VALUE,
    container_name,
)
from openpods.runtimes.base import ContainerState, RuntimeUnavailable
from openpods.store.db import transaction
from openpods.store.tables import Pod

T0 = datetime(2026, 3, 1, 12, 0, 0)


class FakeRuntime:
    """The engine boundary: ``containers`` is what the next list call shows."""

    def __init__(self) -> None:
        self.containers: dict[str, ContainerState] = {}
        self.calls: Counter[str] = Counter()

    async def list_managed(self) -> list[ContainerState]:
        self.calls["list"] += 1
        return list(self.containers.values())

    async def remove(self, name: str, timeout_sec: float = 10) -> None:
        self.calls["remove"] += 1
        self.containers.pop(name, None)

    async def logs(self, name: str, max_bytes: int) -> str:
        self.calls["logs"] += 1
        return ""

    async def prune_networks(self, installation_id: str, keep: Any) -> list[str]:
        return []  # housekeeping once a minute, not part of what a pass costs


class Env:
    def __init__(self, database_url: str, data_dir: Path, **settings: Any) -> None:
        self.ctx = build_context(Settings(data_dir=data_dir, database_url=database_url, runtime="none",
                                          proxy_enabled=False, import_starter_catalog=False,
                                          stuck_deadline_sec=180, **settings))
        self.runtime = FakeRuntime()
        self.ctx.runtime = self.runtime
        self.now = T0
        self.health = Health(self.ctx, clock=lambda: self.now)

    def add_pod(self, pod_id: str, status: str, requested: str = st.ON, *, since: datetime | None = None,
                running: bool = False) -> None:
        since = since or self.now - timedelta(seconds=5)
        with transaction(self.ctx.sessions) as s:
            s.add(Pod(tenant_id="default", pod_id=pod_id, image="localhost/x", status=status,
                      status_requested=requested, status_since=since, instance_id=f"i-{pod_id}",
                      start_instance_ts=since if running else None, time_to_stop_default=-1,
                      status_container={"phase": "Running", "start_time": None, "message": "Container is running."}
                      if status == st.AVAILABLE else {},
                      creation_ts=since, update_ts=since))
        if running:
            self.start_container(pod_id)

    def start_container(self, pod_id: str, state: str = "running") -> None:
        labels = {LABEL_TENANT: "default", LABEL_POD_ID: pod_id, LABEL_INSTANCE: f"i-{pod_id}",
                  LABEL_INSTALLATION: self.ctx.installation_id, LABEL_MANAGED: MANAGED_VALUE}
        name = container_name("default", pod_id, self.ctx.installation_id)
        self.runtime.containers[name] = ContainerState(name=name, labels=labels, state=state)  # type: ignore[arg-type]

    def pod(self, pod_id: str) -> Pod:
        with self.ctx.sessions() as s:
            pod = s.get(Pod, ("default", pod_id))
            assert pod is not None
            return pod

    async def incremental(self) -> Any:
        self.now += timedelta(seconds=2)
        return await self.health.pass_once(full=False)


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> Env:
    return Env(database_url, tmp_path / "data")


async def steady(env: Env, n: int = 20) -> None:
    """``n`` running pods, and a first (full) pass that finds nothing to do for them."""
    for i in range(n):
        env.add_pod(f"pod{i:03d}", st.AVAILABLE, running=True, since=env.now - timedelta(hours=1))
    first = await env.health.pass_once()
    assert first.full and first.loaded == n and first.changes == 0


async def test_a_pass_without_changes_reads_and_decides_nothing(env: Env) -> None:
    await steady(env)
    stats = await env.incremental()
    assert (stats.pods, stats.loaded, stats.decided, stats.changes, stats.engine_calls) == (20, 0, 0, 0, 1)


async def test_an_incremental_pass_notices_a_vanished_container(env: Env) -> None:
    await steady(env)
    del env.runtime.containers[container_name("default", "pod007", env.ctx.installation_id)]
    stats = await env.incremental()
    assert stats.decided == 1 and stats.changes == 1
    assert env.pod("pod007").status == st.STOPPED
    # STOPPED while ON is re-requested by the next pass (the pod's row changed: it is read again).
    stats = await env.incremental()
    assert (stats.loaded, stats.changes) == (1, 1)
    assert env.pod("pod007").status == st.REQUESTED
    assert all(env.pod(f"pod{i:03d}").status == st.AVAILABLE for i in range(20) if i != 7)


async def test_an_incremental_pass_notices_a_changed_desired_state(env: Env) -> None:
    await steady(env)
    with transaction(env.ctx.sessions) as s:
        pod = s.get(Pod, ("default", "pod003"))
        assert pod is not None
        pod.status_requested = st.OFF  # as stop_pod does (the ORM bumps the revision)
    stats = await env.incremental()
    assert stats.loaded == 1
    assert env.runtime.calls["remove"] == 1
    assert container_name("default", "pod003", env.ctx.installation_id) not in env.runtime.containers
    assert env.pod("pod003").status == st.STOPPED


async def test_a_stuck_pod_is_redriven_when_its_deadline_passes_with_nothing_else_changing(env: Env) -> None:
    await steady(env, 5)
    env.add_pod("stuck", st.SPAWNER_SETUP, since=env.now - timedelta(seconds=30))
    stats = await env.incremental()
    assert stats.loaded == 1 and stats.changes == 0  # within the deadline: nothing to do yet
    for _ in range(3):  # nothing changes: the pod is not even looked at
        stats = await env.incremental()
        assert (stats.loaded, stats.decided) == (0, 0)
    env.now = env.now + timedelta(seconds=180)
    stats = await env.incremental()
    assert (stats.loaded, stats.decided, stats.changes) == (0, 1, 1)
    pod = env.pod("stuck")
    assert pod.status == st.REQUESTED


async def test_time_to_stop_fires_without_any_change(env: Env) -> None:
    env.add_pod("brief", st.AVAILABLE, running=True, since=env.now - timedelta(seconds=100))
    with transaction(env.ctx.sessions) as s:
        pod = s.get(Pod, ("default", "brief"))
        assert pod is not None
        pod.time_to_stop_default = 600
        pod.time_to_stop_ts = pod.start_instance_ts + timedelta(seconds=600)  # type: ignore[operator]
    await env.health.pass_once()
    assert (await env.incremental()).decided == 0
    env.now += timedelta(seconds=600)
    await env.incremental()
    assert env.pod("brief").status_requested == st.OFF


async def test_a_failed_action_is_retried_by_the_next_pass(env: Env) -> None:
    await steady(env, 3)
    with transaction(env.ctx.sessions) as s:
        pod = s.get(Pod, ("default", "pod001"))
        assert pod is not None
        pod.status, pod.status_requested = st.DELETING, st.OFF
    calls: list[str] = []

    async def failing_remove(name: str, timeout_sec: float = 10) -> None:
        from openpods.runtimes.base import RuntimeFailure

        calls.append(name)
        raise RuntimeFailure("engine busy")

    env.runtime.remove = failing_remove  # type: ignore[method-assign]
    await env.incremental()
    await env.incremental()  # nothing changed in the row or the list, but the removal is still owed
    assert len(calls) == 2
    del env.runtime.remove  # back to the working one
    await env.incremental()
    assert env.pod("pod001").status == st.STOPPED


async def test_a_change_that_bypassed_the_revision_is_fixed_by_the_next_full_pass(database_url: str,
                                                                                  tmp_path: Path) -> None:
    env = Env(database_url, tmp_path / "data", health_full_pass_every=4)
    await steady(env, 5)  # pass 0: full
    with transaction(env.ctx.sessions) as s:  # a Core UPDATE: no revision bump, so invisible to the scan
        s.execute(update(Pod).where(Pod.pod_id == "pod002").values(status_requested=st.OFF))
    for _ in range(2):  # passes 1 and 2: incremental, they cannot see it
        assert (await env.health.pass_once()).full is False
    assert env.pod("pod002").status == st.AVAILABLE
    stats = await env.health.pass_once()  # pass 3: incremental
    assert not stats.full
    stats = await env.health.pass_once()  # pass 4: full
    assert stats.full and stats.loaded == 5
    assert env.pod("pod002").status == st.STOPPED


async def test_orphans_and_deleted_pods(env: Env) -> None:
    await steady(env, 3)
    with transaction(env.ctx.sessions) as s:
        pod = s.get(Pod, ("default", "pod000"))
        s.delete(pod)
    stats = await env.incremental()
    assert stats.pods == 2
    assert container_name("default", "pod000", env.ctx.installation_id) not in env.runtime.containers  # removed as an orphan
    env.add_pod("fresh", st.STOPPED)
    stats = await env.incremental()
    assert stats.loaded == 1 and env.pod("fresh").status == st.REQUESTED


async def test_a_pod_deleted_and_made_again_between_passes_is_read_anew(env: Env) -> None:
    await steady(env, 3)
    with transaction(env.ctx.sessions) as s:
        s.delete(s.get(Pod, ("default", "pod001")))
    # Made again before the next pass, with the same revision (1) as the old row; its container still runs.
    env.add_pod("pod001", st.STOPPED)
    stats = await env.incremental()
    assert stats.loaded == 1
    assert env.pod("pod001").status == st.REQUESTED


class LaggingRuntime(FakeRuntime):
    """A list from a cache fed by engine events (``list_lag_sec`` > 0): ``containers`` is what the engine has;
    once ``frozen`` is set, that is what the cache has seen (its later events have not arrived yet); ``observe``
    asks the engine."""

    list_lag_sec = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.frozen: dict[str, ContainerState] | None = None

    async def list_managed(self) -> list[ContainerState]:
        self.calls["list"] += 1
        return list((self.containers if self.frozen is None else self.frozen).values())

    async def observe(self, name: str) -> ContainerState:
        self.calls["observe"] += 1
        return self.containers.get(name) or ContainerState.missing(name)


async def test_a_lagging_list_is_not_trusted_for_a_pod_that_changed_within_the_lag(env: Env) -> None:
    """Another process's spawner made a container and set its pod AVAILABLE a moment ago; the cached list has not
    seen the container's events yet. The pass asks the engine about that one pod instead of concluding that its
    container vanished (which would stop it); pods that changed earlier are judged by the list alone."""
    runtime = LaggingRuntime()
    env.runtime = runtime
    env.ctx.runtime = runtime
    await steady(env, 5)
    runtime.frozen = dict(runtime.containers)
    env.now += timedelta(seconds=2)
    env.add_pod("fresh", st.AVAILABLE, running=True, since=env.now - timedelta(milliseconds=500))
    stats = await env.health.pass_once(full=False)
    assert env.pod("fresh").status == st.AVAILABLE, env.pod("fresh").status_container
    assert runtime.calls["observe"] == 1 and stats.changes == 0
    # Past the lag, the list is what counts: the container is gone from both, and the pod is stopped.
    name = container_name("default", "fresh", env.ctx.installation_id)
    del runtime.containers[name]
    runtime.frozen = None
    env.now += timedelta(seconds=3)
    await env.health.pass_once(full=True)
    assert env.pod("fresh").status == st.STOPPED


async def test_an_action_is_never_taken_on_the_cached_view_alone(env: Env) -> None:
    """An event that arrives later than the lag (a loaded engine) must not make the pass stop a pod: whatever the
    cached list says that would change a pod is confirmed with the engine first (one call per action)."""
    runtime = LaggingRuntime()
    env.runtime = runtime
    env.ctx.runtime = runtime
    await steady(env, 5)
    env.now += timedelta(seconds=30)
    env.add_pod("late", st.AVAILABLE, running=True, since=env.now - timedelta(seconds=20))
    runtime.frozen = {n: c for n, c in runtime.containers.items() if "late" not in n}  # its events still due
    runtime.calls.clear()
    stats = await env.health.pass_once(full=False)
    assert env.pod("late").status == st.AVAILABLE, env.pod("late").status_container
    assert runtime.calls["observe"] == 1 and stats.changes == 0
    # The engine cannot be asked: no action now (and none on the cache), a retry on the next pass.
    real_observe = runtime.observe

    async def failing(name: str) -> ContainerState:
        raise RuntimeUnavailable("engine restarting")

    runtime.observe = failing  # type: ignore[method-assign]
    stats = await env.health.pass_once(full=False)  # the cache still disagrees: looked at again, not trusted
    assert env.pod("late").status == st.AVAILABLE and stats.changes == 0 and stats.decided == 1
    runtime.observe = real_observe  # type: ignore[method-assign]
    del runtime.containers[container_name("default", "late", env.ctx.installation_id)]  # now really gone
    stats = await env.health.pass_once(full=False)  # retried, confirmed: the pod's container is gone
    assert env.pod("late").status == st.STOPPED
