"""The FastAPI application: routers in the order that keeps fixed paths ahead of ``/pods/{pod_id}``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from openpods import __version__
from openpods.api.envelope import GuardMiddleware, install_error_handlers
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
    for module in (misc, auth, proxy, templates, images, snapshots, volumes, jupyter, pod_runtime, pods):
        app.include_router(module.router)
    app.add_middleware(GuardMiddleware, max_body_bytes=ctx.settings.max_request_body_bytes,
                       max_upload_bytes=ctx.settings.max_upload_bytes)  # added last: the outermost layer
    return app
