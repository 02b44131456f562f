"""Healthcheck and the error handler Traefik uses for unreachable upstreams."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from openpods.api.envelope import error_response, ok

router = APIRouter()
HEALTHY = "I promise I'm healthy."
CANNED = {
    502: "Timeout error waiting on Pods service response; the service may be restarting. Try again shortly.",
    503: "Pods service is temporarily unavailable. Try again shortly.",
    504: "Timeout waiting on Pods service response.",
}


@router.get("/healthcheck", operation_id="healthcheck", summary="healthcheck")
def healthcheck() -> JSONResponse:
    return ok("", HEALTHY)


@router.get("/v3/pods/healthcheck", include_in_schema=False)
def pods_healthcheck() -> JSONResponse:
    return ok("", HEALTHY)


@router.get("/error-handler/{status}", operation_id="error_handler", summary="error_handler")
def error_handler(status: int) -> JSONResponse:
    code = status if 400 <= status <= 599 else 500
    return error_response(code, CANNED.get(code, f"Pods service error {code}."))
