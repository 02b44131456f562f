"""The spawner: turns REQUESTED pods into containers. Level-triggered: a wake-up makes it scan the database for
REQUESTED + ON pods, so lost or duplicate messages change nothing. Each pod is claimed with an optimistic lock
(REQUESTED → SPAWNER SETUP), its container is created idempotently (deterministic name + instance label), and
only then is the pod marked CREATING. A spawner killed half-way leaves SPAWNER SETUP, which the health loop
re-drives after its deadline with a new instance, removing the container the dead spawner may have made (a start
that no live spawner saw succeed is never adopted); ensure_running replaces by name, never duplicating it. A
spawner that stays alive through a database outage keeps retrying the step that records the outcome, so its
pods move on as soon as the database is back rather than after that deadline."""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm.exc import StaleDataError

from openpods.bus.base import HEALTH, SPAWNER, Wakeup
from openpods.context import AppContext
from openpods.domain import lifecycle
from openpods.domain import status as st
from openpods.domain.container_spec import ContainerSpec
from openpods.domain.errors import ConflictError
from openpods.runtimes.base import RuntimeErrorPermanent, RuntimeFailure
from openpods.services.spawn import SpawnRefused, build_spec, mount_pins
from openpods.storage.pins import PinSet
from openpods.store import repo
from openpods.store.db import transaction
from openpods.store.tables import Pod, PodLog

log = logging.getLogger(__name__)
SPAWNS = Counter("openpods_spawns_total", "Pod instances the spawner started, by outcome.", ["outcome"])


