"""The Tapis envelope ``{result, status, message, version, metadata}`` and error mapping.

Content-Type is exactly ``application/json`` (tapipy parses results only then). Validation errors are HTTP 400
with ``message`` a list of ``"<field path>: <problem>"`` strings; anything unexpected is a 500 with no details.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from openpods import TAPIS_API_VERSION

log = logging.getLogger(__name__)
OK_MESSAGE = "The request was successful."


class TapisError(Exception):
    """An error answered in the envelope with its HTTP status."""

    status_code = 400

    def __init__(self, message: str | list[str], status_code: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message if isinstance(message, str) else "; ".join(message))
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers


class BadRequest(TapisError):
    status_code = 400


class Unauthorized(TapisError):
    status_code = 401


class Forbidden(TapisError):
    status_code = 403


class NotFound(TapisError):
    status_code = 404


class Conflict(TapisError):
    status_code = 409


def _default(value: Any) -> Any:
    """JSON for what the stores hand back besides JSON types: timestamps (naive UTC, ISO, as Tapis)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return jsonable_encoder(value)


def envelope(result: Any, message: str | list[str] = OK_MESSAGE, *, status: str = "success",
             metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"result": result, "status": status, "message": message, "version": TAPIS_API_VERSION,
            "metadata": metadata or {}}


class EnvelopeResponse(JSONResponse):
    """application/json without charset (tapipy needs exactly that); plain json.dumps, which is an order of
    magnitude faster than FastAPI's generic encoder on large lists."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_default, ensure_ascii=False, separators=(",", ":")).encode()


def ok(result: Any, message: str = OK_MESSAGE, *, metadata: dict[str, Any] | None = None,
       status_code: int = 200) -> JSONResponse:
    return EnvelopeResponse(envelope(result, message, metadata=metadata), status_code=status_code)


def no_change(view: Any, kind: str) -> JSONResponse:
    """An update that changes nothing: HTTP 200 with status "error", as Tapis answers it."""
    return EnvelopeResponse(envelope(view, f"Incoming data made no changes to {kind}. Is incoming data equal to "
                                           "current data?", status="error"))


def error_response(status_code: int, message: str | list[str], result: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return EnvelopeResponse(envelope(result, message, status="error"), status_code=status_code, headers=headers)


def validation_messages(errors: list[dict[str, Any]]) -> list[str]:
    """Pydantic errors as readable strings naming the field, e.g. ``networking, default, port: ...``."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (not part of the request schema)."
        out.append(f"{', '.join(loc)}: {msg}" if loc else msg)
    return out


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_FILE_PATH_RE = re.compile(r"^(/v3/pods/(?:volumes|snapshots)/[^/]*/(?:contents|upload))/")


class GuardMiddleware:
    """Outermost layer: answers 404 for paths with control characters before anything looks them up (a NUL byte
    cannot even reach PostgreSQL), and turns an unexpected exception into a 500 envelope *without* letting it
    propagate, so the server keeps the client's connection alive."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if _CONTROL_RE.search(path):
            file_path = _FILE_PATH_RE.match(path)
            if file_path and not _CONTROL_RE.search(file_path.group(1)):
                # The object exists maybe, but the file path inside it is malformed.
                response = error_response(400, ["path: control characters are not allowed in file paths."])
            else:
                # No object's id contains control characters: nothing can be found at such a URL.
                response = error_response(404, "No such resource: URLs with control characters name nothing.")
            await response(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("Unexpected error on %s %s", scope.get("method"), path)
            if started:
                raise
            await error_response(500, "Unexpected server error; it has been logged.")(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TapisError)
    async def _tapis(_: Request, exc: TapisError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_messages(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def _model_validation(_: Request, exc: ValidationError) -> JSONResponse:
        return error_response(400, validation_messages(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "No such endpoint."
        if exc.status_code == 405:
            message = "Method not allowed for this endpoint."
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def _data_error(_: Request, exc: DataError) -> JSONResponse:
        # Values the database cannot store (e.g. out of range for the column): the client's input.
        log.info("database refused a value: %s", exc.orig)
        return error_response(400, ["A value in the request is out of range or has characters that cannot be stored."])
