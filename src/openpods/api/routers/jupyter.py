"""Jupyter helpers of the spec: a personal JupyterLab pod per user, and uploads into its home directory.

A *Jupyter pod* is a pod made from the ``jupyterlab`` template. The personal one of a user has the id
:func:`~openpods.domain.pods.jupyter_pod_id` (ids ending in ``jupyter`` are reserved: only that user can create
it), and ``ensure`` hands out only a pod the caller created. Uploads follow upload_to_pod's rules (ADMIN on a
running pod, no ``..``) and go only into Jupyter pods.
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse

from openpods.api.deps import Caller, Ctx
from openpods.api.envelope import BadRequest, Conflict, NotFound, ok
from openpods.api.multipart import spool_upload
from openpods.api.routers.pod_runtime import _log, _runtime, copy_into_container
from openpods.api.routers.pods import create_pod, load_pod
from openpods.api.routing import api_router
from openpods.domain import templates as tpl
from openpods.domain.container_spec import container_name
from openpods.domain.models import NewPod
from openpods.domain.permissions import Level
from openpods.domain.pods import jupyter_pod_id
from openpods.storage.spool import spool_dir
from openpods.store.db import transaction
from openpods.store.tables import ActionLog, Pod, Template

router = api_router(prefix="/v3/pods/jupyter", tags=["jupyter"])
JUPYTER_TEMPLATE = "jupyterlab"
JUPYTER_HOME = "/home/jovyan"


def is_jupyter_pod(pod: Pod) -> bool:
    if not pod.template:
        return False
    try:
        return tpl.parse_template_ref(pod.template).template_id == JUPYTER_TEMPLATE
    except tpl.TemplateRefError:
        return False


def _creator(s: Session, pod: Pod) -> str | None:
    """Who created the pod: the actor of its first action log entry (a pod's logs go when it is deleted)."""
    return s.scalar(
        select(ActionLog.actor)
        .where(ActionLog.object_type == "pod", ActionLog.tenant_id == pod.tenant_id, ActionLog.object_id == pod.pod_id)
        .order_by(ActionLog.id)
        .limit(1)
    )


@router.get("/ensure", operation_id="ensure_jupyter_pod", summary="ensure_jupyter_pod")
def ensure_jupyter_pod(ctx: Ctx, caller: Caller) -> JSONResponse:
    pod_id = jupyter_pod_id(caller.username)
    with transaction(ctx.sessions) as s:
        pod = s.get(Pod, (caller.tenant_id, pod_id))
        if pod is not None:
            if not is_jupyter_pod(pod) or _creator(s, pod) != caller.username:
                # Made by someone else (before ids ending in 'jupyter' were reserved) or not from the Jupyter
                # template: never hand it out as the caller's Jupyter pod.
                raise Conflict(
                    f"Pod '{pod_id}' exists but is not your Jupyter pod; a site admin must remove it."
                )
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
    """Writes the file below the Jupyter home directory of a running Jupyter pod (ADMIN on the pod, as
    upload_to_pod)."""

    def check() -> None:
        with transaction(ctx.sessions) as s:
            pod = load_pod(s, caller, pod_id, Level.ADMIN)
            if not is_jupyter_pod(pod):
                raise BadRequest([f"pod_id: '{pod_id}' is not a Jupyter pod (made from the "
                                  f"'{JUPYTER_TEMPLATE}' template); use upload_to_pod."])
            if pod.status != "AVAILABLE":
                raise Conflict(f"Pod '{pod_id}' is {pod.status}; it must be AVAILABLE to upload.")

    await asyncio.to_thread(check)
    runtime = _runtime(ctx)
    # tapipy sends `path` as a file part too; the file is read once into one spool file.
    async with spool_upload(request, spool_dir(ctx.settings.data_dir), ("path",)) as upload:
        rel = (upload.fields.get("path") or upload.filename or "").strip("/")
        if not rel or "\x00" in rel or ".." in rel.split("/"):
            raise BadRequest(
                ["path: a relative path inside the Jupyter home directory is required (no '..')."]
            )
        dest = f"{JUPYTER_HOME}/{rel}"
        name = container_name(caller.tenant_id, pod_id, ctx.installation_id)
        size = await copy_into_container(runtime, name, upload, dest)
    await asyncio.to_thread(_log, ctx, caller, pod_id, f"'{caller.username}' uploaded a file of {size} bytes to {dest}")
    return ok({"path": dest}, f"File uploaded to {dest}.")
