"""Leader election for the singleton controllers (the health loop, the log refresher, the snapshot scheduler).

Several ``openpods health`` processes may run (the cluster shape); exactly one of them, the *leader*, runs the
singletons. On PostgreSQL the leader holds a **lease**: one row of ``leader_leases`` (holder, expires_at) that
only its holder may renew and that anyone may take once it has expired. Every time is the database server's
clock (``now()``), so clocks of the machines running OpenPods need not agree; the leader measures its own
deadline with its monotonic clock from the moment it *sent* a renewal, which is never later than the database
time that renewal recorded.

Guarantees, with L = ``leader_lease_sec``, R = ``leader_renew_sec``, T = ``leader_retry_sec``:

- **At most one leader acts at a time.** A leader renews every R seconds. If it has not renewed successfully
  for L - R seconds (database down, connection lost, process stalled), it stops its singletons (cancels their
  tasks) and stops being leader; its lease expires R seconds later at the earliest, and only then can another
  process take it. (A step already inside a worker thread, i.e. one database transaction or one container
  engine call, may complete after the cancellation; every such write is idempotent and guarded by the pods'
  optimistic locking, so it cannot undo the new leader's work.)
- **Takeover bound.** When the leader dies (even by SIGKILL, or its machine vanishes), another process is
  leader at most L + T seconds (plus one database round trip) after the leader's last renewal, hence at most
  L + T seconds after its death. A leader that stops cleanly releases its lease, and another takes over within
  T seconds.
- A database restart or outage shorter than L - R changes nothing; a longer one makes the leader step down and
  the first process to reach the database after the lease expired becomes leader.

On SQLite (the single-machine shape: one process owns the database file) the process is leader trivially.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge
from sqlalchemy import Engine, text

log = logging.getLogger(__name__)
IS_LEADER = Gauge("openpods_leader", "1 while this process is the leader of the named singleton group.", ["name"])
TRANSITIONS = Counter("openpods_leader_transitions_total", "Leadership changes of this process, by event.",
                      ["name", "event"])

# One statement, atomic under concurrency (INSERT … ON CONFLICT locks the row it updates): create the lease,
# renew it (same holder) or take it over (expired). No row returned: someone else holds a valid lease.
_ACQUIRE = text("""
INSERT INTO leader_leases (name, holder, epoch, acquired_at, renewed_at, expires_at)
VALUES (:name, :holder, 1, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC',
        now() AT TIME ZONE 'UTC' + make_interval(secs => :lease))
ON CONFLICT (name) DO UPDATE SET
    epoch = CASE WHEN leader_leases.holder = EXCLUDED.holder THEN leader_leases.epoch
                 ELSE leader_leases.epoch + 1 END,
    acquired_at = CASE WHEN leader_leases.holder = EXCLUDED.holder THEN leader_leases.acquired_at
                       ELSE EXCLUDED.acquired_at END,
    holder = EXCLUDED.holder,
    renewed_at = EXCLUDED.renewed_at,
    expires_at = EXCLUDED.expires_at
WHERE leader_leases.holder = EXCLUDED.holder OR leader_leases.expires_at <= now() AT TIME ZONE 'UTC'
RETURNING epoch
""")
_RELEASE = text("""
UPDATE leader_leases SET expires_at = now() AT TIME ZONE 'UTC'
WHERE name = :name AND holder = :holder
""")


def new_holder_id() -> str:
    """Unique per process start; readable in the table (host and pid) for operators."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class LeaseTimes:
    lease_sec: float
    renew_sec: float
    retry_sec: float

    @property
    def takeover_bound_sec(self) -> float:
        """Longest time from the leader's death (or last renewal) to another process leading."""
        return self.lease_sec + self.retry_sec


class Lease:
    """The lease row operations (blocking; called in a worker thread)."""

    def __init__(self, engine: Engine, name: str, holder: str, lease_sec: float, timeout_sec: float) -> None:
        self.engine, self.name, self.holder = engine, name, holder
        self.lease_sec, self.timeout_ms = lease_sec, max(1, int(timeout_sec * 1000))

    def acquire(self) -> int | None:
        """Take or renew the lease; returns its epoch (bumped on every change of holder) or None if another
        process holds a valid lease. Raises on database errors."""
        with self.engine.begin() as conn:
            conn.execute(text(f"SET LOCAL statement_timeout = {self.timeout_ms}"))
            row = conn.execute(_ACQUIRE, {"name": self.name, "holder": self.holder,
                                          "lease": float(self.lease_sec)}).first()
            return None if row is None else int(row[0])

    def release(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"SET LOCAL statement_timeout = {self.timeout_ms}"))
            conn.execute(_RELEASE, {"name": self.name, "holder": self.holder})


