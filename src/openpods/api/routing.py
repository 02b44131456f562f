"""The one way the API makes its routers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter


def api_router(**kwargs: Any) -> APIRouter:
    """An APIRouter whose routes read a JSON body without a Content-Type header as JSON, as the original service
    (an older FastAPI) does: its own test suite and many scripts send ``data=json.dumps(...)`` with no header.
    Set per router because the app adds the routes themselves (api.app), not through include_router, so the
    app-level ``strict_content_type`` would not reach them."""
    return APIRouter(strict_content_type=False, **kwargs)
