"""Single-statement reads on the API's event loop (PostgreSQL): ``GET /v3/pods/<id>`` and the list signature.

A read through the sync engine costs a hop to the thread pool and four round trips to the database (the pool's
pre-ping, psycopg's implicit ``BEGIN``, the ``SELECT``, the rollback on return), each paid in both processes'
CPU. Here a read is one round trip on an *autocommit* psycopg connection, awaited on the event loop: the
statement runs in a transaction of its own, so it sees everything committed before it was sent, by any process
(no snapshot is kept between reads, nothing is cached here).

Connections belong to the event loop that first used the pool (asyncio connections cannot move between loops);
:meth:`AsyncReadPool.available` tells a caller on another loop to take the sync path (once that loop is closed,
the next loop to ask takes the pool over: test clients run a loop per request). At most ``max_size``
connections; one that broke while idle (the database restarted, an idle timeout) is replaced once per read, as
the sync pool's pre-ping would. Errors are raised as SQLAlchemy's (``OperationalError`` ...), so the API's
error handlers answer them as they answer the sync path's (503 for an unreachable database)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from openpods.store.fastread import FastRead


class AsyncReadPool:
    def __init__(self, engine: Engine, max_size: int = 8) -> None:
        if engine.dialect.driver != "psycopg":
            raise ValueError(f"AsyncReadPool needs the psycopg driver, not {engine.dialect.driver}")
        # The engine's own connect arguments (host, credentials, its adapters), so both paths connect alike.
        _, self._connect_args = engine.dialect.create_connect_args(engine.url)
        self.max_size = max_size
        # Idle connections, each with its cursor (reused: making one per read costs more than the rest of it).
        self._idle: list[tuple[psycopg.AsyncConnection[Any], psycopg.AsyncCursor[Any]]] = []
        self._size = 0  # open connections, idle or in use
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._bind_lock = threading.Lock()  # loops of different threads may ask at once

    def available(self) -> bool:
        """Whether the running event loop may use the pool (the first loop to ask binds it)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return not self._closed
        with self._bind_lock:
            if self._closed or (self._loop is not None and not self._loop.is_closed()):
                return False
            # Unbound, or its loop is gone (with it any use of its connections): drop those, bind this one.
            for conn, _ in self._idle:
                with contextlib.suppress(Exception):
                    conn.pgconn.finish()
            self._idle, self._size = [], 0
            self._loop, self._slots = loop, asyncio.Semaphore(self.max_size)
            return True

    async def first(self, read: FastRead, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of ``read`` (converted as the sync path converts it), or None."""
        args = read.args(params)
        assert self._slots is not None, "call available() first"
        async with self._slots:
            for attempt in range(2):
                reused = attempt == 0 and bool(self._idle)  # a retry takes a new one: the others may be broken too
                conn, cursor = self._idle.pop() if reused else await self._connect(read.sql, args)
                try:
                    await cursor.execute(read.sql, args)
                    row = await cursor.fetchone()
                except psycopg.Error as exc:
                    if conn.broken or conn.closed:
                        await self._discard(conn)
                        if reused and isinstance(exc, psycopg.OperationalError):
                            continue  # it went stale while idle: once more, on a new connection
                    else:
                        self._idle.append((conn, cursor))  # autocommit: a failed statement leaves nothing behind
                    raise _sqlalchemy_error(read.sql, args, exc) from exc
                except BaseException:
                    await self._discard(conn)  # cancelled in the middle of a round trip: its state is unknown
                    raise
                self._idle.append((conn, cursor))
                return read.convert(row)
        raise AssertionError("unreachable")

    async def _connect(self, sql: str, args: Any) -> tuple[psycopg.AsyncConnection[Any], psycopg.AsyncCursor[Any]]:
        try:
            conn = await psycopg.AsyncConnection.connect(**self._connect_args, autocommit=True)
        except psycopg.Error as exc:
            raise _sqlalchemy_error(sql, args, exc) from exc
        self._size += 1
        return conn, conn.cursor()

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._size -= 1
        with contextlib.suppress(Exception):
            await conn.close()

    async def close(self) -> None:
        """Close the idle connections (on the pool's loop, at shutdown); the pool is not used afterwards."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await self._discard(conn)

    def __len__(self) -> int:
        return self._size


def _sqlalchemy_error(sql: str, args: Any, exc: psycopg.Error) -> DBAPIError:
    return DBAPIError.instance(sql, args, exc, psycopg.Error)  # type: ignore[return-value]
