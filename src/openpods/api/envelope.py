"""The Tapis envelope ``{result, status, message, version, metadata}`` and error mapping.

Content-Type is exactly ``application/json`` (tapipy parses results only then). Validation errors are HTTP 400
with ``message`` a list of ``"<field path>: <problem>"`` strings; anything unexpected is a 500 with no details.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from openpods import TAPIS_API_VERSION
from openpods.domain.errors import (
    ConflictError,
    DomainError,
    InvalidInput,
    NotFoundError,
    PermissionDenied,
    TooLarge,
)

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


def rfc3339(value: datetime) -> str:
    """A timestamp as the spec's ``date-time`` (RFC 3339) with the zone spelled ``Z``, microseconds kept:
    ``2024-05-01T12:00:00.123456Z``. The stores hold naive UTC; a naive value without a zone would be read as
    local time by browsers (TapisUI's ``new Date(…)``)."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _default(value: Any) -> Any:
    """JSON for what the stores hand back besides JSON types: timestamps (RFC 3339, UTC)."""
    if isinstance(value, datetime):
        return rfc3339(value)
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


MAX_ERROR_MESSAGES = 50


def cap_messages(messages: list[str], limit: int = MAX_ERROR_MESSAGES) -> list[str]:
    """At most ``limit`` messages, then one that says how many were left out (a huge body with an error per
    item must not make a huge answer)."""
    if len(messages) <= limit:
        return messages
    return [*messages[:limit], f"... and {len(messages) - limit} more errors."]


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` once a request body passes its cap; FastAPI lets HTTP exceptions through its
    body parsing, so it ends as a 413 envelope (and the rest of the body is never read)."""

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(413, f"The request body is too large: this endpoint accepts at most {limit} bytes "
                              f"(setting {setting}).")


# Endpoints whose body is a file streamed to disk (bounded by the volume's size_limit, not by the JSON cap).
_UPLOAD_PATH_RE = re.compile(r"^/v3/pods/(?:volumes/[^/]+/upload/.+|[^/]+/(?:upload_to_pod|upload))$")


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_FILE_PATH_RE = re.compile(r"^(/v3/pods/(?:volumes|snapshots)/[^/]*/(?:contents|upload))/")


class GuardMiddleware:
    """Outermost layer: answers 404 for paths with control characters before anything looks them up (a NUL byte
    cannot even reach PostgreSQL), and turns an unexpected exception into a 500 envelope *without* letting it
    propagate, so the server keeps the client's connection alive."""

    def __init__(self, app: Any, max_body_bytes: int = 0, max_upload_bytes: int = 0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes  # 0: no cap
        self.max_upload_bytes = max_upload_bytes

    def _body_cap(self, path: str) -> tuple[int, str]:
        if _UPLOAD_PATH_RE.match(path):
            return self.max_upload_bytes, "max_upload_bytes"
        return self.max_body_bytes, "max_request_body_bytes"

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
        limit, setting = self._body_cap(path)
        if limit:
            too_large = BodyTooLarge(limit, setting)
            declared = _content_length(scope)
            if declared is not None and declared > limit:  # refused before a byte of it is read
                await error_response(413, too_large.detail)(scope, receive, send)
                return
            receive = _capped_receive(receive, limit, too_large)
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no exception handler saw it (e.g. a streaming endpoint)
            if started:
                raise
            await error_response(413, exc.detail)(scope, receive, send)
        except Exception:
            log.exception("Unexpected error on %s %s", scope.get("method"), path)
            if started:
                raise
            await error_response(500, "Unexpected server error; it has been logged.")(scope, receive, send)


def _content_length(scope: Any) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _capped_receive(receive: Any, limit: int, too_large: BodyTooLarge) -> Any:
    """``receive`` that counts body bytes as they arrive and raises ``too_large`` past ``limit``: the server
    reads no more of the body than the cap (plus one chunk)."""
    total = 0

    async def capped() -> Any:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise too_large
        return message

    return capped


# The one place the core's errors become HTTP statuses.
DOMAIN_ERROR_STATUS: dict[type[DomainError], int] = {
    InvalidInput: 400, PermissionDenied: 403, NotFoundError: 404, ConflictError: 409, TooLarge: 413,
}


def domain_error_status(exc: DomainError) -> int:
    for kind in type(exc).__mro__:
        if kind in DOMAIN_ERROR_STATUS:
            return DOMAIN_ERROR_STATUS[kind]  # type: ignore[index]
    return 400  # a DomainError of no listed kind is still the user's input, never a 500


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return error_response(domain_error_status(exc), exc.message)

    @app.exception_handler(TapisError)
    async def _tapis(_: Request, exc: TapisError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, cap_messages(validation_messages(list(exc.errors()))))

    @app.exception_handler(ValidationError)
    async def _model_validation(_: Request, exc: ValidationError) -> JSONResponse:
        return error_response(400, cap_messages(validation_messages(list(exc.errors()))))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "No such endpoint."
        if exc.status_code == 405:
            message = "Method not allowed for this endpoint."
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(StaleDataError)
    async def _stale(_: Request, exc: StaleDataError) -> JSONResponse:
        # A concurrent writer changed or removed the row a write read (the write paths retry first): the
        # client's request was fine, the object moved under it.
        log.info("concurrent change, answered 409: %s", exc)
        return error_response(409, "The object was changed or deleted concurrently; please retry.")

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        # The database is restarting or unreachable: a 503 the client may retry, not a 500.
        log.warning("database unavailable: %s", exc)
        return error_response(503, "The database is unavailable right now; retry shortly.",
                              headers={"Retry-After": "2"})

    @app.exception_handler(DataError)
    async def _data_error(_: Request, exc: DataError) -> JSONResponse:
        # Values the database cannot store (e.g. out of range for the column): the client's input.
        log.info("database refused a value: %s", exc.orig)
        return error_response(400, ["A value in the request is out of range or has characters that cannot be stored."])
