"""The FastAPI application: routers in the order that keeps fixed paths ahead of ``/pods/{pod_id}``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute

from openpods import __version__
from openpods.api.envelope import GuardMiddleware, install_error_handlers
from openpods.api.fast_routes import hoist
from openpods.api.routers import (
    auth,
    images,
    jupyter,
    misc,
    pod_runtime,
    pods,
    proxy,
    snapshots,
    templates,
    volumes,
)
from openpods.context import AppContext

MODULES = (misc, auth, proxy, templates, images, snapshots, volumes, jupyter, pod_runtime, pods)
HOT_ROUTES = ("get_pod", "list_pods")


def ordered_routes() -> list[BaseRoute]:
    """Every API route, in the order that keeps fixed paths ahead of ``/pods/{pod_id}``."""
    return [route for module in MODULES for route in module.router.routes]


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(
        title="OpenPods — Tapis Pods API",
        version=__version__,
        description="Self-hosted, wire-compatible implementation of the Tapis Pods API v1.9.0.",
        openapi_url="/v3/pods/openapi.json",
        docs_url="/v3/pods/docs",
        redoc_url=None,
        # A JSON body without a Content-Type header is parsed as JSON, as the original service (an older
        # FastAPI) does: its own test-suite and scripts send `data=json.dumps(...)` with no header.
        strict_content_type=False,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    if ctx.settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=ctx.settings.cors_allow_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            max_age=600,
        )
    # The routes themselves rather than include_router: FastAPI's matching through included routers costs
    # ~1 us per route and router on every request. Safe because no router adds a prefix, dependency or setting
    # at include time. The hottest routes go first where that changes no answer (api.fast_routes).
    app.router.routes.extend(hoist(ordered_routes(), HOT_ROUTES))
    app.add_middleware(GuardMiddleware, max_body_bytes=ctx.settings.max_request_body_bytes,
                       max_upload_bytes=ctx.settings.max_upload_bytes)  # added last: the outermost layer
    return app
