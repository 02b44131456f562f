"""Healthcheck and the error handler Traefik uses for unreachable upstreams."""

from __future__ import annotations

from starlette.responses import JSONResponse

from openpods.api.envelope import error_response, ok
from openpods.api.routing import api_router

router = api_router()
HEALTHY = "I promise I'm healthy."
# The original's texts (Traefik's error pages for the Pods API router).
INVALID = "Invalid request: The Pods service does not know how to fulfill the request."
UNPARSABLE = "Unable to parse Pods service response. The server may be misconfigured or overloaded."
CANNED = {
    404: "Invalid request: Invalid request: the requested URL is not an Pods endpoint.",
    500: UNPARSABLE,
    501: UNPARSABLE,
    502: "Timeout error waiting on Pods service response. The server may be busy or overloaded.",
    503: UNPARSABLE,
    504: UNPARSABLE,
}


@router.get("/healthcheck", operation_id="healthcheck", summary="healthcheck")
async def healthcheck() -> JSONResponse:  # async: no I/O, so no hop to the thread pool
    return ok(HEALTHY)  # the original's ok("I promise I'm healthy."): the text is the result


@router.get("/v3/pods/healthcheck", include_in_schema=False)
async def pods_healthcheck() -> JSONResponse:
    return ok(HEALTHY)


@router.get("/error-handler/{status}", operation_id="error_handler", summary="error_handler")
def error_handler(status: int) -> JSONResponse:
    code = status if 400 <= status <= 599 else 500
    return error_response(code, CANNED.get(code, INVALID))
