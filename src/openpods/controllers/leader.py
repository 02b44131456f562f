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
- **A dead leader on this machine is replaced at once.** A holder id names its process (boot id, pid namespace,
  pid, start time). A contender on the same kernel and pid namespace that finds that process gone (a killed
  ``openpods serve`` being restarted) takes the lease over without waiting for it to expire: a process that no
  longer exists cannot act. The takeover is conditional on the row still naming that holder.
- A database restart or outage shorter than L - R changes nothing; a longer one makes the leader step down and
  the first process to reach the database after the lease expired becomes leader.

On SQLite (the single-machine shape: one process owns the database file) the process is leader trivially.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
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


_TAKE_FROM_DEAD = text("""
UPDATE leader_leases SET holder = :holder, epoch = epoch + 1, acquired_at = now() AT TIME ZONE 'UTC',
    renewed_at = now() AT TIME ZONE 'UTC', expires_at = now() AT TIME ZONE 'UTC' + make_interval(secs => :lease)
WHERE name = :name AND holder = :dead
RETURNING epoch
""")
_PROCESS_MARK = re.compile(r" proc=(?P<boot>[0-9a-f-]+)/(?P<ns>\d+)/(?P<pid>\d+)/(?P<start>\d+)$")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None if there is
    no such process. With the pid it names one process for the whole boot (pids are reused, start times not)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name, in parentheses, may hold spaces
    return fields[19] if len(fields) > 19 else None


def _kernel_scope() -> tuple[str, str] | None:
    """(boot id, pid namespace inode): where a pid means the same process as here. None off Linux."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    match = re.fullmatch(r"pid:\[(\d+)\]", ns)
    if boot is None or match is None:
        return None
    return boot.strip(), match.group(1)


def process_mark(pid: int | None = None) -> str:
    """`` proc=<boot id>/<pid ns>/<pid>/<start time>`` for this process ("" where /proc cannot tell)."""
    pid = os.getpid() if pid is None else pid
    scope, start = _kernel_scope(), _start_time(pid)
    return "" if scope is None or start is None else f" proc={scope[0]}/{scope[1]}/{pid}/{start}"


def holder_is_dead(holder: str) -> bool:
    """True only when ``holder`` names a process of this kernel and pid namespace that no longer exists. Holders
    from other machines, containers or without a mark are never judged dead (their leases expire instead)."""
    match = _PROCESS_MARK.search(holder)
    scope = _kernel_scope()
    if match is None or scope is None or (match["boot"], match["ns"]) != scope:
        return False
    return _start_time(int(match["pid"])) != match["start"]


def new_holder_id() -> str:
    """Unique per process start; readable in the table (host and pid) for operators, and marked with the
    process's identity so that a contender on the same machine can tell that it died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}{process_mark()}"


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

    def take_from_dead(self) -> int | None:
        """Take the lease from a holder that :func:`holder_is_dead` (before it expires); returns the new epoch,
        or None if the holder is alive, unknown here, or changed meanwhile."""
        with self.engine.begin() as conn:
            conn.execute(text(f"SET LOCAL statement_timeout = {self.timeout_ms}"))
            current = conn.execute(text("SELECT holder FROM leader_leases WHERE name = :name"),
                                   {"name": self.name}).scalar()
            if current is None or current == self.holder or not holder_is_dead(current):
                return None
            row = conn.execute(_TAKE_FROM_DEAD, {"name": self.name, "holder": self.holder, "dead": current,
                                                 "lease": float(self.lease_sec)}).first()
            if row is not None:
                log.warning("took the %s lease from %s: that process no longer exists", self.name, current)
            return None if row is None else int(row[0])

    def acquire_or_take_from_dead(self) -> int | None:
        return self.acquire() or self.take_from_dead()

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
        call = lease.acquire if tasks else lease.acquire_or_take_from_dead
        return await asyncio.wait_for(asyncio.to_thread(call), timeout=timeout)

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
