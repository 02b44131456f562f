"""A prepared read for the hottest query (``GET /v3/pods/<id>``): the statement is compiled once for the
engine's dialect and run on a pooled DBAPI connection, with the same result conversions SQLAlchemy applies
(e.g. SQLite's stored timestamps to ``datetime``). SQLAlchemy's per-execution machinery (execution context,
result object, ~50 us) cost more than the query itself. For plain SELECTs with named bind parameters only."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Engine, Select


class FastRead:
    def __init__(self, engine: Engine, statement: Select[Any]) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        self.engine = engine
        self.sql = compiled.string
        # Bound values the statement carries itself (e.g. a literal "pod" in a join condition).
        self.fixed = {name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required}
        self.positions: list[str] | None = list(compiled.positiontup) if compiled.positional else None  # type: ignore[arg-type]
        self.processors: list[Callable[[Any], Any] | None] = [
            column.type.dialect_impl(engine.dialect).result_processor(engine.dialect, None)
            for column in statement.selected_columns]

    def first(self, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row (converted), or None."""
        values = {**self.fixed, **params}
        args: Any = [values[name] for name in self.positions] if self.positions is not None else values
        conn = self.engine.raw_connection()  # pooled; closing returns it (rolled back)
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(self.sql, args)
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            conn.close()
        if row is None:
            return None
        return tuple(value if proc is None or value is None else proc(value)
                     for value, proc in zip(row, self.processors, strict=True))


class FastReads:
    """One :class:`FastRead` per engine (tests run several apps, each with its own database, in one process)."""

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self._by_engine: dict[int, FastRead] = {}

    def first(self, engine: Engine, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        read = self._by_engine.get(id(engine))
        if read is None or read.engine is not engine:
            read = self._by_engine[id(engine)] = FastRead(engine, self.statement)
        return read.first(params)
