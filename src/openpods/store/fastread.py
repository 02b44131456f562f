"""A prepared read for the hottest queries (``GET /v3/pods/<id>``, the list signature): the statement is compiled
once for the engine's dialect and run on a pooled DBAPI connection, with the same result conversions SQLAlchemy
applies (e.g. SQLite's stored timestamps to ``datetime``). SQLAlchemy's per-execution machinery (execution
context, result object, ~50 us) cost more than the query itself. For plain SELECTs with named bind parameters
only. On PostgreSQL the API runs the same compiled statements on the event loop instead (store.asyncread)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, Select


class FastRead:
    def __init__(self, engine: Engine, statement: Select[Any]) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        # The SQL with literal-execute parameters (e.g. aggregate_strings' separator) rendered into it; the
        # parameters a caller passes stay placeholders.
        expanded = compiled.construct_expanded_state(
            {name: None for name, bind in compiled.binds.items() if bind.required})
        self.engine = engine
        self.sql = expanded.statement
        literal = set(compiled.literal_execute_params) | set(compiled.post_compile_params)
        # Bound values the statement carries itself (e.g. a literal "pod" in a join condition).
        self.fixed = {compiled.bind_names[bind]: bind.effective_value for bind in compiled.binds.values()
                      if not bind.required and bind not in literal}
        self.positions: list[str] | None = list(expanded.positiontup) if compiled.positional else None  # type: ignore[arg-type]
        self.processors: list[Callable[[Any], Any] | None] = [
            column.type.dialect_impl(engine.dialect).result_processor(engine.dialect, None)
            for column in statement.selected_columns]
        self._converts = any(proc is not None for proc in self.processors)

    def args(self, params: Mapping[str, Any]) -> Any:
        """The DBAPI parameters for ``params`` (named or positional, as the dialect wants them)."""
        values = {**self.fixed, **params}
        return [values[name] for name in self.positions] if self.positions is not None else values

    def convert(self, row: Sequence[Any] | None) -> tuple[Any, ...] | None:
        """A DBAPI row with SQLAlchemy's result conversions applied."""
        if row is None:
            return None
        if not self._converts:
            return tuple(row)
        return tuple(value if proc is None or value is None else proc(value)
                     for value, proc in zip(row, self.processors, strict=True))

    def first(self, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row (converted), or None."""
        conn = self.engine.raw_connection()  # pooled; closing returns it (rolled back)
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(self.sql, self.args(params))
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            conn.close()
        return self.convert(row)


class FastReads:
    """One :class:`FastRead` per engine (tests run several apps, each with its own database, in one process)."""

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self._by_engine: dict[int, FastRead] = {}

    def compiled(self, engine: Engine) -> FastRead:
        read = self._by_engine.get(id(engine))
        if read is None or read.engine is not engine:
            read = self._by_engine[id(engine)] = FastRead(engine, self.statement)
        return read

    def first(self, engine: Engine, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        return self.compiled(engine).first(params)
