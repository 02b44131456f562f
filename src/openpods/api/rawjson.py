"""Fast JSON for large lists of rows (``GET /v3/pods`` with thousands of pods).

- JSON columns are read as their stored text and embedded verbatim (``orjson.Fragment``) instead of being
  decoded into Python objects and encoded again.
- Each row's rendered JSON is kept by (tenant, id) with the row's version: its ``revision`` (bumped on every ORM
  write, the optimistic lock) and ``creation_ts`` (a row deleted and made again starts its revisions over). A
  list reads only ``(id, version)`` of every row and fetches and renders just the rows that changed since it
  last saw them.
- A whole list is kept with its signature, the listed rows' ids and versions aggregated into strings by the
  database: an unchanged list costs one aggregate query.

Whoever writes a rendered column must bump ``revision`` (the ORM does; a Core UPDATE must set it).

Values are rendered as :func:`openpods.api.envelope.ok` renders them: the same view function and the envelope's
own ``default`` for timestamps."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
from sqlalchemy import JSON, ColumnElement, Text, cast
from sqlalchemy.orm import InstrumentedAttribute
from starlette.responses import Response

from openpods.api.envelope import OK_MESSAGE, _default, envelope

_OPTS = orjson.OPT_PASSTHROUGH_DATETIME  # timestamps go through the envelope's default, like every response


def raw_json_columns(attrs: list[InstrumentedAttribute[Any]]) -> list[ColumnElement[Any]]:
    """The given columns for a Core select, JSON ones as their stored text (labelled with their own name)."""
    out: list[ColumnElement[Any]] = []
    for attr in attrs:
        column = attr.expression
        out.append(cast(column, Text).label(attr.key) if isinstance(column.type, JSON) else column.label(attr.key))
    return out


def embed(text: str | None) -> Any:
    """A JSON column's stored text, embedded verbatim; SQL NULL and JSON null are None."""
    return None if text is None or text == "null" else orjson.Fragment(text)


class RowRenderer:
    """Renders a row selected with :func:`raw_json_columns` to JSON bytes through ``view`` (which reads the
    row's attributes, as it reads an ORM object's)."""

    def __init__(self, attrs: list[InstrumentedAttribute[Any]], view: Callable[[Any], dict[str, Any]]) -> None:
        self.keys = [a.key for a in attrs]
        self.json_positions = [i for i, a in enumerate(attrs) if isinstance(a.expression.type, JSON)]
        self.view = view

        class _Row:
            __slots__ = tuple(self.keys)

        self._row_type = _Row

    def __call__(self, values: Iterable[Any]) -> bytes:
        values = list(values)
        for i in self.json_positions:
            values[i] = embed(values[i])
        row = self._row_type()
        for key, value in zip(self.keys, values, strict=True):
            setattr(row, key, value)
        return orjson.dumps(self.view(row), default=_default, option=_OPTS)


def ok_fragments(rendered: list[bytes], message: str = OK_MESSAGE) -> Response:
    """Like ``ok(list)``, for a result list whose items are already rendered JSON."""
    return ok_fragment(b"[" + b",".join(rendered) + b"]", message)


def ok_fragment(rendered: bytes, message: str = OK_MESSAGE) -> Response:
    """Like ``ok(result)``, for a result already rendered to JSON."""
    body = orjson.dumps(envelope(orjson.Fragment(rendered), message), default=_default, option=_OPTS)
    return Response(body, media_type="application/json")
