"""Database engine, sessions and migrations (SQLite by default, PostgreSQL when configured)."""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import QueuePool

T = TypeVar("T")
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every OpenPods process sharing a database.
_MIGRATION_LOCK_ID = 0x0DE9_0D5


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Pooled: a request reuses an open connection (opening one and setting the pragmas costs more than a
        # small query). Sized for the API's thread pool (40 threads) so overflow connections, which are closed
        # on return, stay rare.
        memory = url in ("sqlite://", "sqlite:///") or ":memory:" in url  # one connection is the database
        pool: dict[str, Any] = {} if memory else {"poolclass": QueuePool, "pool_size": 20, "max_overflow": 20}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # WAL lets the CLI and the server use the file at once; busy_timeout waits instead of failing.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Apply every migration. Safe to call from several processes at once (PostgreSQL advisory lock)."""
    url = engine.url.render_as_string(hide_password=False)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        try:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
                conn.commit()


def retry_on_integrity_error(fn: Callable[[], T], attempts: int = 20) -> T:
    """Run ``fn`` (which opens its own transaction) again when a concurrent writer took the key it computed
    (e.g. the next tag_timestamp of a template); a short random pause spreads the retries."""
    for attempt in range(attempts):
        try:
            return fn()
        except IntegrityError:
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.001, 0.02))
    raise AssertionError("unreachable")


def retry_on_stale_data(fn: Callable[..., T], attempts: int = 6,
                        also: tuple[type[Exception], ...] = ()) -> Callable[..., T]:
    """Decorator for a read-modify-write that opens its own transaction(s): when a concurrent writer changed
    (versioned pods) or removed the row it read, the UPDATE/DELETE matches no row and SQLAlchemy raises
    StaleDataError; the whole function runs again on a fresh read (which then sees the new state, or that the
    object is gone). ``also`` names further exceptions to retry (e.g. IntegrityError for an upsert that lost an
    insert race). The last attempt's error propagates (the API answers StaleDataError with 409)."""
    retried = (StaleDataError, *also)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except retried:
                if attempt == attempts - 1:
                    raise
                time.sleep(random.uniform(0.001, 0.02) * (attempt + 1))
        raise AssertionError("unreachable")

    return wrapper


@contextlib.contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    with factory() as session, session.begin():
        yield session