StartFn = Callable[[], list["asyncio.Task[None]"]]


async def _stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def run_as_leader(engine: Engine, name: str, start: StartFn, times: LeaseTimes, *,
                        holder: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Runs until cancelled: contends for the lease ``name`` and, while leader, keeps the tasks that ``start()``
    returned running (they are cancelled when leadership is lost and on cancellation)."""
    if engine.dialect.name != "postgresql":
        tasks = start()  # one process owns an SQLite database: it leads trivially
        IS_LEADER.labels(name).set(1)
        try:
            await asyncio.gather(*tasks)
        finally:
            IS_LEADER.labels(name).set(0)
            await _stop_tasks(tasks)
        return

    lease = Lease(engine, name, holder or new_holder_id(), times.lease_sec,
                  timeout_sec=min(times.renew_sec, times.retry_sec))
    tasks: list[asyncio.Task[None]] = []
    valid_until = 0.0  # monotonic time until which this process may act as leader

    async def attempt(timeout: float) -> int | None:
        """One acquire/renew, bounded in time (a hung database call counts as a failure; its thread may
        finish later, which is harmless: it can only extend a lease we then renew or let expire)."""
        return await asyncio.wait_for(asyncio.to_thread(lease.acquire), timeout=timeout)

    try:
        while True:
            sent = clock()
            # While leading, a renewal must not outlast the deadline: we then still have R seconds to stop.
            timeout = max(times.renew_sec, times.retry_sec)
            if tasks:
                timeout = max(0.05, min(timeout, valid_until - sent))
            try:
                epoch = await attempt(timeout)
            except Exception as exc:
                epoch = None
                failed: BaseException | None = exc
            else:
                failed = None
            if epoch is not None:
                valid_until = sent + times.lease_sec - times.renew_sec
                if not tasks and clock() < valid_until:  # (an acquisition that took too long counts as none)
                    log.info("became %s leader (holder %s, epoch %s)", name, lease.holder, epoch)
                    TRANSITIONS.labels(name, "acquired").inc()
                    IS_LEADER.labels(name).set(1)
                    tasks = start()
            elif tasks and (failed is None or clock() >= valid_until):
                # Someone else holds the lease (ours expired), or we could not renew in time: stop acting.
                log.warning("lost %s leadership (%s); stopping its tasks", name,
                            f"renewal failed: {failed}" if failed else "lease taken over")
                TRANSITIONS.labels(name, "lost").inc()
                IS_LEADER.labels(name).set(0)
                await _stop_tasks(tasks)
                tasks = []
            elif failed is not None:
                log.warning("%s lease attempt failed: %s", name, failed)
            if tasks:
                # Renew every R seconds; after a failure retry sooner, but never sleep past the deadline.
                pause = times.renew_sec if failed is None else min(times.retry_sec, times.renew_sec)
                pause = max(0.0, min(pause, valid_until - clock()))
                crashed = await _wait_for_crash(tasks, pause)
                if crashed:
                    # A singleton died (it should not: each loops forever): restart it while still leader.
                    log.error("%s task %s ended unexpectedly; restarting the group", name, crashed)
                    await _stop_tasks(tasks)
                    tasks = start()
            else:
                await asyncio.sleep(times.retry_sec)
    finally:
        was_leader = bool(tasks)
        await _stop_tasks(tasks)
        IS_LEADER.labels(name).set(0)
        if was_leader:
            # Tasks are stopped: hand over now rather than after the lease runs out.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(lease.release), timeout=times.retry_sec + 1)
            TRANSITIONS.labels(name, "released").inc()


async def _wait_for_crash(tasks: list[asyncio.Task[None]], timeout: float) -> str:
    """Sleeps ``timeout`` seconds, or less if a task ends; returns the name of an ended task (or "")."""
    done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    return next((t.get_name() for t in done), "")
