"""The lease behind the health leader (controllers/leader.py), in one process against a real PostgreSQL (a fresh
database on the machine's server) and on SQLite: one leader at a time, takeover only after the lease expired
and within lease + retry, a leader that cannot renew stops before its lease runs out, a clean stop hands over.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text

from openpods.controllers import leader as leader_mod
from openpods.controllers.leader import Lease, LeaseTimes, run_as_leader
from openpods.store import db

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
TIMES = LeaseTimes(lease_sec=3.0, renew_sec=1.0, retry_sec=0.5)
# For one database round trip and the event loop's scheduling on a busy machine, on top of the documented bound.
ALLOWANCE_SEC = 1.5


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    name = f"openpods_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = db.make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    try:
        db.upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(text("SELECT now() AT TIME ZONE 'UTC'")).scalar_one()


def lease_row(engine: Engine) -> tuple[str, int, datetime, datetime]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT holder, epoch, acquired_at, expires_at FROM leader_leases "
                                "WHERE name = 'health'")).one()
        return row[0], row[1], row[2], row[3]


class Group:
    """Stands in for the singletons: records (database time) when it started and stopped."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.started: list[datetime] = []
        self.stopped: list[datetime] = []

    def start(self) -> list[asyncio.Task[None]]:
        self.started.append(db_now(self.engine))

        async def work() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                self.stopped.append(db_now(self.engine))

        return [asyncio.create_task(work())]

    @property
    def running(self) -> bool:
        return len(self.started) > len(self.stopped)


