"""Responses for large lists whose rows hold JSON columns: the columns' stored JSON text goes into the response
as it is (``orjson.Fragment``) instead of being decoded into Python objects and encoded again. For
``GET /v3/pods`` with 1,000 pods that decode/encode round trip and the ORM cost ~10x the rest.

The envelope and every other value are the same as :func:`openpods.api.envelope.ok` renders them (timestamps go
through the envelope's own ``default``)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import JSON, ColumnElement, Text, cast
from sqlalchemy.orm import InstrumentedAttribute
from starlette.responses import Response

from openpods.api.envelope import OK_MESSAGE, _default, envelope


def raw_json_columns(attrs: list[InstrumentedAttribute[Any]]) -> list[ColumnElement[Any]]:
    """The given columns for a Core select, JSON ones as their stored text (labelled with their own name)."""
    out: list[ColumnElement[Any]] = []
    for attr in attrs:
        column = attr.expression
        out.append(cast(column, Text).label(attr.key) if isinstance(column.type, JSON) else column.label(attr.key))
    return out


class RowView:
    """Turns a row selected with :func:`raw_json_columns` into ``{column key: value}``, JSON columns embedded
    verbatim (SQL NULL as JSON null)."""

    def __init__(self, attrs: list[InstrumentedAttribute[Any]]) -> None:
        self.keys = [a.key for a in attrs]
        self.json_positions = [i for i, a in enumerate(attrs) if isinstance(a.expression.type, JSON)]

    def __call__(self, row: Any) -> dict[str, Any]:
        values = list(row)
        for i in self.json_positions:
            if values[i] is not None:
                values[i] = orjson.Fragment(values[i])
        return dict(zip(self.keys, values, strict=True))


def ok_raw(result: Any, message: str = OK_MESSAGE) -> Response:
    """Like ``ok``, for results holding :func:`embed`-ed values."""
    body = orjson.dumps(envelope(result, message), default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    return Response(body, media_type="application/json")
