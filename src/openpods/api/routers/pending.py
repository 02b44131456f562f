"""Operations of the spec not built yet: they answer 501 in the envelope so the OpenAPI document is complete."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from openpods.api.envelope import error_response

router = APIRouter()

PENDING: list[tuple[str, str, str]] = []


def _add(method: str, path: str, operation_id: str) -> None:
    def endpoint() -> JSONResponse:
        return error_response(501, f"{operation_id} is not available yet on this OpenPods version.")

    endpoint.__name__ = operation_id
    router.add_api_route(path, endpoint, methods=[method], operation_id=operation_id, summary=operation_id)
    PENDING.append((method, path, operation_id))
