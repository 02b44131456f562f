"""store.asyncread: the hot reads on the event loop (PostgreSQL only; SQLite reads its local file directly).

Against a real PostgreSQL: every read sees what another connection (another process: a spawner, the health
loop, another API replica) committed before it; no read leaves a transaction open; a connection that broke
while idle, a read cancelled in mid-flight and an unreachable database are handled; the pool serves one event
loop at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, bindparam, create_engine, func, literal_column, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from tests.conftest import fresh_database

from openpods.store.asyncread import AsyncReadPool
from openpods.store.fastread import FastRead


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with fresh_database("postgres", tmp_path) as url:
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE items (id text PRIMARY KEY, value text NOT NULL)")
            conn.exec_driver_sql("INSERT INTO items VALUES ('a', 'first')")
        yield engine
        engine.dispose()


def other_process(engine: Engine) -> psycopg.Connection[Any]:
    """A connection of its own, as another OpenPods process has (autocommit: each statement commits)."""
    conninfo = engine.url.render_as_string(hide_password=False).replace("postgresql+psycopg", "postgresql")
    return psycopg.connect(conninfo, autocommit=True)


def value_read(engine: Engine) -> FastRead:
    from sqlalchemy import column, table

    items = table("items", column("id"), column("value"))
    return FastRead(engine, select(items.c.value).where(items.c.id == bindparam("id")))


def backend_pids(engine: Engine) -> set[int]:
    with other_process(engine) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid()").fetchall()
    return {pid for (pid,) in rows}


async def test_a_read_sees_what_another_connection_committed_and_keeps_no_transaction(engine: Engine) -> None:
    pool, read = AsyncReadPool(engine, max_size=2), value_read(engine)
    assert pool.available()
    with other_process(engine) as writer:
        for n in range(8):  # past psycopg's prepare threshold: prepared statements see new data too
            writer.execute("UPDATE items SET value = %s WHERE id = 'a'", [f"v{n}"])
            assert await pool.first(read, {"id": "a"}) == (f"v{n}",)
            assert len(pool) == 1
            # Nothing is left open on the reused connection (no snapshot held, nothing for VACUUM to wait on).
            ((conn, _),) = pool._idle
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        writer.execute("DELETE FROM items WHERE id = 'a'")
        assert await pool.first(read, {"id": "a"}) is None
    await pool.close()
    assert not pool.available() and len(pool) == 0


async def test_a_connection_broken_while_idle_is_replaced(engine: Engine) -> None:
    pool, read = AsyncReadPool(engine, max_size=2), value_read(engine)
    assert pool.available()
    assert await pool.first(read, {"id": "a"}) == ("first",)
    (pid,) = backend_pids(engine)
    with other_process(engine) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    while pid in backend_pids(engine):
        await asyncio.sleep(0.01)
    assert await pool.first(read, {"id": "a"}) == ("first",)  # answered, on a new connection
    assert len(pool) == 1 and backend_pids(engine) != {pid}
    await pool.close()


async def test_a_read_cancelled_in_flight_drops_its_connection(engine: Engine) -> None:
    pool = AsyncReadPool(engine, max_size=1)
    assert pool.available()
    slow = FastRead(engine, select(func.pg_sleep(bindparam("sec", type_=None)), literal_column("1")))
    task = asyncio.create_task(pool.first(slow, {"sec": 2}))
    while len(pool) == 0 or not backend_pids(engine):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(pool) == 0 and pool._idle == []  # its state is unknown: never reused
    assert await pool.first(value_read(engine), {"id": "a"}) == ("first",)
    await pool.close()


async def test_an_unreachable_database_is_sqlalchemys_operational_error(engine: Engine) -> None:
    """The API answers it with 503, as it answers the sync path's."""
    down = create_engine(engine.url.set(host="127.0.0.1", port=1), poolclass=NullPool)
    pool = AsyncReadPool(down, max_size=1)
    assert pool.available()
    with pytest.raises(OperationalError):
        await pool.first(value_read(down), {"id": "a"})
    assert len(pool) == 0


def test_the_pool_serves_one_loop_at_a_time(engine: Engine) -> None:
    pool, read = AsyncReadPool(engine, max_size=2), value_read(engine)

    async def use() -> Any:
        return await pool.first(read, {"id": "a"}) if pool.available() else "unavailable"

    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(use()) == ("first",)
        assert second.run_until_complete(use()) == "unavailable"  # the first loop's connections are in use
        ((old, _),) = pool._idle
        first.close()
        assert second.run_until_complete(use()) == ("first",)  # the first loop is gone: the second takes over
        assert old.closed and len(pool) == 1
        second.run_until_complete(pool.close())
    finally:
        first.close()
        second.close()
