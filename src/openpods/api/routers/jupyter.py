"""Jupyter helpers of the spec: a personal JupyterLab pod per user, and uploads into its home directory."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from openpods.api.deps import Caller, Ctx
from openpods.api.envelope import BadRequest, Conflict, NotFound, ok
from openpods.api.routers.pod_runtime import _runtime, copy_into_container
from openpods.api.routers.pods import create_pod, load_pod
from openpods.domain.container_spec import container_name
from openpods.domain.models import NewPod
from openpods.domain.permissions import Level
from openpods.store.db import transaction
from openpods.store.tables import Pod, Template

router = APIRouter(prefix="/v3/pods/jupyter", tags=["jupyter"])
JUPYTER_TEMPLATE = "jupyterlab"
JUPYTER_HOME = "/home/jovyan"


def jupyter_pod_id(username: str) -> str:
    base = re.sub(r"[^a-z0-9]", "", username.lower())
    if not base or not base[0].isalpha():
        base = f"u{base}"
    return f"{base[:57]}jupyter"


@router.get("/ensure", operation_id="ensure_jupyter_pod", summary="ensure_jupyter_pod")
def ensure_jupyter_pod(ctx: Ctx, caller: Caller) -> JSONResponse:
    pod_id = jupyter_pod_id(caller.username)
    with transaction(ctx.sessions) as s:
        pod = s.get(Pod, (caller.tenant_id, pod_id))
        if pod is not None:
            load_pod(s, caller, pod_id, Level.READ)
            url = (pod.networking.get("default") or {}).get("url", "")
            return ok(
                {
                    "pod_id": pod_id,
                    "url": f"https://{url}" if url else "",
                    "status": pod.status,
                    "created": False,
                },
                "Jupyter pod exists.",
            )
        if s.get(Template, (caller.tenant_id, JUPYTER_TEMPLATE)) is None:
            raise NotFound(
                f"This site has no '{JUPYTER_TEMPLATE}' template; an admin can add it with "
                "`openpods templates import`."
            )
    response = create_pod(
        ctx,
        caller,
        NewPod(pod_id=pod_id, template=JUPYTER_TEMPLATE, description=f"JupyterLab of {caller.username}"),
    )
    with transaction(ctx.sessions) as s:
        pod = s.get(Pod, (caller.tenant_id, pod_id))
        url = (pod.networking.get("default") or {}).get("url", "") if pod else ""
    del response
    return ok(
        {"pod_id": pod_id, "url": f"https://{url}" if url else "", "status": "REQUESTED", "created": True},
        "Jupyter pod created.",
    )


@router.post("/{pod_id}/upload", operation_id="upload_to_jupyter", summary="upload_to_jupyter")
async def upload_to_jupyter(ctx: Ctx, caller: Caller, pod_id: str, request: Request) -> JSONResponse:
    """Writes the file below the Jupyter home directory of a running pod (USER on the pod)."""

    def check() -> None:
        with transaction(ctx.sessions) as s:
            pod = load_pod(s, caller, pod_id, Level.USER)
            if pod.status != "AVAILABLE":
                raise Conflict(f"Pod '{pod_id}' is {pod.status}; it must be AVAILABLE to upload.")

    await asyncio.to_thread(check)
    runtime = _runtime(ctx)
    form = await request.form(max_files=1, max_fields=5)
    try:
        upload, path = form.get("file"), form.get("path")
        if not isinstance(upload, UploadFile):
            raise BadRequest(["file: a file part named 'file' is required."])
        rel = (path if isinstance(path, str) and path else upload.filename or "").strip("/")
        if not rel or "\x00" in rel or ".." in rel.split("/"):
            raise BadRequest(
                ["path: a relative path inside the Jupyter home directory is required (no '..')."]
            )
        dest = f"{JUPYTER_HOME}/{rel}"
        name = container_name(caller.tenant_id, pod_id, ctx.installation_id)
        await copy_into_container(ctx, runtime, name, upload, dest)
    finally:
        await form.close()
    return ok({"path": dest}, f"File uploaded to {dest}.")