async def wait_until(check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_one_leader_and_a_clean_stop_hands_over(pg_engine: Engine) -> None:
    a, b = Group(pg_engine), Group(pg_engine)
    ta = asyncio.create_task(run_as_leader(pg_engine, "health", a.start, TIMES, holder="a"))
    await wait_until(lambda: a.running, 10)
    tb = asyncio.create_task(run_as_leader(pg_engine, "health", b.start, TIMES, holder="b"))
    await asyncio.sleep(TIMES.lease_sec * 2)  # a renews all along; b never gets in
    assert a.running and not b.started
    assert lease_row(pg_engine)[:2] == ("a", 1)

    await stop(ta)  # releases the lease after its tasks stopped
    assert not a.running
    await wait_until(lambda: b.running, TIMES.retry_sec + ALLOWANCE_SEC)
    assert b.started[0] >= a.stopped[0]
    assert lease_row(pg_engine)[:2] == ("b", 2)
    await stop(tb)


async def test_a_dead_leaders_lease_is_taken_only_after_it_expired_and_within_the_bound(
    pg_engine: Engine,
) -> None:
    # A leader that died right after renewing: its row stays, valid for the whole lease.
    assert Lease(pg_engine, "health", "dead", TIMES.lease_sec, 5).acquire() == 1
    _, _, _, expires_at = lease_row(pg_engine)
    b = Group(pg_engine)
    tb = asyncio.create_task(run_as_leader(pg_engine, "health", b.start, TIMES, holder="b"))
    await wait_until(lambda: b.running, TIMES.takeover_bound_sec + ALLOWANCE_SEC + 5)
    holder, epoch, acquired_at, _ = lease_row(pg_engine)
    assert (holder, epoch) == ("b", 2)
    assert acquired_at >= expires_at, "taken over before the dead leader's lease expired"
    # The death was at the renewal, lease_sec before expires_at: the takeover bound counts from there.
    died_at = expires_at.timestamp() - TIMES.lease_sec
    assert acquired_at.timestamp() - died_at <= TIMES.takeover_bound_sec + ALLOWANCE_SEC
    await stop(tb)


async def test_a_leader_that_cannot_renew_stops_before_its_lease_expires(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = Group(pg_engine)
    ta = asyncio.create_task(run_as_leader(pg_engine, "health", a.start, TIMES, holder="a"))
    await wait_until(lambda: a.running, 10)
    real_acquire = Lease.acquire

    def broken(self: Lease) -> int | None:
        if self.holder == "a":
            raise ConnectionError("database unreachable")  # e.g. a network partition
        return real_acquire(self)

    monkeypatch.setattr(leader_mod.Lease, "acquire", broken)
    await wait_until(lambda: not a.running, TIMES.lease_sec + ALLOWANCE_SEC)
    _, _, _, expires_at = lease_row(pg_engine)
    assert a.stopped[0] < expires_at, "the leader acted past its lease"
    # Another process takes over once the lease expired; the old one cannot renew and stays out.
    b = Group(pg_engine)
    tb = asyncio.create_task(run_as_leader(pg_engine, "health", b.start, TIMES, holder="b"))
    await wait_until(lambda: b.running, TIMES.takeover_bound_sec + ALLOWANCE_SEC)
    assert b.started[0] >= expires_at
    assert not a.running
    # The database comes back for "a": it finds the lease taken and stays a follower.
    monkeypatch.setattr(leader_mod.Lease, "acquire", real_acquire)
    await asyncio.sleep(TIMES.lease_sec)
    assert not a.running and b.running and lease_row(pg_engine)[0] == "b"
    await stop(ta)
    await stop(tb)


async def test_sqlite_leads_trivially(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    started: list[int] = []

    def start() -> list[asyncio.Task[None]]:
        started.append(1)
        return [asyncio.create_task(asyncio.Event().wait())]

    task = asyncio.create_task(run_as_leader(engine, "health", start, TIMES))
    await asyncio.sleep(0.2)
    assert started == [1]
    await stop(task)
    engine.dispose()


def _holder_of_a_killed_process() -> str:
    """The holder id a process made for itself before it was SIGKILLed (and reaped)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "from openpods.controllers.leader import new_holder_id; import sys, time; "
                               "print(new_holder_id(), flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        holder = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert " proc=" in holder, holder
    return holder


def test_holder_is_dead_only_for_a_gone_process_of_this_kernel_and_pid_namespace() -> None:
    dead = _holder_of_a_killed_process()
    assert leader_mod.holder_is_dead(dead)
    assert not leader_mod.holder_is_dead(leader_mod.new_holder_id())  # this very process
    assert not leader_mod.holder_is_dead("host:123:abcd")  # no mark: only expiry can tell
    boot, rest = dead.split(" proc=")[1].split("/", 1)
    foreign_boot = dead.replace(f" proc={boot}/", " proc=00000000-0000-0000-0000-000000000000/")
    assert not leader_mod.holder_is_dead(foreign_boot)  # another machine (or boot): never judged
    ns = rest.split("/")[0]
    assert not leader_mod.holder_is_dead(dead.replace(f"/{ns}/", "/1/"))  # another pid namespace (container)


async def test_a_killed_leader_on_this_machine_is_replaced_before_its_lease_expires(pg_engine: Engine) -> None:
    long = LeaseTimes(lease_sec=120.0, renew_sec=1.0, retry_sec=0.5)
    dead = _holder_of_a_killed_process()
    assert Lease(pg_engine, "health", dead, long.lease_sec, 5).acquire() == 1
    _, _, _, expires_at = lease_row(pg_engine)
    b = Group(pg_engine)
    tb = asyncio.create_task(run_as_leader(pg_engine, "health", b.start, long, holder="b"))
    await wait_until(lambda: b.running, 30)
    holder, epoch, acquired_at, _ = lease_row(pg_engine)
    assert (holder, epoch) == ("b", 2)
    assert acquired_at < expires_at, "waited for the dead process's lease to expire"
    await stop(tb)


async def test_a_live_holder_on_this_machine_keeps_its_lease(pg_engine: Engine) -> None:
    alive = leader_mod.new_holder_id()  # this process: alive, but not renewing (as if stalled)
    assert Lease(pg_engine, "health", alive, 120.0, 5).acquire() == 1
    b = Group(pg_engine)
    tb = asyncio.create_task(run_as_leader(pg_engine, "health", b.start, TIMES, holder="b"))
    await asyncio.sleep(TIMES.retry_sec * 6)  # several attempts
    assert not b.started
    assert lease_row(pg_engine)[:2] == (alive, 1)
    await stop(tb)
