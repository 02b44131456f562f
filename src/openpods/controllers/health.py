"""The health loop: every pass lists the runtime ONCE and reconciles pods with
:func:`openpods.domain.reconcile.decide`. Engine calls per pass therefore grow with the number of *changes*
(removals, log captures), not with the number of pods. Container logs of running pods are refreshed by a
separate, slower loop (and on demand by the API).

Passes are incremental, and stay level-triggered: the loop keeps what it last read of every pod (the facts
``decide`` needs, with the row's version: ``revision`` and ``creation_ts``) and what the previous list showed. A
pass reads the version of every row (a covering-index scan), loads only rows whose version changed, decides only
for pods whose row changed, whose container changed in the list, whose last decision was an action (until it
has taken effect), or for which :func:`~openpods.domain.reconcile.recheck_at` says time alone may change the
answer (a deadline, ``time_to_stop``). Every ``health_full_pass_every``-th pass reads and decides every pod,
as every pass once did, so nothing can be missed for longer than that."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from openpods.bus.base import HEALTH, SPAWNER, Wakeup
from openpods.context import AppContext
from openpods.domain import lifecycle
from openpods.domain import status as st
from openpods.domain.container_spec import LABEL_INSTALLATION, container_name, legacy_container_name
from openpods.domain.reconcile import ContainerFacts, Decision, PodFacts, decide, recheck_at
from openpods.runtimes.base import ContainerState, RuntimeFailure
from openpods.services import pods as pod_svc
from openpods.store import repo
from openpods.store.db import transaction
from openpods.store.tables import Pod, PodLog, Snapshot, Volume

log = logging.getLogger(__name__)
PASS_SECONDS = Histogram("openpods_health_pass_seconds", "Duration of one health pass.")
ENGINE_CALLS = Counter("openpods_health_engine_calls_total", "Container engine calls made by the health loop.",
                       ["call"])
UNEXPECTED = Counter("openpods_unexpected_storage_dirs_total", "Storage directories found without a row.")
ORPHANS = Counter("openpods_orphan_containers_removed_total", "Containers removed because no pod owns them.")
NETWORK_PRUNE_INTERVAL_SEC = 60.0  # orphaned private pod networks are rare (crashes): look now and then
ENGINE_CONCURRENCY = 4  # engine calls of one pass in flight at once (the runtime's threads are shared)
T = TypeVar("T")


async def _bounded(jobs: list[Coroutine[Any, Any, T]], limit: int) -> list[T]:
    """Run the coroutines at most ``limit`` at a time; their results in order. The first exception is raised
    after every job has finished (none is left running)."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Coroutine[Any, Any, T]) -> T:
        async with gate:
            return await job

    results = await asyncio.gather(*(one(j) for j in jobs), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


@dataclass
class PassStats:
    pods: int = 0
    containers: int = 0
    engine_calls: int = 0
    changes: int = 0
    seconds: float = 0.0
    loaded: int = 0  # pod rows read in full this pass
    decided: int = 0  # pods for which decide() ran this pass
    full: bool = False  # a full pass (every pod read and decided)


@dataclass
class _Known:
    """What the loop last read of one pod row."""

    tenant_id: str
    pod_id: str
    revision: int
    created: datetime
    facts: PodFacts
    status_container: dict | None

    @property
    def version(self) -> tuple[int, datetime]:
        return self.revision, self.created


Key = tuple[str, str]
# What the loop needs of a pod row (no definition columns, so no large JSON to decode).
_FACT_COLUMNS = (Pod.tenant_id, Pod.pod_id, Pod.revision, Pod.creation_ts, Pod.status, Pod.status_requested,
                 Pod.status_since, Pod.instance_id, Pod.start_instance_ts, Pod.time_to_stop_default,
                 Pod.time_to_stop_instance, Pod.time_to_stop_ts, Pod.status_container)


def _known_from_row(row: Any) -> _Known:
    facts = PodFacts(status=row.status, status_requested=row.status_requested, status_since=row.status_since,
                     instance_id=row.instance_id, start_instance_ts=row.start_instance_ts,
                     time_to_stop_default=row.time_to_stop_default, time_to_stop_instance=row.time_to_stop_instance,
                     time_to_stop_ts=row.time_to_stop_ts)
    return _Known(row.tenant_id, row.pod_id, row.revision, row.creation_ts, facts, row.status_container)


def _signature(c: ContainerState) -> tuple[Any, ...]:
    """What ``decide`` reads of a listed container. Not the engine's status text: it holds a relative time
    ("Up 3 minutes") that changes on every list, and decide reads it only with a state change or a deadline."""
    return (c.name, c.state, c.instance_id, c.exit_code, c.started_at)


def _container_facts(c: ContainerState) -> ContainerFacts:
    return ContainerFacts(state=c.state, instance_id=c.instance_id or "", exit_code=c.exit_code,
                          started_at=c.started_at, message=c.message, finished_at=c.finished_at)


class Health:
    def __init__(self, ctx: AppContext, *, clock: Callable | None = None) -> None:
        self.ctx = ctx
        self.clock = clock or ctx.clock
        self.last = PassStats()
        self._reported: set[str] = set()
        self._next_network_prune = 0.0
        self._rename_failed: set[str] = set()
        self._known: dict[Key, _Known] = {}  # every pod row, as last read
        self._listed: dict[Key, tuple[Any, ...]] = {}  # the previous list, per pod
        self._retry: set[Key] = set()  # pods whose last decision was an action: decide again next pass
        self._due: dict[Key, datetime] = {}  # pods to decide again once this time has come (recheck_at)
        self._passes = 0
        self._current_names: set[str] = set()  # listed names already known to be of the current scheme

    async def run(self) -> None:
        while True:
            try:
                await self.pass_once()
            except Exception:
                log.exception("health pass failed; retrying")
            await self.ctx.bus.wait(HEALTH, self.ctx.settings.health_interval_sec)

    async def pass_once(self, *, full: bool | None = None) -> PassStats:
        """One pass; ``full`` forces (True) or forbids (False) a full pass; by default every Nth pass is."""
        started = time.perf_counter()
        stats = PassStats()
        runtime = self.ctx.runtime
        containers: dict[Key, ContainerState] = {}
        listed_at = self.clock()
        if runtime is not None:
            try:
                listed = await runtime.list_managed()
            except RuntimeFailure as exc:
                log.warning("health pass skipped: container engine unavailable: %s", exc)
                return stats
            stats.engine_calls += 1
            ENGINE_CALLS.labels("list").inc()
            for c in listed:
                # Only our installation's containers: another installation on the same engine is not ours to judge.
                if c.tenant_id and c.pod_id and c.labels.get(LABEL_INSTALLATION) == self.ctx.installation_id:
                    if c.name not in self._current_names:  # checked once per name, not once per pass
                        c = await self._adopt_legacy_name(c, stats)
                    containers[(c.tenant_id, c.pod_id)] = c
            stats.containers = len(listed)
        if full is None:
            full = self._passes % self.ctx.settings.health_full_pass_every == 0
        self._passes += 1
        stats.full = full
        # Pods are read after the list call: a container listed above whose pod row is gone is an orphan.
        changed = await asyncio.to_thread(self._refresh, full)
        stats.loaded = len(changed)
        await asyncio.to_thread(self._report_unexpected_storage)
        stats.pods = len(self._known)
        for key, c in containers.items():
            if key not in self._known:
                await self._remove(c.name, stats)
                ORPHANS.inc()
                log.info("removed orphan container %s", c.name)
        now = self.clock()
        listing = {key: _signature(c) for key, c in containers.items()}
        if full:
            todo: set[Key] = set(self._known)
        else:
            todo = changed | self._retry
            todo |= {k for k in listing.keys() | self._listed.keys() if listing.get(k) != self._listed.get(k)}
            todo |= {k for k, at in self._due.items() if at <= now}
        self._listed = listing
        self._retry = set()
        # A list from an event-fed cache may lag (list_lag_sec): for pods whose status changed within that time,
        # ask the engine about their container rather than act on a view older than their row.
        seen_at: dict[Key, datetime] = {}
        lag = getattr(runtime, "list_lag_sec", 0.0) if runtime is not None else 0.0
        if lag > 0:
            await self._observe_recent(todo, containers, listed_at - timedelta(seconds=lag), seen_at, stats)
        deadline = timedelta(seconds=self.ctx.settings.stuck_deadline_sec)
        problem = self.ctx.runtime_problem if runtime is None else ""

        def decide_for(known: _Known, key: Key) -> Decision | None:
            """The decision for one pod, or None when there is nothing to do (then maybe a recheck time)."""
            container = containers.get(key)
            cfacts = _container_facts(container) if container else None
            observed_at = seen_at.get(key, listed_at)
            decision = decide(known.facts, cfacts, now=now, listed_at=observed_at, deadline=deadline,
                              runtime_problem=problem)
            if runtime is None:
                decision.remove_container = False
            if decision.is_noop() or (decision.status_container == known.status_container and
                                      decision == Decision(status_container=decision.status_container)):
                at = recheck_at(known.facts, listed_at=observed_at, now=now, deadline=deadline, container=cfacts)
                if at is not None:
                    self._due[key] = at
                return None
            return decision

        actions: dict[Key, tuple[_Known, Decision]] = {}
        for key in sorted(todo):
            known = self._known.get(key)
            if known is None:
                continue  # deleted (its container, if any, was an orphan above)
            self._due.pop(key, None)
            if runtime is None and known.facts.status not in (st.REQUESTED, st.STOPPED):
                continue  # without an engine, nothing can be observed: never conclude a container is gone
            stats.decided += 1
            decision = decide_for(known, key)
            log.debug("pod %s/%s (%s) with %s: %s", *key, known.facts.status, containers.get(key), decision)
            if decision is not None:
                actions[key] = (known, decision)
        if lag > 0:
            # Never act on a cached view alone: what a lagging list shows (a container gone, exited, another
            # instance) is confirmed by asking the engine about that one container, and decided again. One call
            # per action, so still proportional to changes; an event delivered late cannot make us stop a pod.
            unconfirmed = {key for key in actions if key not in seen_at}
            if unconfirmed:
                failed = await self._observe_recent(unconfirmed, containers, None, seen_at, stats)
                for key in sorted(unconfirmed):
                    known = actions[key][0]
                    if key in failed:  # the engine did not answer: act on a later pass, not on the cache
                        del actions[key]
                        self._retry.add(key)
                        continue
                    decision = decide_for(known, key)
                    if decision is None:
                        # The cache disagrees with the engine (its events are late): look again next pass.
                        del actions[key]
                        self._retry.add(key)
                    else:
                        actions[key] = (known, decision)
        applies = []
        for key, (known, decision) in sorted(actions.items()):
            log.debug("pod %s/%s (%s): %s", *key, known.facts.status, decision)
            stats.changes += 1
            self._retry.add(key)  # until a pass decides "nothing to do" for it
            applies.append(self._apply(known, containers.get(key), decision, stats))
        # The engine work of the changed pods (log captures, removals) runs a few at a time: a pass with k changes
        # takes about k / ENGINE_CONCURRENCY engine round trips, not k.
        writes: list[tuple[str, str, tuple[int, datetime], Decision]] = await _bounded(applies, ENGINE_CONCURRENCY)
        # One transaction for the pass's writes (a commit per pod cost more than the rest of the pass); each
        # write still checks that the row is the one decided on. Wake-ups only once it is committed.
        if writes:
            await asyncio.to_thread(self._write_many, writes)
        for tenant_id, pod_id, _, d in writes:
            if d.wake_spawner:
                self.ctx.bus.publish(Wakeup(SPAWNER, tenant_id, pod_id))
        if runtime is not None and time.monotonic() >= self._next_network_prune:
            self._next_network_prune = time.monotonic() + NETWORK_PRUNE_INTERVAL_SEC
            await self._prune_networks(containers, stats)
            await asyncio.to_thread(self._sweep_pins)
        stats.seconds = time.perf_counter() - started
        PASS_SECONDS.observe(stats.seconds)
        self.last = stats
        return stats

    async def _observe_recent(self, todo: set[Key], containers: dict[Key, ContainerState],
                              horizon: datetime | None, seen_at: dict[Key, datetime], stats: PassStats
                              ) -> set[Key]:
        """Replace the listed container of every pod in ``todo`` whose status was set after ``horizon`` (every
        pod in ``todo`` when it is None) by what the engine says now (one observe each: as many as pods changed
        recently, not as pods), and record when it was asked. A failed observe leaves the listed view, trusted
        only as of ``horizon`` (as of the list when None); returns the pods whose observe failed."""
        runtime = self.ctx.runtime
        assert runtime is not None

        failed: set[Key] = set()

        async def observe(key: Key, name: str) -> None:
            asked_at = self.clock()
            try:
                state = await runtime.observe(name)
                if state.state == "missing":
                    # Renamed to the old scheme a moment ago (the cache may not show it yet): still ours.
                    legacy = await runtime.observe(legacy_container_name(*key))
                    stats.engine_calls += 1
                    if legacy.labels.get(LABEL_INSTALLATION) == self.ctx.installation_id:
                        state = legacy
            except RuntimeFailure as exc:
                log.warning("could not observe %s (%s); its pod is judged again on a later pass", name, exc)
                failed.add(key)
                if horizon is not None:
                    seen_at[key] = horizon
                return
            finally:
                stats.engine_calls += 1
                ENGINE_CALLS.labels("observe").inc()
            seen_at[key] = asked_at
            if state.state == "missing":
                containers.pop(key, None)
            else:
                containers[key] = state

        jobs = []
        for key in sorted(todo):
            known = self._known.get(key)
            if known is None or (horizon is not None and known.facts.status_since <= horizon):
                continue
            try:
                name = container_name(known.tenant_id, known.pod_id, self.ctx.installation_id)
            except ValueError:
                continue
            listed = containers.get(key)
            if listed is not None and listed.name != name:
                continue  # an old-scheme name (renamed on a later pass)
            jobs.append(observe(key, name))
        await _bounded(jobs, ENGINE_CONCURRENCY)
        return failed

    async def _adopt_legacy_name(self, c: ContainerState, stats: PassStats) -> ContainerState:
        """A container of ours with the old scheme's name (no installation in it) gets its new name, so that
        exec, logs and uploads (which address containers by name) find it."""
        assert c.tenant_id and c.pod_id
        try:
            new = container_name(c.tenant_id, c.pod_id, self.ctx.installation_id)
        except ValueError:
            return c
        if c.name == new:
            if len(self._current_names) > 4 * len(self._known) + 1000:  # names of long-gone containers
                self._current_names.clear()
            self._current_names.add(c.name)
            return c
        if c.name != legacy_container_name(c.tenant_id, c.pod_id) or c.name in self._rename_failed:
            return c
        try:
            await self.ctx.runtime.rename(c.name, new)
        except RuntimeFailure as exc:
            self._rename_failed.add(c.name)
            log.warning("could not rename container %s to %s: %s", c.name, new, exc)
            return c
        finally:
            stats.engine_calls += 1
            ENGINE_CALLS.labels("rename").inc()
        log.info("renamed container %s to %s (installation id added to the name)", c.name, new)
        return dataclasses.replace(c, name=new)

    async def _prune_networks(self, containers: dict[tuple[str, str], ContainerState], stats: PassStats) -> None:
        """Remove private pod networks left without a container (a crash between making the network and the
        container, or a pod deleted meanwhile). Pods the spawner may be working on keep theirs."""
        inst = self.ctx.installation_id
        keep = {c.name for c in containers.values()}
        for known in list(self._known.values()):
            if known.facts.status in (st.REQUESTED, st.SPAWNER_SETUP, st.CREATING):
                with contextlib.suppress(ValueError):
                    keep.add(container_name(known.tenant_id, known.pod_id, inst))
        try:
            removed = await self.ctx.runtime.prune_networks(inst, keep)
        except RuntimeFailure as exc:
            log.warning("could not prune pod networks: %s", exc)
            return
        finally:
            stats.engine_calls += 1
            ENGINE_CALLS.labels("prune_networks").inc()
        for name in removed:
            log.info("removed orphan pod network %s", name)

    def _sweep_pins(self) -> None:
        """Volume pins of spawner processes that died (see storage.pins); the spawner also sweeps at start."""
        from openpods.services.spawn import mount_pins

        try:
            removed = mount_pins(self.ctx).sweep()
        except OSError as exc:
            log.warning("could not sweep stale volume pins: %s", exc)
            return
        if removed:
            log.info("removed %d stale volume pin(s) of a process that died", removed)

    def _refresh(self, full: bool) -> set[Key]:
        """Bring ``_known`` up to date with the pods table; returns the keys of the rows read in full (new or
        changed rows; every row in a full pass)."""
        with self.ctx.sessions() as s:
            if full:
                rows = s.execute(select(*_FACT_COLUMNS)).all()
                self._known = {(r.tenant_id, r.pod_id): _known_from_row(r) for r in rows}
                self._due = {k: v for k, v in self._due.items() if k in self._known}
                return set(self._known)
            # A row's version: its revision and creation_ts (a pod deleted and made again starts over).
            versions = {(t, p): (r, c) for t, p, r, c in
                        s.execute(select(Pod.tenant_id, Pod.pod_id, Pod.revision, Pod.creation_ts))}
            for key in self._known.keys() - versions.keys():
                del self._known[key]
                self._due.pop(key, None)
            changed = [k for k, v in versions.items() if k not in self._known or self._known[k].version != v]
            for i in range(0, len(changed), 500):
                batch = changed[i:i + 500]
                for row in s.execute(select(*_FACT_COLUMNS).where(tuple_(Pod.tenant_id, Pod.pod_id).in_(batch))):
                    self._known[(row.tenant_id, row.pod_id)] = _known_from_row(row)
            return set(changed)

    def _report_unexpected_storage(self) -> None:
        """Directories with no volume or snapshot row are reported (once each), never deleted: a database
        glitch must not cost anyone their data."""
        storage = self.ctx.storage
        if storage is None:
            return
        with self.ctx.sessions() as s:
            volumes = s.execute(select(Volume.tenant_id, Volume.volume_id)).all()
            snapshots = s.execute(select(Snapshot.tenant_id, Snapshot.snapshot_id)).all()
        tenants = {t.tenant_id for t in self.ctx.settings.all_tenants()}
        tenants |= {t for t, _ in volumes} | {t for t, _ in snapshots}
        for tenant_id in sorted(tenants):
            try:
                found = storage.find_unexpected(tenant_id, [v for t, v in volumes if t == tenant_id],
                                                [n for t, n in snapshots if t == tenant_id])
            except (OSError, ValueError):
                continue
            for path in found:
                if path not in self._reported:
                    self._reported.add(path)
                    UNEXPECTED.inc()
                    log.warning("storage directory without a database row (kept, not deleted): %s", path)

    async def _remove(self, name: str, stats: PassStats) -> bool:
        assert self.ctx.runtime is not None
        try:
            await self.ctx.runtime.remove(name, self.ctx.settings.container_stop_timeout_sec)
        except RuntimeFailure as exc:
            log.warning("could not remove container %s: %s", name, exc)
            return False
        finally:
            stats.engine_calls += 1
            ENGINE_CALLS.labels("remove").inc()
        return True

    async def capture_logs(self, tenant_id: str, pod_id: str, instance_id: str, stats: PassStats | None = None) -> None:
        runtime = self.ctx.runtime
        if runtime is None:
            return
        try:
            name = container_name(tenant_id, pod_id, self.ctx.installation_id)
            text = await runtime.logs(name, self.ctx.settings.logs_max_bytes)
        except RuntimeFailure:
            return
        if stats is not None:
            stats.engine_calls += 1
            ENGINE_CALLS.labels("logs").inc()
        await asyncio.to_thread(store_logs, self.ctx, tenant_id, pod_id, instance_id, text)

    async def _apply(self, pod: _Known, container: ContainerState | None, d: Decision,
                     stats: PassStats) -> tuple[str, str, tuple[int, datetime], Decision]:
        """The engine part of a decision (logs, removal); returns the database write still to make."""
        if d.capture_logs and container is not None:
            await self.capture_logs(pod.tenant_id, pod.pod_id, container.instance_id or pod.facts.instance_id, stats)
        if d.remove_container and container is not None:
            removed = await self._remove(container.name, stats)
            if not removed:
                d.remove_container = False
            elif not d.status or d.status == st.DELETING:
                # Gone now: decide again as if listed without it, to finish in this pass.
                facts = pod.facts
                if d.status:
                    facts = PodFacts(**{**facts.__dict__, "status": d.status})
                follow = decide(facts, None, now=self.clock(), listed_at=self.clock(),
                                deadline=timedelta(seconds=self.ctx.settings.stuck_deadline_sec))
                if d.log and follow.log:
                    follow.log = f"{d.log}; {follow.log}"
                d = follow if not follow.is_noop() else d
        return pod.tenant_id, pod.pod_id, pod.version, d

    def _write_many(self, writes: list[tuple[str, str, tuple[int, datetime], Decision]]) -> None:
        for i in range(0, len(writes), 200):
            batch = writes[i:i + 200]
            try:
                with transaction(self.ctx.sessions) as s:
                    for tenant_id, pod_id, version, d in batch:
                        self._write_one(s, tenant_id, pod_id, version, d)
            except StaleDataError:  # one row changed under us: write the others one by one
                for item in batch:
                    self._write(*item)

    def _write(self, tenant_id: str, pod_id: str, version: tuple[int, datetime], d: Decision) -> None:
        try:
            with transaction(self.ctx.sessions) as s:
                self._write_one(s, tenant_id, pod_id, version, d)
        except StaleDataError:
            return  # changed concurrently; the next pass decides again

    @staticmethod
    def _write_one(s: Session, tenant_id: str, pod_id: str, version: tuple[int, datetime], d: Decision) -> None:
        pod = s.get(Pod, (tenant_id, pod_id))
        if pod is None or (pod.revision, pod.creation_ts) != version:
            return  # changed since we looked; the next pass decides again
        now = repo.utcnow()
        lifecycle.apply(pod, lifecycle.Change(
            status=d.status or None, status_requested=d.status_requested or None,
            instance_id=lifecycle.new_instance_id() if d.new_instance else None), now)
        if d.clear_instance:
            pod.start_instance_ts = None
            pod.time_to_stop_ts = None
            pod.time_to_stop_instance = None
            pod.status_container = {}
            pod.host_ports = {}
        if d.status_container is not None:
            pod.status_container = d.status_container
        if d.start_instance_ts is not None:
            pod.start_instance_ts = d.start_instance_ts
        if d.time_to_stop_ts is not False:
            pod.time_to_stop_ts = d.time_to_stop_ts  # type: ignore[assignment]
        if d.log:
            repo.add_action_log(s, "pod", tenant_id, pod_id, "health", d.log)


def store_logs(ctx: AppContext, tenant_id: str, pod_id: str, instance_id: str, text: str) -> None:
    """Keep the latest ``logs_max_bytes`` of one instance's output, with the pod's secret values redacted."""
    with transaction(ctx.sessions) as s:
        secrets = pod_svc.secret_values(pod_svc.pod_secrets(s, ctx.secrets, tenant_id, pod_id))
        text = pod_svc.redact(text, secrets)
        encoded = text.encode("utf-8", "replace")
        if len(encoded) > ctx.settings.logs_max_bytes:
            text = encoded[-ctx.settings.logs_max_bytes:].decode("utf-8", "ignore")
        row = s.get(PodLog, (tenant_id, pod_id))
        if row is None:
            s.add(PodLog(tenant_id=tenant_id, pod_id=pod_id, instance_id=instance_id, logs=text,
                         updated_ts=repo.utcnow()))
        elif row.instance_id in ("", instance_id):
            row.instance_id, row.logs, row.updated_ts = instance_id, text, repo.utcnow()


class LogRefresher:
    """Refreshes the stored logs of running pods every ``interval`` seconds (one logs call per running pod)."""

    def __init__(self, ctx: AppContext, health: Health, interval: float = 15.0) -> None:
        self.ctx, self.health, self.interval = ctx, health, interval

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                with self.ctx.sessions() as s:
                    rows = list(s.execute(select(Pod.tenant_id, Pod.pod_id, Pod.instance_id)
                                          .where(Pod.status == st.AVAILABLE)))
                for tenant_id, pod_id, instance_id in rows:
                    await self.health.capture_logs(tenant_id, pod_id, instance_id)
            except Exception:
                log.exception("log refresh failed")


def wake_health(ctx: AppContext) -> None:
    ctx.bus.publish(Wakeup(HEALTH))