class Spawner:
    def __init__(self, ctx: AppContext, *, concurrency: int = 4, idle_rescan_sec: float = 10.0,
                 finish_retry_sec: tuple[float, float] = (0.2, 5.0)) -> None:
        self.ctx = ctx
        self.concurrency = concurrency
        self.idle_rescan_sec = idle_rescan_sec
        self.finish_retry_sec = finish_retry_sec  # first and longest pause between attempts to record an outcome
        self._inflight: set[tuple[str, str]] = set()

    async def run(self) -> None:
        # Pins left mounted by a spawner that was killed between pinning and starting a container.
        try:
            await asyncio.to_thread(mount_pins(self.ctx).sweep)
        except Exception:
            log.exception("could not sweep stale volume pins")
        while True:
            try:
                await self.pass_once()
            except Exception:
                log.exception("spawner pass failed; retrying")
            await self.ctx.bus.wait(SPAWNER, self.idle_rescan_sec)

    async def pass_once(self) -> None:
        if self.ctx.runtime is None:
            return  # pods wait in REQUESTED; the health loop shows why
        keys = await asyncio.to_thread(self._requested)
        sem = asyncio.Semaphore(self.concurrency)

        async def one(key: tuple[str, str]) -> None:
            async with sem:
                await self.spawn(*key)

        await asyncio.gather(*(one(k) for k in keys if k not in self._inflight))

    def _requested(self) -> list[tuple[str, str]]:
        with self.ctx.sessions() as s:
            rows = s.execute(select(Pod.tenant_id, Pod.pod_id).where(Pod.status == st.REQUESTED,
                                                                     Pod.status_requested == st.ON))
            return [(r[0], r[1]) for r in rows]

    def _claim(self, tenant_id: str, pod_id: str) -> tuple[str, ContainerSpec | str, PinSet] | None:
        """REQUESTED+ON → SPAWNER SETUP. Returns (instance, spec or refusal message, the pinned mount sources
        to release once the container has started) or None if not ours."""
        pins = mount_pins(self.ctx).new_set()
        try:
            claim = self._claim_in(tenant_id, pod_id, pins)
        except BaseException:
            pins.release()
            raise
        if claim is None or isinstance(claim[1], str):
            pins.release()
        return None if claim is None else (*claim, pins)

    def _claim_in(self, tenant_id: str, pod_id: str, pins: PinSet) -> tuple[str, ContainerSpec | str] | None:
        try:
            with transaction(self.ctx.sessions) as s:
                pod = s.get(Pod, (tenant_id, pod_id))
                if pod is None:
                    return None
                try:
                    change = lifecycle.claim(lifecycle.state_of(pod))
                except ConflictError:
                    return None  # not REQUESTED + ON (any more): not ours
                lifecycle.apply(pod, change, repo.utcnow())
                repo.add_action_log(s, "pod", tenant_id, pod_id, change.actor, change.log)
                # A new instance starts with empty logs (the previous ones were kept until now).
                logs = s.get(PodLog, (tenant_id, pod_id))
                if logs is None:
                    s.add(PodLog(tenant_id=tenant_id, pod_id=pod_id, instance_id=pod.instance_id, logs="",
                                 updated_ts=repo.utcnow()))
                elif logs.instance_id != pod.instance_id:
                    logs.instance_id, logs.logs, logs.updated_ts = pod.instance_id, "", repo.utcnow()
                try:
                    spec: ContainerSpec | str
                    spec, pod.routes = build_spec(self.ctx, s, pod, pins)
                except SpawnRefused as exc:
                    spec = str(exc)
                return pod.instance_id, spec
        except StaleDataError:
            return None  # someone else changed the pod first; the next pass sees the new state

    def _finish(self, tenant_id: str, pod_id: str, instance: str, status: str, message: str,
                host_ports: dict[str, int | str] | None = None) -> bool:
        try:
            with transaction(self.ctx.sessions) as s:
                pod = s.get(Pod, (tenant_id, pod_id))
                if pod is None:
                    return False
                try:
                    change = lifecycle.finish(lifecycle.state_of(pod), instance, status, message)
                except ConflictError:
                    return False  # stopped, restarted or re-requested meanwhile: the outcome is moot
                lifecycle.apply(pod, change, repo.utcnow())
                if host_ports is not None:
                    pod.host_ports = host_ports
                # A retry that fails for the same reason again is not news: one action log per distinct reason.
                if change.log:
                    repo.add_action_log(s, "pod", tenant_id, pod_id, change.actor, change.log)
                return True
        except StaleDataError:
            return False

    async def _record(self, tenant_id: str, pod_id: str, instance: str, status: str, message: str,
                      host_ports: dict[str, int | str] | None = None) -> bool:
        """:meth:`_finish`, retried while the database is unreachable (a temporary error), for as long as the
        health loop would leave the pod in SPAWNER SETUP anyway; after that the health loop re-drives it."""
        pause, longest = self.finish_retry_sec
        give_up = time.monotonic() + self.ctx.settings.stuck_deadline_sec
        while True:
            try:
                return await asyncio.to_thread(self._finish, tenant_id, pod_id, instance, status, message,
                                               host_ports)
            except (OperationalError, InterfaceError) as exc:
                if time.monotonic() + pause > give_up:
                    raise
                log.warning("could not record the spawn of %s/%s (%s); retrying in %.1f s", tenant_id, pod_id,
                            exc.orig if exc.orig is not None else exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest)

    async def spawn(self, tenant_id: str, pod_id: str) -> None:
        key = (tenant_id, pod_id)
        self._inflight.add(key)
        try:
            claim = await asyncio.to_thread(self._claim, tenant_id, pod_id)
            if claim is None:
                return
            instance, spec, pins = claim
            if isinstance(spec, str):
                SPAWNS.labels("refused").inc()
                await self._record(tenant_id, pod_id, instance, st.ERROR, spec)
                return
            try:
                await self._run_spec(tenant_id, pod_id, instance, spec)
            finally:
                # The started container holds its own copy of each pinned mount; the pins are not needed now.
                await asyncio.to_thread(pins.release)
        finally:
            self._inflight.discard(key)

    async def _run_spec(self, tenant_id: str, pod_id: str, instance: str, spec: ContainerSpec) -> None:
        runtime = self.ctx.runtime
        if runtime is None:
            await self._record(tenant_id, pod_id, instance, st.REQUESTED,
                               self.ctx.runtime_problem or "No container runtime is available.")
            return
        try:
            state = await runtime.ensure_running(spec)
        except RuntimeErrorPermanent as exc:
            SPAWNS.labels("error").inc()
            await self._record(tenant_id, pod_id, instance, st.ERROR, str(exc))
            return
        except RuntimeFailure as exc:
            SPAWNS.labels("retry").inc()
            log.warning("spawn of %s/%s failed temporarily: %s", tenant_id, pod_id, exc)
            await self._record(tenant_id, pod_id, instance, st.REQUESTED, f"Waiting for the container engine: {exc}")
            return
        SPAWNS.labels("created").inc()
        await self._record(tenant_id, pod_id, instance, st.CREATING, "Container created.", state.backends())
        # The health loop turns CREATING into AVAILABLE: tell it now rather than at its next pass.
        self.ctx.bus.publish(Wakeup(HEALTH, tenant_id, pod_id))
